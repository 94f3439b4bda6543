"""Which torch calls the pullback rules see, and how each one is read (docs/pullback.md, "Coverage").

Every call the :class:`~torch.overrides.TorchFunctionMode` of :func:`~innerprobe.pullback.apply_rules`
intercepts falls in one of three groups:

* **gateable** -- ``relu`` (also ``clamp(min=0)``, ``clamp_min(0)``, ``threshold(x, 0, 0)``),
  ``gelu``, ``silu``, max-pools (2-D, 1-D, adaptive), ``layer_norm`` / ``rms_norm``, attention
  (``scaled_dot_product_attention``, and ``softmax`` inside an attention module);
* **counted only** -- nonlinearities and pools without a rule (ReLU6 / Hardtanh, LeakyReLU, ELU,
  Softplus, Mish, Hardswish, tanh, sigmoid, 3-D and fractional max-pools, ``multi_head_attention_forward``
  ...): they are reported as seen and ungated, never skipped silently;
* **norm statistics** -- ``mean`` / ``var`` / ``rsqrt`` / ... inside a hand-written norm module, which
  the norm rule detaches.

Hand-written activation, norm and attention modules are recognised by class name
(:func:`module_kind`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair, _single

_T = torch._C.TensorBase


def _arg(args, kwargs, i, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _inplace(i):
    return lambda a, k: bool(_arg(a, k, i, "inplace", False))


RELU: dict[Any, Any] = {
    F.relu: _inplace(1),
    torch.relu: lambda a, k: False,
    _T.relu: lambda a, k: False,
    torch.relu_: lambda a, k: True,
    _T.relu_: lambda a, k: True,
}
GATED = {F.gelu: "gelu", F.silu: "silu"}
CLAMPS = {
    torch.clamp: False,
    _T.clamp: False,
    torch.clamp_min: False,
    _T.clamp_min: False,
    torch.clamp_: True,
    _T.clamp_: True,
    torch.clamp_min_: True,
    _T.clamp_min_: True,
}
THRESHOLDS = {F.threshold: _inplace(3), torch.threshold: lambda a, k: False, torch.threshold_: lambda a, k: True}
POOLS = {
    F.max_pool2d: ("max_pool2d", 2),
    torch.max_pool2d: ("max_pool2d", 2),
    F.max_pool2d_with_indices: ("max_pool2d", 2),
    F.max_pool1d: ("max_pool1d", 1),
    torch.max_pool1d: ("max_pool1d", 1),
    F.max_pool1d_with_indices: ("max_pool1d", 1),
    F.adaptive_max_pool2d: ("adaptive_max_pool2d", 2),
    F.adaptive_max_pool2d_with_indices: ("adaptive_max_pool2d", 2),
    F.adaptive_max_pool1d: ("adaptive_max_pool1d", 1),
    F.adaptive_max_pool1d_with_indices: ("adaptive_max_pool1d", 1),
}
NORMS = {F.layer_norm: "layer_norm", F.rms_norm: "rms_norm"}
SOFTMAX = {F.softmax, torch.softmax, _T.softmax}
SDPA = {F.scaled_dot_product_attention}
COUNTED = {
    F.hardtanh: "hardtanh",
    F.relu6: "relu6",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.selu: "selu",
    F.celu: "celu",
    F.softplus: "softplus",
    F.mish: "mish",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    torch.prelu: "prelu",
    F.rrelu: "rrelu",
    F.glu: "glu",
    F.logsigmoid: "logsigmoid",
    F.softsign: "softsign",
    torch.tanh: "tanh",
    _T.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    _T.sigmoid: "sigmoid",
    F.max_pool3d: "max_pool3d",
    torch.max_pool3d: "max_pool3d",
    F.adaptive_max_pool3d: "adaptive_max_pool3d",
    F.fractional_max_pool2d: "fractional_max_pool2d",
    F.fractional_max_pool3d: "fractional_max_pool3d",
    F.lp_pool1d: "lp_pool1d",
    F.lp_pool2d: "lp_pool2d",
    F.group_norm: "group_norm",
    F.multi_head_attention_forward: "multi_head_attention",
}
STATS = {
    torch.mean,
    _T.mean,
    torch.var,
    _T.var,
    torch.std,
    _T.std,
    torch.var_mean,
    torch.std_mean,
    torch.rsqrt,
    _T.rsqrt,
    torch.sqrt,
    _T.sqrt,
    torch.norm,
    _T.norm,
}
WHY = {
    "hardtanh": "ReLU6 / Hardtanh: no rule (saturating, not a ReLU)",
    "multi_head_attention": "nn.MultiheadAttention's fused forward: no surrogate",
    "group_norm": "GroupNorm: no surrogate",
}


def classify(func, args, kwargs) -> tuple[str, bool] | None:
    """(op, in-place?) for an intercepted call, or None for calls the rules ignore.

    ``clamp`` counts as ``relu`` only as ``clamp(min=0)`` without a max; ``threshold`` only as
    ``threshold(x, 0, 0)``. ``softmax`` is returned as ``softmax`` (the caller keeps it only inside
    an attention module).
    """
    try:
        if func in RELU:
            return "relu", RELU[func](args, kwargs)
        if func in GATED:
            return GATED[func], func is F.silu and bool(_arg(args, kwargs, 1, "inplace", False))
        if func in POOLS:
            return POOLS[func][0], False
        if func in CLAMPS:
            lo = _arg(args, kwargs, 1, "min")
            hi = (
                _arg(args, kwargs, 2, "max")
                if func not in (torch.clamp_min, _T.clamp_min, torch.clamp_min_, _T.clamp_min_)
                else None
            )
            if isinstance(lo, (int, float)) and lo == 0 and hi is None:
                return "relu", CLAMPS[func]
            return None
        if func in THRESHOLDS:
            t, v = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
            return ("relu", THRESHOLDS[func](args, kwargs)) if (t == 0 and v == 0) else ("threshold", False)
        if func in NORMS:
            return NORMS[func], False
        if func in SDPA:
            return "sdpa", False
        if func in SOFTMAX:
            return "softmax", False
        if func in COUNTED:
            return COUNTED[func], False
        if func in STATS:
            return "stat", False
    except TypeError:  # unhashable callables
        return None
    return None


def pool_kwargs(func, args, kwargs, z) -> tuple[dict | None, str]:
    """The 2-D window geometry of a pool call (1-D pools as height 1), or (None, why not)."""
    op, nd = POOLS[func]
    if not isinstance(z, torch.Tensor) or z.dim() not in (nd + 1, nd + 2):
        return None, "pool input of unexpected rank"
    size = z.shape[-nd:]
    if op.startswith("adaptive"):
        out = _arg(args, kwargs, 1, "output_size")
        out = _single(out) if nd == 1 else _pair(out)
        out = tuple(s if o is None else o for o, s in zip(out, size))
        if any(o < 1 or s % o for o, s in zip(out, size)):
            return None, f"adaptive max-pool to {tuple(out)} on {tuple(size)}: windows of unequal size, no surrogate"
        k = tuple(s // o for o, s in zip(out, size))
        d = {
            "kernel_size": k,
            "stride": k,
            "padding": (0,) * nd,
            "dilation": (1,) * nd,
            "ceil_mode": False,
            "return_indices": bool(_arg(args, kwargs, 2, "return_indices", False) or "with_indices" in func.__name__),
        }
    else:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        d = dict(zip(names, args))
        d.update(kwargs)
        one = _single if nd == 1 else _pair
        k = one(d["kernel_size"])
        s = d.get("stride")
        s = k if s is None or (isinstance(s, (list, tuple)) and len(s) == 0) else one(s)
        d = {
            "kernel_size": k,
            "stride": s,
            "padding": one(d.get("padding", 0)),
            "dilation": one(d.get("dilation", 1)),
            "ceil_mode": bool(d.get("ceil_mode", False)),
            "return_indices": bool(d.get("return_indices", False) or "with_indices" in getattr(func, "__name__", "")),
        }
    if nd == 1:  # a 1-D pool is a 2-D pool over [..., 1, L]
        d.update(
            kernel_size=(1, *d["kernel_size"]),
            stride=(1, *d["stride"]),
            padding=(0, *d["padding"]),
            dilation=(1, *d["dilation"]),
        )
    d["unsqueeze"] = nd == 1
    return d, ""


# --------------------------------------------------------------------------- module kinds
_ACT_GELU = re.compile(r"gelu", re.IGNORECASE)
_ACT_SILU = re.compile(r"silu|swish", re.IGNORECASE)
_NORM = re.compile(r"(rms|layer)_?norm", re.IGNORECASE)
_TORCH_CALLS_F = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MultiheadAttention,
)


def module_kind(module: nn.Module) -> str | None:
    """'gelu' / 'silu' for a hand-written activation module (HF ``NewGELUActivation``, ``QuickGELUActivation``,
    ``FastGELUActivation``...), 'norm' for a hand-written LayerNorm / RMSNorm, 'attention' for a module named
    like an attention block; None otherwise (torch's own modules call the functions the mode sees)."""
    if isinstance(module, _TORCH_CALLS_F):
        return None
    name = type(module).__name__
    if "Attention" in name:
        return "attention"
    leaf = all(type(c).__name__ == "HookPoint" for c in module.children())  # TransformerLens hook points are identities
    if leaf and _NORM.search(name) and "Batch" not in name and "Group" not in name:
        return "norm"
    if leaf and _ACT_GELU.search(name):
        return "gelu"
    if leaf and _ACT_SILU.search(name):
        return "silu"
    return None


TL_COMPOSITE = ("gelu_new", "gelu_fast")


def tl_composite_act(module: nn.Module) -> str | None:
    """'gelu' for a TransformerLens MLP whose ``act_fn`` is a hand-written GELU (``gelu_new``,
    ``gelu_fast``) between its ``hook_pre`` and ``hook_post`` (the calls inside it are not torch functions
    the mode can gate)."""
    act = getattr(module, "act_fn", None)
    if act is None or type(module).__name__ != "MLP" or not all(hasattr(module, h) for h in ("hook_pre", "hook_post")):
        return None
    return "gelu" if getattr(act, "__name__", "") in TL_COMPOSITE else None
