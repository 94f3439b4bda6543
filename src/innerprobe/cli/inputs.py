"""The one input loader of the command line: the same file formats and the same errors for every command.

Files: ``.npy`` (one array), ``.npz`` and ``.safetensors`` (arrays ``x`` or ``inputs``, optional labels
``y`` or ``labels``; a file with one array is that array), ``.pt``/``.pth`` (a tensor or a dict of the
same keys, read with ``torch.load(weights_only=True)``: nothing is unpickled). Floating arrays become
float32; integer arrays stay integer (int64: token ids); NaN or inf inputs are refused. Instead of a
file, a source may name a zoo recipe (``digits-mlp@1`` = its seed-1 data) or a dataset (``digits``,
``fashion-mnist``). Every problem is a one-line :class:`~innerprobe.errors.DataError` with a hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checks import expand_path
from ..errors import ConfigError, DataError
from .spec import ModelSpec, parse_model

SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")
FORMATS = (
    "a .npy array, an .npz or .safetensors file with arrays 'x' (optional labels 'y'), "
    "or a .pt tensor / dict {'x', 'y'} saved with torch.save"
)
X_KEYS, Y_KEYS = ("x", "inputs"), ("y", "labels")
DATASETS = ("digits", "fashion-mnist")


@dataclass
class Inputs:
    """Inputs for a command: ``x`` [N, ...], labels ``y`` (or None), class names (or None), a description."""

    x: torch.Tensor
    y: torch.Tensor | None
    classes: list | None
    description: str


def read_file(path: str | Path, *, what: str = "--data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y or None) from a .npy / .npz / .pt / .pth / .safetensors file, checked."""
    p = expand_path(path)
    if p.suffix not in SUFFIXES:
        raise DataError(f"{what} {str(path)!r} is not a supported input file", hint=f"pass {FORMATS}")
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise DataError(
            f"{what} {str(path)[:60]!r} is not a usable file name ({getattr(e, 'strerror', None) or e})",
            hint=f"pass {FORMATS}",
        ) from None
    if is_dir:
        raise DataError(f"{what} {p} is a folder, not a file", hint=f"pass {FORMATS}")
    if not is_file:
        raise DataError(f"{what} file {p} does not exist", hint=f"pass {FORMATS}")
    try:
        content = _read(p)
    except DataError:
        raise
    except Exception as e:  # numpy / torch / safetensors each raise their own kinds on a bad file
        raise DataError(
            f"cannot read {what} {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint=f"pass {FORMATS}",
        ) from None
    x, y = _pick(content, p, what)
    return _check_x(x, p, what), _check_y(y, x, p, what)


def _read(p: Path):
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(p, weights_only=True, map_location="cpu")


def _pick(content, p: Path, what: str):
    if not isinstance(content, dict):
        return content, None
    keys = list(content)
    xk = next((k for k in X_KEYS if k in content), keys[0] if len(keys) == 1 else None)
    if xk is None:
        raise DataError(
            f"{what} {p.name} holds arrays {keys}, none named 'x' or 'inputs'",
            hint="save the inputs under the key 'x' (labels under 'y')",
        )
    yk = next((k for k in Y_KEYS if k in content), None)
    return content[xk], None if yk is None else content[yk]


def _as_tensor(a, p: Path, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        if a.dtype == object or a.dtype.kind not in "biufc":
            raise DataError(f"{what} {p.name} holds a {a.dtype} array, not numbers")
        if a.ndim == 0:  # np.ascontiguousarray would make it [1]
            raise DataError(
                f"{what} {p.name} holds no inputs (a single number, shape ())", hint="inputs are [N, ...], N >= 1"
            )
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise DataError(f"{what} {p.name} holds a {type(a).__name__}, not a tensor or array", hint=f"pass {FORMATS}")
    return a


def _check_x(x, p: Path, what: str) -> torch.Tensor:
    x = _as_tensor(x, p, what)
    if x.dim() == 0 or len(x) == 0:
        raise DataError(f"{what} {p.name} holds no inputs (shape {tuple(x.shape)})", hint="inputs are [N, ...], N >= 1")
    if x.is_complex():  # x.float() would drop the imaginary part without a word
        raise DataError(
            f"{what} {p.name} holds complex numbers ({x.dtype})",
            hint="save real inputs, e.g. numpy.real(a) or numpy.abs(a), if that is what you mean",
        )
    if x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise DataError(f"{what} {p.name} contains NaN or inf", hint="clean the inputs first")
        return x
    return x.long()  # token ids (and integer images) stay integer


def _check_y(y, x: torch.Tensor, p: Path, what: str) -> torch.Tensor | None:
    if y is None:
        return None
    y = _as_tensor(y, p, what)
    if y.is_floating_point() or y.dim() != 1 or len(y) != len(x):
        raise DataError(
            f"{what} {p.name}: labels must be integers [N] matching {len(x)} inputs, got {y.dtype} {tuple(y.shape)}"
        )
    return y.long()


def for_model(x: torch.Tensor, model) -> torch.Tensor:
    """Integer inputs are token ids for a model with an embedding; otherwise pixel values, made float32."""
    if x.is_floating_point() or any(isinstance(m, torch.nn.Embedding) for m in model.modules()):
        return x
    return x.float()


def load_inputs(
    source: str | None,
    spec: ModelSpec,
    *,
    n: int | None = None,
    split: str = "test",
    indices: list[int] | None = None,
    what: str = "--data",
) -> Inputs:
    """Inputs from a file, a zoo recipe (its seed's data), a dataset name, or (``source`` None) the model's data."""
    if n is not None and n < 1:
        raise ConfigError(f"the number of inputs must be >= 1, got {n}")
    if split not in ("test", "train"):
        raise ConfigError(f"--split must be 'test' or 'train', got {split!r}")
    if source is not None and Path(source).suffix in SUFFIXES:
        x, y = read_file(source, what=what)
        inp = Inputs(x, y, None, f"{Path(source).name} ({len(x)} inputs)")
    else:
        inp = _dataset_inputs(source, spec, split, what)
    return _select(inp, n, indices)


def dataset_of(source: str | None, spec: ModelSpec) -> str | None:
    """The embedded dataset the inputs come from (``'digits'``, ...): a dataset name, or a zoo recipe's; else None."""
    from .. import zoo

    if source in DATASETS:
        return source
    if source is not None and Path(source).suffix in SUFFIXES:
        return None
    s = spec if source is None else parse_model(source)
    recipe = zoo.RECIPES.get(s.name) if s.zoo else None
    return getattr(recipe, "dataset", None) if getattr(recipe, "dataset", None) in DATASETS else None


def _dataset_inputs(source: str | None, spec: ModelSpec, split: str, what: str) -> Inputs:
    from .. import zoo

    if source in DATASETS:
        ds, label = zoo.data.load_dataset(source), source
    else:
        s = spec if source is None else parse_model(source)
        if not s.zoo:
            raise DataError(
                f"no inputs for {what} {s.text!r}" if source else f"no default inputs for model {s.text!r}",
                hint=f"pass {what} with a zoo recipe, 'digits', 'fashion-mnist' or a file: {FORMATS}",
            )
        ds, label = s.data(), f"{s.name} (seed {s.seed})"
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    return Inputs(x, y, list(ds.classes) if getattr(ds, "classes", None) is not None else None, f"{label} {split} set")


def _select(inp: Inputs, n: int | None, indices: list[int] | None) -> Inputs:
    if indices is not None:
        if any(not 0 <= i < len(inp.x) for i in indices):
            raise ConfigError(f"indices out of range: {inp.description} has {len(inp.x)} inputs")
        sel, desc = list(indices), f"{inp.description}, inputs {list(indices)}"
    else:
        sel = slice(0, n)
        desc = inp.description if n is None or n >= len(inp.x) else f"{inp.description}, first {n}"
    return Inputs(inp.x[sel], None if inp.y is None else inp.y[sel], inp.classes, desc)
