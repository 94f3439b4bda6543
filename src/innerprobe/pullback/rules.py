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
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

OPS = (
    "relu",
    "gelu",
    "silu",
    "max_pool2d",
    "max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool1d",
    "layer_norm",
    "rms_norm",
    "norm_module",
    "attention_softmax",
    "sdpa",
)


def _check_T(T: float, what: str = "temperature") -> float:
    try:
        T = float(T)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a positive number, got {T!r}", hint="e.g. temperature=0.3") from None
    if not (T > 0 and math.isfinite(T)):
        raise ConfigError(
            f"{what} must be a positive finite number, got {T}",
            hint="T -> 0 is the plain gradient: use HardGate() for that; e.g. temperature=0.3",
        )
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
    """value = hard max-pool; backward = gradient of sum_j w_j x_j, w = softmax(window / T).

    ``pad`` is the value outside the input: ``-inf`` (like max-pooling itself) or ``0.0`` (the
    authors' code, which unfolds zero-padded windows). The backward loops over the kernel offsets
    (at most k_h * k_w strided views of the output's size), so no unfold / fold copy is made.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode, T, detach_weights, pad):
        out = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
        ctx.save_for_backward(x, out)
        ctx.cfg = (kernel, stride, padding, dilation, T, detach_weights, pad)
        ctx.ceil_mode = ceil_mode
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        kernel, stride, padding, dilation, T, detach, pad = ctx.cfg
        if (
            tuple(kernel) == tuple(stride)
            and tuple(padding) == (0, 0)
            and tuple(dilation) == (1, 1)
            and out.shape[-2] * kernel[0] <= x.shape[-2]
            and out.shape[-1] * kernel[1] <= x.shape[-1]
        ):
            gx = _tiled_backward(x, out, grad, kernel, T, detach)
        else:
            gx = None
            if detach and tuple(dilation) == (
                1,
                1,
            ):  # measured faster for detached weights; the full variant is faster per offset
                gx = _shifted_backward(x, out, grad, kernel, stride, padding, ctx.ceil_mode, T, detach, pad)
            if gx is None:  # dilated windows, or values so spread that a per-channel shift would underflow
                gx = _offset_backward(x, out, grad, kernel, stride, padding, dilation, T, detach, pad)
        return gx, None, None, None, None, None, None, None, None


def _sumpool(t, kernel, stride, padding, ceil):
    return F.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil, count_include_pad=True, divisor_override=1)


def _sumpool_adjoint(g, like, kernel, stride, padding, ceil):
    """Adjoint of :func:`_sumpool`: every window's value added to each of its input elements."""
    return torch.ops.aten.avg_pool2d_backward(g, like, list(kernel), list(stride), list(padding), ceil, True, 1)


def _shifted_backward(x, out, grad, kernel, stride, padding, ceil, T, detach, pad):
    """Fast path (no dilation): one exp per input element, shifted by the channel's max instead of each
    window's (the softmax is shift-invariant), so window sums and their adjoints are C sum-pools::

        w_iw = e_i / s_w,  e = exp((x - M) / T),  s = sumpool(e)  (+ the zero padding's share)
        detached:  gx = e * adj(g / s)
        full:      gx = e * ((1 + x / T) * adj(g / s) - adj(g p / s) / T),  p = sumpool(x e) / s

    Returns None when a window sum would underflow (then the exact per-window path runs).
    """
    padded = tuple(padding) != (0, 0)
    M = x.amax(dim=(-2, -1), keepdim=True)
    zero_pad = pad == 0.0 and padded
    if zero_pad:
        M = M.clamp(min=0)
    e = (x - M).mul_(1.0 / T).exp_()
    s = _sumpool(e, kernel, stride, padding, ceil)
    if s.shape[-2:] != out.shape[-2:]:
        return None
    if zero_pad:  # the authors' zero-padded windows: each padded cell adds exp((0 - M) / T)
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        real = _sumpool(ones, kernel, stride, padding, ceil)
        inside = _sumpool(
            F.pad(ones, (padding[1], padding[1], padding[0], padding[0]), value=1.0), kernel, stride, (0, 0), ceil
        )
        if inside.shape != real.shape:
            return None
        s = s + (inside - real) * (-M).mul(1.0 / T).exp()
    if not bool((s > torch.finfo(x.dtype).tiny * 2.0**24).all()):
        return None
    a = grad / s
    if detach:
        return e.mul_(_sumpool_adjoint(a, e, kernel, stride, padding, ceil))
    p = _sumpool(x * e, kernel, stride, padding, ceil) / s
    A = _sumpool_adjoint(a, e, kernel, stride, padding, ceil)
    B = _sumpool_adjoint(a * p, e, kernel, stride, padding, ceil)
    return e * ((1 + x * (1.0 / T)) * A - B * (1.0 / T))


def _window_views(xp, kernel, stride, dilation, ho, wo):
    """For each kernel offset (dy, dx): the strided view of ``xp`` holding that offset of every window."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    for dy in range(kh):
        for dx in range(kw):
            y0, x0 = dy * dh, dx * dw
            yield (y0, x0), xp[..., y0 : y0 + sh * (ho - 1) + 1 : sh, x0 : x0 + sw * (wo - 1) + 1 : sw]


def _offset_backward(x, out, grad, kernel, stride, padding, dilation, T, detach, pad):
    """Overlapping / padded / dilated windows: softmax weights per kernel offset, scattered back by strided adds."""
    n, c, h, w = x.shape
    ho, wo = out.shape[-2:]
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, stride, dilation, padding
    hp = max(h + 2 * ph, sh * (ho - 1) + dh * (kh - 1) + 1)  # ceil_mode windows may run past the padding
    wp = max(w + 2 * pw, sw * (wo - 1) + dw * (kw - 1) + 1)
    # outside the input: a finite stand-in for -inf, low enough that exp((v - max) / T) is exactly 0
    low = float(x.min()) - 1000.0 * T
    xp = x.new_full((n, c, hp, wp), low)
    if pad != -math.inf:
        xp[..., : h + 2 * ph, : w + 2 * pw] = pad
    xp[..., ph : ph + h, pw : pw + w] = x
    # the window max: the hard output, or the padding value where it is larger (zero padding)
    m = out if pad == -math.inf else F.max_pool2d(xp, kernel, stride, 0, dilation)
    m = m[..., :ho, :wo]
    views = list(_window_views(xp, kernel, stride, dilation, ho, wo))
    neg_m = m * (-1.0 / T)
    es = [torch.add(neg_m, v, alpha=1.0 / T).exp_() for _, v in views]  # exp((v - m) / T), one pass + exp
    s = es[0].clone()
    for e in es[1:]:
        s += e
    g = grad / s
    if not detach:  # d/dx_i of sum_j w_j x_j = w_i (1 + (x_i - p) / T) = w_i (a + b x_i), p the soft pool value
        p = torch.zeros_like(s)
        for e, (_, v) in zip(es, views):
            p.addcmul_(e, v)  # e is 0 outside the input
        p.div_(s)
        a, b = g * (1 - p * (1.0 / T)), g * (1.0 / T)
    gxp = torch.zeros_like(xp)
    for e, ((y0, x0), v) in zip(es, views):
        gk = e.mul_(g) if detach else e.mul_(torch.addcmul(a, b, v))
        gxp[..., y0 : y0 + sh * (ho - 1) + 1 : sh, x0 : x0 + sw * (wo - 1) + 1 : sw] += gk
    return gxp[..., ph : ph + h, pw : pw + w]


def _tiled_backward(x, out, grad, kernel, T, detach):
    """Non-overlapping windows (kernel == stride, no padding): window offset as a leading axis,
    spatial positions contiguous last, so every op is a plain broadcast (no unfold / fold)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = out.shape[-2:]
    xs = (
        x[..., : ho * kh, : wo * kw]
        .reshape(n, c, ho, kh, wo, kw)
        .permute(0, 1, 3, 5, 2, 4)
        .reshape(n, c, kh * kw, ho * wo)
    )
    e = (xs - out.reshape(n, c, 1, ho * wo)).mul_(1.0 / T).exp_()  # the window max is the forward output
    s = e.sum(2, keepdim=True)
    g = grad.reshape(n, c, 1, ho * wo)
    if detach:
        gx = e.mul_(g / s)
    else:  # g w_i (1 + (x_i - p) / T) = w_i (a + b x_i)
        wts = e.div_(s)
        p = (wts * xs).sum(2, keepdim=True)
        gx = wts.mul_(torch.addcmul(g * (1 - p * (1.0 / T)), g * (1.0 / T), xs))
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

    def inject(self, z: torch.Tensor, out: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``out`` (a hand-written activation's output, e.g. HF ``NewGELUActivation``) with d/dz = gate(z).

        Forward-gradient injection: ``z*g - (z*g).detach() + out.detach()`` has the value of ``out``
        and the derivative ``g`` (the successor code's pattern, after AdaptiveAILab/fgi).
        """
        T = self.temperature if temperature is None else temperature
        g = gate_value(z.detach(), self.family, T)
        mul = z * g
        return (mul - mul.detach()) + out.detach()


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


POOL_PADDING = {"-inf": -math.inf, "zero": 0.0}


@dataclass(frozen=True)
class MaxPoolSurrogate(Rule):
    """Hard max-pool forward; backward of the softmax-weighted pool p = sum_j x_j softmax(x/T)_j.

    ``detach_weights=False`` is the original code (dp/dx_i = w_i + (w_i/T)(x_i - p)); ``True`` is
    the successor's variant (dp/dx_i = w_i). ``padding='-inf'`` pads windows like max-pooling
    does; ``'zero'`` as the authors' code does (it unfolds zero-padded windows, so a padded zero
    takes part in the softmax). T -> 0 is hard max routing, T -> inf average-pool routing.
    Handles ``max_pool2d`` (also ceil_mode, dilation, return_indices, unbatched [C, H, W]),
    ``max_pool1d`` (as a 2-D pool of height 1) and adaptive max-pools whose windows tile the input.
    """

    ops = ("max_pool2d", "max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool1d")
    temperature: float = 0.3
    detach_weights: bool = False
    padding: str = "-inf"

    def __post_init__(self):
        _check_T(self.temperature, "max-pool temperature")
        if self.padding not in POOL_PADDING:
            raise ConfigError(
                f"unknown pool padding {self.padding!r}",
                hint="'-inf' (like max-pooling, the default) or 'zero' (the authors' code)",
            )

    @property
    def name(self) -> str:
        extra = (", detached" if self.detach_weights else "") + (", zero-padded" if self.padding == "zero" else "")
        return f"softpool(T={self.temperature:g}{extra})"

    def apply(self, op, z, kwargs, temperature=None):
        T = self.temperature if temperature is None else temperature
        k = kwargs
        x = z.unsqueeze(-2) if k["unsqueeze"] else z  # a 1-D pool as a 2-D pool of height 1
        batched = x.dim() == 4
        x = x if batched else x.unsqueeze(0)  # unbatched [C, H, W]
        out = _SoftMaxPoolFn.apply(
            x,
            k["kernel_size"],
            k["stride"],
            k["padding"],
            k["dilation"],
            k["ceil_mode"],
            T,
            self.detach_weights,
            POOL_PADDING[self.padding],
        )
        out = out if batched else out.squeeze(0)
        return out.squeeze(-2) if k["unsqueeze"] else out


def _norm_soft(op: str, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The norm with its statistics (mean, variance / mean square) detached: affine in the backward pass."""
    dims = tuple(range(x.dim() - len(kwargs["normalized_shape"]), x.dim()))
    w, b, eps = kwargs.get("weight"), kwargs.get("bias"), kwargs["eps"]
    xf = x
    if op == "layer_norm":
        mean = xf.mean(dims, keepdim=True).detach()
        var = xf.var(dims, keepdim=True, unbiased=False).detach()
        y = (xf - mean) * torch.rsqrt(var + eps)
    else:
        if eps is None:
            eps = torch.finfo(x.dtype).eps
        y = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True).detach() + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@dataclass(frozen=True)
class NormSurrogate(Rule):
    """LayerNorm / RMSNorm with detached statistics (successor code): the forward value is exact,
    the backward treats mean and variance (RMSNorm: the mean square) as constants, so the norm is
    an affine map per token. Applies to ``F.layer_norm`` / ``F.rms_norm`` calls and, inside norm
    modules written out by hand (HF ``LlamaRMSNorm``, TransformerLens ``LayerNorm``), to their
    ``mean`` / ``var`` / ``rsqrt`` calls (their results are detached).
    """

    ops = ("layer_norm", "rms_norm", "norm_module")

    @property
    def name(self) -> str:
        return "norm(stats detached)"

    def apply(self, op, z, kwargs, temperature=None):
        hard = kwargs["call"]()
        soft = _norm_soft(op, z, kwargs)
        return hard.detach() + (soft - soft.detach())


@dataclass(frozen=True)
class AttentionSurrogate(Rule):
    """Attention with a softer softmax in the backward pass (successor code): the forward value is
    exact; the backward is that of softmax(scores / T) (for ``scaled_dot_product_attention`` also
    the value routing with those weights). ``detach_pattern=True`` passes no gradient through the
    pattern (to queries and keys) at all, as the successor's PVT attention does. T = 1 without
    detaching changes nothing (the successor's default for ``nn.MultiheadAttention``).
    """

    ops = ("attention_softmax", "sdpa")
    temperature: float = 1.0
    detach_pattern: bool = False

    def __post_init__(self):
        _check_T(self.temperature, "attention temperature")

    @property
    def name(self) -> str:
        return f"attention(T={self.temperature:g}{', pattern detached' if self.detach_pattern else ''})"

    def apply(self, op, z, kwargs, temperature=None):
        T = self.temperature if temperature is None else temperature
        hard = kwargs["call"]()
        if op == "sdpa":
            q, k, v, rest = kwargs["q"], kwargs["k"], kwargs["v"], dict(kwargs["rest"])
            if self.detach_pattern:
                q, k = q.detach(), k.detach()
            scale = rest.pop("scale", None)
            scale = (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale) / T
            soft = F.scaled_dot_product_attention(q, k, v, scale=scale, **rest)
        else:
            if self.detach_pattern:
                return hard.detach()
            soft = torch.softmax(z / T, dim=kwargs["dim"], dtype=kwargs.get("dtype"))
            if soft.dtype != hard.dtype:
                soft = soft.to(hard.dtype)
        return hard.detach() + (soft - soft.detach())


GATES: dict[str, Callable[..., Rule]] = {
    "logistic": lambda T=0.3: Gate("logistic", T),
    "probit": lambda T=0.6: Gate("probit", T),
    "hard": lambda T=None: HardGate(),
    "guided": lambda T=None: GuidedGate(),
}
