"""Backward rules: the forward value of every nonlinearity is untouched, its derivative replaced.

Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832, "Tapping into the Black Box"; ref. code
314-Foundation/ExcitationPullbacks) replace the ReLU derivative 1[z > 0] by a soft gate of the
*pre-activation* z in the backward pass only::

    grad_in = grad_out * sigmoid(z / T)        (family "logistic", default T = 0.3)
    grad_in = grad_out * Phi(z / T)            (family "probit", successor code, default T = 0.6)

T -> 0 gives the plain gradient, T -> inf a constant gate 0.5 (the linear network's backward).
The same gating replaces the *whole* derivative of GELU (probit, T = 1) and SiLU (logistic,
T = 1.6). Max-pooling keeps its hard forward and routes gradients like a softmax-weighted pool
over each window (weights softmax(x / T)), padded with -inf, with or without the weights'
own derivative. Guided backprop (Springenberg et al. 2015: grad_in = max(grad_out, 0) * 1[z > 0])
is offered as the known-failing control of the sanity checks.

Every rule acts *per call* through a custom ``autograd.Function`` that saves the gate (not z), so
in-place activations and modules called at several sites gate on the right pre-activation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

OPS = ("relu", "gelu", "silu", "max_pool2d")


def _check_T(T: float, what: str = "temperature") -> float:
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a positive number, got {T!r}", hint="e.g. temperature=0.3") from None
    if not (T > 0 and math.isfinite(T)):
        raise ConfigError(f"{what} must be a positive finite number, got {T}", hint="T -> 0 is the plain gradient: use HardGate() for that; e.g. temperature=0.3")
    return T


def gate_value(z: torch.Tensor, family: str, T: float) -> torch.Tensor:
    """The soft gate g(z / T): ``sigmoid`` (logistic) or the Gaussian CDF ``Phi`` (probit)."""
    if family == "logistic":
        return torch.mul(z, 1.0 / T).sigmoid_()
    if family == "probit":
        return torch.special.ndtr(torch.mul(z, 1.0 / T))
    raise ConfigError(f"unknown gate family {family!r}", hint="use 'logistic' (sigmoid(z/T)) or 'probit' (Phi(z/T))")


def _forward_op(op: str, z: torch.Tensor, kwargs: dict) -> torch.Tensor:
    if op == "relu":
        return torch.relu(z)
    if op == "gelu":
        return F.gelu(z, approximate=kwargs.get("approximate", "none"))
    if op == "silu":
        return F.silu(z)
    raise AssertionError(op)  # pragma: no cover


class _GateFn(torch.autograd.Function):
    """value = op(z) exactly; d/dz = gate (saved at forward, so in-place callers are safe)."""

    @staticmethod
    def forward(ctx, z, op, kwargs, gate_fn, guided):
        out = _forward_op(op, z, kwargs)
        ctx.save_for_backward(gate_fn(z))
        ctx.guided = guided
        return out

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        if ctx.guided:
            grad = grad.clamp(min=0)
        return grad * g, None, None, None, None


class _SoftMaxPoolFn(torch.autograd.Function):
    """value = hard max-pool; backward = gradient of sum_j w_j x_j, w = softmax(window / T)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, T, detach_weights):
        out = F.max_pool2d(x, kernel, stride, padding, dilation)
        ctx.save_for_backward(x, out)
        ctx.cfg = (kernel, stride, padding, dilation, T, detach_weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        kernel, stride, padding, dilation, T, detach = ctx.cfg
        if tuple(kernel) == tuple(stride) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1):
            return _tiled_backward(x, out, grad, kernel, T, detach), None, None, None, None, None, None
        n, c, h, w = x.shape
        ph, pw = padding
        xp = F.pad(x, (pw, pw, ph, ph), value=-math.inf) if (ph or pw) else x
        cols = F.unfold(xp, kernel, dilation=dilation, stride=stride)  # [n, c*kk, L]
        kk = kernel[0] * kernel[1]
        cols = cols.view(n, c, kk, -1)
        wts = torch.softmax(cols / T, dim=2)
        g = grad.reshape(n, c, 1, -1)
        if detach:
            gcols = wts * g
        else:  # d/dx_i of sum_j w_j x_j with w = softmax(x/T): w_i + (w_i / T)(x_i - p)
            finite = torch.where(torch.isfinite(cols), cols, torch.zeros((), dtype=cols.dtype))
            p = (wts * finite).sum(2, keepdim=True)
            gcols = g * (wts + wts / T * (finite - p))
        gx = F.fold(gcols.reshape(n, c * kk, -1), xp.shape[-2:], kernel, dilation=dilation, stride=stride)
        if ph or pw:
            gx = gx[..., ph:ph + h, pw:pw + w]
        return gx, None, None, None, None, None, None


def _tiled_backward(x, out, grad, kernel, T, detach):
    """Non-overlapping windows (kernel == stride, no padding): window offset as a leading axis,
    spatial positions contiguous last, so every op is a plain broadcast (no unfold / fold)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = out.shape[-2:]
    xs = x[..., :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw).permute(0, 1, 3, 5, 2, 4).reshape(n, c, kh * kw, ho * wo)
    e = (xs - out.reshape(n, c, 1, ho * wo)).mul_(1.0 / T).exp_()  # the window max is the forward output
    s = e.sum(2, keepdim=True)
    g = grad.reshape(n, c, 1, ho * wo)
    if detach:
        gx = e.mul_(g / s)
    else:
        wts = e / s
        p = (wts * xs).sum(2, keepdim=True)
        gx = g * wts * (1 + (xs - p) * (1.0 / T))
    gx = gx.view(n, c, kh, kw, ho, wo).permute(0, 1, 4, 2, 5, 3).reshape(n, c, ho * kh, wo * kw)
    if ho * kh != h or wo * kw != w:  # floor mode drops the remainder: no gradient there
        gx = F.pad(gx, (0, w - wo * kw, 0, h - ho * kh))
    return gx


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """Base class of a backward rule. ``ops`` lists the nonlinearities it can replace."""

    ops = ("relu", "gelu", "silu")

    @property
    def name(self) -> str:
        return type(self).__name__

    def handles(self, op: str) -> bool:
        return op in self.ops

    def apply(self, op: str, z: torch.Tensor, kwargs: dict, temperature: float | None = None) -> torch.Tensor:
        """The op's forward value with this rule's backward (``temperature`` overrides the rule's)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Gate(Rule):
    """Soft gate g(z/T) on the pre-activation; ``family`` 'logistic' (sigmoid) or 'probit' (Phi).

    ``Gate()`` is the original excitation-pullback ReLU rule, sigmoid(z/0.3) (arXiv 2507.22832).
    On GELU and SiLU the gate replaces the whole derivative (the unit is read as gated-linear).
    """

    family: str = "logistic"
    temperature: float = 0.3

    def __post_init__(self):
        _check_T(self.temperature)
        gate_value(torch.zeros(1), self.family, 1.0)  # validates the family

    @property
    def name(self) -> str:
        return f"{self.family}(T={self.temperature:g})"

    def apply(self, op, z, kwargs, temperature=None):
        T = self.temperature if temperature is None else temperature
        fam = self.family
        return _GateFn.apply(z, op, kwargs, lambda u: gate_value(u, fam, T), False)


def GELUGate(temperature: float = 1.0) -> Gate:
    """GELU rule of the successor code: derivative replaced by Phi(z/T), T = 1."""
    return Gate("probit", temperature)


def SiLUGate(temperature: float = 1.6) -> Gate:
    """SiLU rule of the successor code: derivative replaced by sigmoid(z/T), T = 1.6."""
    return Gate("logistic", temperature)


@dataclass(frozen=True)
class HardGate(Rule):
    """The hard gate 1[z > 0]: the plain gradient for ReLU (GELU / SiLU keep their exact derivative)."""

    ops = ("relu", "gelu", "silu")

    @property
    def name(self) -> str:
        return "hard"

    def apply(self, op, z, kwargs, temperature=None):
        if op != "relu":
            return _forward_op(op, z, kwargs)
        return _GateFn.apply(z, op, kwargs, lambda u: (u > 0).to(u.dtype), False)


@dataclass(frozen=True)
class GuidedGate(Rule):
    """Guided backprop (Springenberg et al. 2015): grad_in = max(grad_out, 0) * 1[z > 0]. A control."""

    ops = ("relu",)

    @property
    def name(self) -> str:
        return "guided"

    def apply(self, op, z, kwargs, temperature=None):
        return _GateFn.apply(z, op, kwargs, lambda u: (u > 0).to(u.dtype), True)


@dataclass(frozen=True)
class MaxPoolSurrogate(Rule):
    """Hard max-pool forward; backward of the softmax-weighted pool p = sum_j x_j softmax(x/T)_j.

    ``detach_weights=False`` is the original code (dp/dx_i = w_i + (w_i/T)(x_i - p)); ``True`` is
    the successor's variant (dp/dx_i = w_i). Windows are padded with -inf, like max-pooling.
    T -> 0 is hard max routing, T -> inf average-pool routing.
    """

    ops = ("max_pool2d",)
    temperature: float = 0.3
    detach_weights: bool = False

    def __post_init__(self):
        _check_T(self.temperature, "max-pool temperature")

    @property
    def name(self) -> str:
        return f"softpool(T={self.temperature:g}{', detached' if self.detach_weights else ''})"

    def apply(self, op, z, kwargs, temperature=None):
        T = self.temperature if temperature is None else temperature
        return _SoftMaxPoolFn.apply(z, kwargs["kernel_size"], kwargs["stride"], kwargs["padding"], kwargs["dilation"], T, self.detach_weights)


GATES: dict[str, Callable[..., Rule]] = {
    "logistic": lambda T=0.3: Gate("logistic", T),
    "probit": lambda T=0.6: Gate("probit", T),
    "hard": lambda T=None: HardGate(),
    "guided": lambda T=None: GuidedGate(),
}
