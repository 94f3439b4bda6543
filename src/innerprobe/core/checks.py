"""Shared input and option checks: one place that turns bad values into one-line innerprobe errors.

Every method (APEX, path patching, pullbacks, attributions) and the CLI call these before they
allocate or run anything, so the same mistake gets the same message everywhere:

- :func:`check_inputs` -- a tensor with a non-empty batch axis, real (not complex), finite, not on
  the meta device, on the model's device and (for float inputs) of the model's float dtype;
- :func:`call_model` -- the model's forward, with torch's shape/dtype errors turned into a
  :class:`~innerprobe.errors.ModelError` that names the input's shape and dtype;
- :func:`check_int`, :func:`check_float`, :func:`check_seed` -- ranges checked before any
  allocation; a value out of range is refused, never replaced by a default.

See docs/cli.md ("Errors") for how the CLI prints them.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError

SEED_MAX = 2**63 - 1  # torch.manual_seed, numpy and JSON all hold it exactly


def expand_path(text) -> Path:
    """``Path(text).expanduser()``, keeping the text as it is when '~user' names no user (or holds a NUL byte)."""
    try:
        return Path(text).expanduser()
    except (RuntimeError, ValueError):
        return Path(text)


def describe_tensor(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')} on {x.device}"


def model_tensor(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter (else buffer), or None for a model without either."""
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    return None


def check_model(model: Any) -> nn.Module:
    """An ``nn.Module`` whose weights hold values (not on the meta device)."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"expected a torch.nn.Module, got {type(model).__name__}",
            hint="pass your nn.Module, or load one with innerprobe.zoo.load_model(...)",
        )
    p = model_tensor(model)
    if p is not None and p.is_meta:
        raise ModelError(
            "the model's weights are on the meta device: they have shapes but no values",
            hint="materialise them first, e.g. model.to_empty(device='cpu') and load a state dict",
        )
    return model


def check_inputs(
    x: Any,
    model: nn.Module | None = None,
    *,
    name: str = "inputs",
    floating: bool | None = None,
    min_dim: int = 1,
    finite: bool = True,
) -> torch.Tensor:
    """``x`` as a batch the model can take, or a ConfigError saying what is wrong and how to fix it.

    ``floating=True`` requires a float tensor (images, embeddings), ``False`` an integer one (token
    ids); None accepts both. With ``model``, a float input must share the model's float dtype and
    every input its device: innerprobe never casts silently.
    """
    if not isinstance(x, torch.Tensor):
        raise ConfigError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}",
            hint="stack your inputs into one tensor [N, ...], e.g. torch.as_tensor(array)",
        )
    if x.is_meta:
        raise ConfigError(
            f"{name} are on the meta device: they have a shape but no values",
            hint="pass real tensors (device 'cpu' or 'cuda')",
        )
    if x.is_complex():
        raise ConfigError(
            f"{name} are complex ({x.dtype}); innerprobe would drop the imaginary part",
            hint="pass real inputs, e.g. x.real or x.abs(), if that is what you mean",
        )
    if x.dim() < min_dim or (x.dim() >= 1 and x.shape[0] == 0):
        what = "an empty batch" if x.dim() >= 1 and x.shape[0] == 0 else f"{x.dim()} dimensions"
        raise ConfigError(
            f"{name} must have a non-empty batch axis first, got {what} ({describe_tensor(x)})",
            hint="pass at least one input, shaped [N, ...]" + (", e.g. x.unsqueeze(0)" if x.dim() else ""),
        )
    if floating is True and not x.is_floating_point():
        raise ConfigError(f"{name} must be floating point, got {x.dtype}", hint="convert with x.float()")
    if floating is False and (x.is_floating_point() or x.dtype == torch.bool):
        raise ConfigError(f"{name} must be integer ids, got {x.dtype}", hint="convert with x.long()")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ConfigError(
            f"{name} hold {n_bad} NaN or infinite value(s) of {x.numel()}",
            hint="clean or drop those inputs first (torch.nan_to_num, or a mask)",
        )
    if model is not None:
        _check_against_model(x, model, name)
    return x


def _check_against_model(x: torch.Tensor, model: nn.Module, name: str) -> None:
    p = model_tensor(check_model(model))
    if p is None:
        return
    if x.device != p.device:
        raise ConfigError(
            f"{name} are on {x.device} but the model is on {p.device}", hint=f"move them with x.to('{p.device}')"
        )
    if x.is_floating_point() and p.is_floating_point() and x.dtype != p.dtype:
        want = str(p.dtype).replace("torch.", "")
        raise ConfigError(
            f"{name} are {str(x.dtype).replace('torch.', '')} but the model's weights are {want}",
            hint=f"convert the inputs with x.to(torch.{want}) (or the model with model.to(torch.{str(x.dtype)[6:]}))",
        )


def call_model(model: nn.Module, *args, **kwargs) -> Any:
    """``model(*args, **kwargs)``; a torch shape/dtype/device error becomes one ModelError line."""
    from ..errors import InnerprobeError

    try:
        return model(*args, **kwargs)
    except InnerprobeError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as e:
        if isinstance(e, torch.OutOfMemoryError) or getattr(e, "_innerprobe_from_hook", False):
            raise  # out of memory, or raised by a hook's own function (HookSession.edit): not a bad input
        shapes = ", ".join(describe_tensor(a) for a in args if isinstance(a, torch.Tensor)) or "no tensor inputs"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"the model's forward failed on inputs ({shapes}): {first[:300]}",
            hint="check that the inputs have the shape, dtype and device the model expects",
        ) from e


def check_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None, hint: str | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; bools, floats with a fraction and out-of-range values are refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ConfigError(f"{name} must be an integer, got {value!r}", hint=hint)
    v = operator.index(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
        raise ConfigError(f"{name} must be {rng}, got {v}", hint=hint)
    return v


def check_float(
    value: Any,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hint: str | None = None,
) -> float:
    """``value`` as a finite float in range (``lo_open``: strictly above ``lo``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}", hint=hint) from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}", hint=hint)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}", hint=hint)
    if hi is not None and v > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {v}", hint=hint)
    return v


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**63 - 1]`` (what torch, numpy and JSON all hold exactly)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ConfigError(
                f"bad {name} {value!r}: a seed is a non-negative integer", hint=f"e.g. 0, 1 or 42 (at most {SEED_MAX})"
            )
        value = int(text)
    return check_int(value, name, lo=0, hi=SEED_MAX, hint=f"a seed is an integer from 0 to {SEED_MAX}")
