"""Attribution API in captum's shape: ``Method(model, ...).attribute(inputs, target=...)`` (docs/pullback.md).

* :class:`ExcitationPullback` -- gradient of the raw target logit with soft-gated backward rules
  (Satkiewicz 2025, arXiv 2507.22832, Sec. "excitation pullback"; default sigmoid(z/0.3);
  ``preset='original'`` / ``'successor'`` reproduce the authors' two codes).
* :class:`Gradient`, :class:`InputXGradient`, :class:`SmoothGrad` (Smilkov et al. 2017),
  :class:`IntegratedGradients` (Sundararajan et al. 2017, Eq. 3 Riemann / Gauss-Legendre sums), and
  :class:`GuidedBackprop` (Springenberg et al. 2015, the failing control) behind the same verb.
  Every one takes ``rules=`` ("pullback mode") and ``layer=`` (attribution at a site, e.g. the
  token embeddings of a language model; captum's Layer* methods).
* :func:`pullback_ascent` / :class:`PullbackAscent` -- L2 projected gradient ascent on the input
  guided by pullbacks (the authors' "PGA").

captum's keywords are accepted where they mean the same thing (``target``, ``baselines``,
``n_steps``, ``method``, ``internal_batch_size``, ``return_convergence_delta``,
``additional_forward_args``, ``attribute_to_layer_input``, ``nt_samples``, ``stdevs``); innerprobe's
own names (``steps``, ``baseline``, ``chunk_size``) stay as aliases. Targets: see
:mod:`innerprobe.pullback.targets`. Attribution runs in eval mode (a train-mode model is warned
about and restored after), works inside ``torch.no_grad()``, and leaves the model as it came.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import call_model, check_inputs, check_model
from ..core.hooks import preserved_state
from ..core.trees import logits_of
from ..errors import ConfigError, ModelError
from .apply import (
    Coverage,
    PullbackWarning,
    Rules,
    apply_rules,
    calibrate_temperatures,
    guided_rules,
    preserved_buffers,
    preset_rules,
    pullback_rules,
    warn_if_ungated,
)
from .layers import LayerTap, default_layer, resolve_layer
from .targets import LogitDiff, Target, TokenTarget, resolve_target, slice_target

REDUCE = (None, "sum", "dot", "norm")


# --------------------------------------------------------------------------- checks
def _check_model(model) -> None:
    check_model(model)
    for p in list(model.parameters())[:1] + list(model.buffers())[:1]:
        if p.is_inference():
            raise ModelError(
                "the model's parameters were created under torch.inference_mode(), so no gradient can flow through "
                "them",
                hint="build or load the model outside torch.inference_mode()",
            )


def _check_inputs(inputs, model: nn.Module | None = None, *, tokens_ok: bool = False) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor) and inputs.is_inference():
        raise ConfigError(
            "the inputs are inference-mode tensors (created under torch.inference_mode()); gradients cannot be "
            "taken w.r.t. them",
            hint="create the inputs outside torch.inference_mode() (torch.no_grad() is fine), "
            "or pass inputs.clone() made outside it",
        )
    x = check_inputs(inputs, model, min_dim=2)
    if not x.is_floating_point() and not tokens_ok:
        raise ConfigError(
            f"inputs are {x.dtype} (token ids?) but there is no float layer to attribute to",
            hint="for a language model pass layer='<embedding module>' (HF and TransformerLens models find it "
            "themselves); for images pass float inputs (x.float())",
        )
    return x


def _forward_args(additional_forward_args) -> tuple:
    if additional_forward_args is None:
        return ()
    return (
        tuple(additional_forward_args)
        if isinstance(additional_forward_args, (tuple, list))
        else (additional_forward_args,)
    )


def _take_args(args: tuple, idx, n: int) -> tuple:
    """Rows ``idx`` of every per-input tensor argument (first axis of size n); the rest as is."""
    return tuple(a[idx] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a for a in args)


def _repeat_args(args: tuple, k: int, n: int) -> tuple:
    return tuple(
        a.repeat(k, *[1] * (a.dim() - 1)) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a
        for a in args
    )


@contextlib.contextmanager
def _grad_env(model, *, warn: bool = False):
    """Grad on (also inside no_grad / inference_mode), eval mode, buffers and flags restored on exit."""
    if warn and model.training:
        warnings.warn(
            "the model is in train mode; attribution runs it in eval mode (dropout off, BatchNorm running "
            "statistics) so maps do not depend on the batch or chunk size; its flags are restored afterwards",
            PullbackWarning,
            stacklevel=4,
        )
    with contextlib.ExitStack() as st:
        st.enter_context(preserved_buffers(model))
        if torch.is_inference_mode_enabled():
            st.enter_context(torch.inference_mode(False))
        st.enter_context(torch.enable_grad())
        st.enter_context(preserved_state(model, eval=True))
        yield


def _merge(coverage: Coverage | None, ctx) -> None:
    if ctx is not None and coverage is not None:
        coverage.merge(ctx.coverage)


def target_gradient(
    model: nn.Module,
    inputs: torch.Tensor,
    target=None,
    rules: Rules | None = None,
    coverage: Coverage | None = None,
    *,
    tap: LayerTap | None = None,
    transform=None,
    forward_args: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d score / d inputs -- or d score / d the site value when ``tap`` is given --, logits) for one batch.

    The score is the target's raw logit (or logit difference), summed over the batch; ``rules`` are
    applied if given; ``transform`` maps the site value before the gradient is taken (IG paths).
    """
    with _grad_env(model):
        if tap is None:
            x = inputs.detach().clone().requires_grad_(True)
        else:
            x = inputs
        with contextlib.ExitStack() as st:
            ctx = st.enter_context(apply_rules(model, rules)) if rules is not None else None
            if tap is not None:
                st.enter_context(tap.active(transform))
            logits = logits_of(call_model(model, x, *forward_args))
            if not torch.isfinite(logits).all():
                raise ModelError("the model returned NaN or infinite logits", hint="check the inputs and the weights")
            t = target if isinstance(target, Target) else resolve_target(target, logits)
            score = t.scores(logits).sum()
            leaf = x if tap is None else tap.leaf
            if not score.requires_grad:
                raise ModelError(
                    "the target score does not depend on the attributed tensor (no gradient path)",
                    hint="check that the layer lies between the inputs and the logits",
                )
            (g,) = torch.autograd.grad(score, leaf, allow_unused=True)
            g = torch.zeros_like(leaf) if g is None else g
        _merge(coverage, ctx)
    return g.detach(), logits.detach()


# --------------------------------------------------------------------------- methods
class Attribution:
    """Base: ``attribute(inputs, target=None, ...)`` returns a tensor shaped like ``inputs`` (or the layer's value).

    ``target``: see :mod:`innerprobe.pullback.targets` (None = predicted class / next token).
    ``layer``: a site to attribute to instead of the inputs (needed for token ids; defaults to the
    token embedding of HF / TransformerLens models when the inputs are integers);
    ``attribute_to_layer_input`` takes the site's input instead of its output. ``chunk_size``
    (captum: ``internal_batch_size``) bounds the rows per forward pass; results do not depend on it.
    After a call, ``self.coverage`` reports gated vs seen nonlinearity calls (None without rules),
    ``self.layer_values`` holds the layer's value for the attributed inputs.
    """

    name = "attribution"

    def __init__(
        self,
        model: nn.Module,
        *,
        rules: Rules | None = None,
        chunk_size: int | None = None,
        layer=None,
        attribute_to_layer_input: bool = False,
    ):
        _check_model(model)
        if rules is not None and not isinstance(rules, Rules):
            raise ConfigError(
                f"rules must be a Rules object, got {type(rules).__name__}", hint="use pullback_rules(temperature=0.3)"
            )
        self.chunk_size = _check_chunk(chunk_size, "chunk_size")
        self.model = model
        self.rules = rules
        self.layer = layer
        self.attribute_to_layer_input = bool(attribute_to_layer_input)
        self._tap = (
            LayerTap(model, resolve_layer(model, layer, self.attribute_to_layer_input)) if layer is not None else None
        )
        self.coverage: Coverage | None = None
        self.layer_values: torch.Tensor | None = None

    # ---------------------------------------------------------------- pieces
    def _rules_for(self, x: torch.Tensor) -> Rules | None:
        return self.rules

    single_pass = False  # one forward on the inputs themselves: the target can be read from that pass's logits

    def _grad(self, x, t, args=(), transform=None):
        return target_gradient(
            self.model, x, t, self._rules_for(x), self.coverage, tap=self._tap, transform=transform, forward_args=args
        )[0]

    def _one(self, x: torch.Tensor, t: Target, args: tuple, values: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _layer_for(self, x: torch.Tensor) -> None:
        if self._tap is None and not x.is_floating_point():
            rs = default_layer(self.model)
            if rs is None:
                raise ConfigError(
                    f"inputs are {x.dtype} (token ids?) but the model has no embedding layer innerprobe can find",
                    hint="pass layer='<the embedding module's name>' (or float inputs for an image model)",
                )
            self._tap = LayerTap(self.model, rs)

    def _clean(self, x: torch.Tensor, args: tuple, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, layer values) of the unmodified model, chunked, without grad."""
        logits, values = [], []
        for lo in range(0, x.shape[0], size):
            xc, ac = x[lo : lo + size], _take_args(args, slice(lo, lo + size), x.shape[0])
            with torch.no_grad(), self._tap.active() if self._tap is not None else contextlib.nullcontext():
                logits.append(logits_of(call_model(self.model, xc, *ac)).detach())
            if self._tap is not None:
                values.append(self._tap.value)
        return torch.cat(logits), (torch.cat(values) if values else None)

    # ---------------------------------------------------------------- the verb
    def attribute(
        self,
        inputs: torch.Tensor,
        target=None,
        *,
        additional_forward_args=None,
        internal_batch_size=None,
        reduce: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Attributions for ``inputs`` (captum keywords accepted; see the class docstring)."""
        self._pop_kwargs(kwargs)
        if kwargs:
            raise ConfigError(
                f"{type(self).__name__}.attribute got unknown keyword(s) {sorted(kwargs)}",
                hint="captum keywords: target, baselines, n_steps, method, internal_batch_size, "
                "return_convergence_delta, additional_forward_args",
            )
        if reduce not in REDUCE:
            raise ConfigError(
                f"unknown reduce {reduce!r}",
                hint="None (full map), 'dot' (sum over features of value x map), "
                "'sum' (sum of the map), 'norm' (L2 norm per position)",
            )
        if isinstance(inputs, torch.Tensor):
            self._layer_for(inputs)
        x = _check_inputs(inputs, self.model, tokens_ok=self._tap is not None)
        args = _forward_args(additional_forward_args)
        size = _check_chunk(internal_batch_size, "internal_batch_size") or self.chunk_size or x.shape[0]
        self.coverage = Coverage() if self.rules is not None else None
        with _grad_env(self.model, warn=True):
            outs = self._single(x, target, args, size) if self.single_pass else self._multi(x, target, args, size)
        values = self.layer_values
        warn_if_ungated(self.coverage, self.rules)
        out = torch.cat(outs).detach()
        if self._tap is not None:
            m = self._tap.mask(out)
            out = out if m is None else out * m
        return reduce_map(out, values if values is not None else x, reduce)

    def _multi(self, x, target, args, size) -> list[torch.Tensor]:
        """Methods that run the model on other points (paths, noise): the target is fixed once on a clean pass."""
        logits, values = self._clean(x, args, size)
        t = resolve_target(target, logits)  # the predicted class is fixed once for every sample / step
        self.layer_values = values
        outs = []
        for lo in range(0, x.shape[0], size):
            sl = slice(lo, lo + size)
            outs.append(
                self._one(x[sl], t.take(sl), _take_args(args, sl, x.shape[0]), None if values is None else values[sl])
            )
        return outs

    def _single(self, x, target, args, size) -> list[torch.Tensor]:
        """Gradient-type methods: the attributed forward is bit-identical to the clean one (the rules change
        only the backward), so the target is resolved from its own logits and no extra forward runs."""
        outs, values, n = [], [], x.shape[0]
        for lo in range(0, n, size):
            sl = slice(lo, lo + size)
            outs.append(self._one(x[sl], slice_target(target, sl, n), _take_args(args, sl, n), None))
            if self._tap is not None:
                values.append(self._tap.value)
        self.layer_values = torch.cat(values) if values else None
        return outs

    def _pop_kwargs(self, kwargs: dict) -> None:
        """Method-specific captum keywords are read here (subclasses)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rules!r})" if self.rules is not None else f"{type(self).__name__}()"


def _check_chunk(value, name):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def reduce_map(attr: torch.Tensor, values: torch.Tensor, how: str | None) -> torch.Tensor:
    """One relevance per position (docs/pullback.md, "Token relevance"): the map ``attr`` [N, T, d]
    reduced over its last axis. ``'dot'``: sum_d value_d * attr_d (embedding x pullback, the first-order
    contribution of each token's embedding); ``'sum'``: sum_d attr_d (for maps already multiplied by
    the input: IG, input x gradient); ``'norm'``: the L2 norm; None: the full map."""
    if how is None:
        return attr
    if attr.dim() < 3:
        raise ConfigError(
            f"reduce={how!r} needs a map with a feature axis [N, T, d], got shape {tuple(attr.shape)}",
            hint="use reduce=None for this model",
        )
    if how == "dot":
        if values is None or values.shape != attr.shape or not values.is_floating_point():
            raise ConfigError("reduce='dot' needs the attributed tensor's values", hint="use reduce='sum' or 'norm'")
        return (values * attr).sum(-1)
    return attr.sum(-1) if how == "sum" else attr.norm(dim=-1)


class Gradient(Attribution):
    """The plain gradient of the target logit (signed; captum's ``Saliency(abs=False)``; ``abs=True`` gives |grad|)."""

    name = "gradient"
    single_pass = True

    def _pop_kwargs(self, kwargs):
        self._abs = bool(kwargs.pop("abs", False))

    def _one(self, x, t, args, values):
        g = self._grad(x, t, args)
        return g.abs() if getattr(self, "_abs", False) else g


class InputXGradient(Attribution):
    """x * gradient (Shrikumar et al. 2016); at a layer, value * gradient (captum's LayerGradientXActivation)."""

    name = "input_x_gradient"
    single_pass = True

    def _one(self, x, t, args, values):
        g = self._grad(x, t, args)
        return (x if self._tap is None else self._tap.value) * g


class GuidedBackprop(Gradient):
    """Guided backprop (Springenberg et al. 2015): negative gradients clamped at every ReLU. A control."""

    name = "guided_backprop"

    def __init__(self, model, *, chunk_size=None, layer=None, attribute_to_layer_input=False):
        super().__init__(
            model,
            rules=guided_rules(),
            chunk_size=chunk_size,
            layer=layer,
            attribute_to_layer_input=attribute_to_layer_input,
        )


class SmoothGrad(Attribution):
    """Mean gradient over ``n_samples`` copies with Gaussian noise of std ``sigma`` (Smilkov et al. 2017).

    captum's NoiseTunnel keywords ``nt_samples`` / ``stdevs`` / ``nt_samples_batch_size`` are
    accepted by ``attribute``. Noise is drawn once per call for the whole batch (generator seeded
    with ``seed``), in input space or, with ``layer``, at the layer, so results do not depend on
    the chunk size.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model,
        *,
        n_samples: int = 16,
        sigma: float = 0.15,
        seed: int = 0,
        rules=None,
        chunk_size=None,
        layer=None,
        attribute_to_layer_input=False,
    ):
        super().__init__(
            model, rules=rules, chunk_size=chunk_size, layer=layer, attribute_to_layer_input=attribute_to_layer_input
        )
        self.n_samples, self.sigma, self.seed = _check_samples(n_samples), _check_sigma(sigma), seed

    def _pop_kwargs(self, kwargs):
        nt = kwargs.pop("nt_type", "smoothgrad")
        if nt != "smoothgrad":
            raise ConfigError(f"nt_type {nt!r} is not supported", hint="SmoothGrad is nt_type='smoothgrad'")
        self._n = _check_samples(kwargs.pop("nt_samples", self.n_samples))
        self._sigma = _check_sigma(kwargs.pop("stdevs", self.sigma))
        self._rows = _check_chunk(kwargs.pop("nt_samples_batch_size", None), "nt_samples_batch_size")
        self._noise, self._offset = None, 0

    def _noise_for(self, like: torch.Tensor, n_total: int) -> torch.Tensor:
        if self._noise is None:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            self._noise = (
                torch.randn((self._n, n_total, *like.shape[1:]), generator=gen, dtype=like.dtype).to(like.device)
                * self._sigma
            )
        noise = self._noise[:, self._offset : self._offset + like.shape[0]]
        return noise

    def attribute(self, inputs, target=None, **kwargs):
        self._total = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() else 0
        try:
            return super().attribute(inputs, target, **kwargs)
        finally:
            self._noise = None

    def _one(self, x, t, args, values):
        base = x if values is None else values
        noise = self._noise_for(base, self._total)
        self._offset += x.shape[0]
        acc = torch.zeros_like(base)
        for s in range(self._n):
            if values is None:
                acc += self._grad(x + noise[s], t, args)
            else:
                acc += self._grad(x, t, args, transform=lambda v, e=noise[s]: v + e)
        return acc / self._n


def _check_samples(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n_samples (nt_samples) must be a positive integer, got {n!r}")
    return n


def _check_sigma(sigma):
    try:
        ok = float(sigma) >= 0 and math.isfinite(float(sigma))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"sigma (stdevs) must be a number >= 0, got {sigma!r}",
            hint="noise std in input units, e.g. 0.15 for images in [0, 1]",
        )
    return float(sigma)


IG_METHODS = ("riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right", "gausslegendre")


def ig_grid(method: str, m: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) of the path integral: captum's grids of the same names."""
    if method == "riemann_trapezoid":
        a = [k / (m - 1) for k in range(m)]
        w = [1 / (m - 1)] * m
        w[0] = w[-1] = 0.5 / (m - 1)
    elif method == "riemann_left":
        a, w = [k / m for k in range(m)], [1 / m] * m
    elif method == "riemann_right":
        a, w = [(k + 1) / m for k in range(m)], [1 / m] * m
    elif method == "gausslegendre":
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(m)
        a, w = [float(v) for v in (nodes + 1) / 2], [float(v) for v in weights / 2]
    else:
        a, w = [(k + 0.5) / m for k in range(m)], [1 / m] * m
    return a, w


class IntegratedGradients(Attribution):
    """(x - b) * sum_k w_k grad(b + alpha_k (x - b)) (Sundararajan et al. 2017, Eq. 3 as a quadrature).

    ``steps`` (captum: ``n_steps``) points of ``method`` ('riemann_middle' default, 'riemann_trapezoid',
    'riemann_left', 'riemann_right', 'gausslegendre': captum's grids). ``baseline`` (captum:
    ``baselines``, per call) is a number or a tensor broadcastable to the inputs; with ``layer``,
    the path runs at the layer between its values for the baselines and for the inputs (captum's
    LayerIntegratedGradients; for token ids the baselines are token ids too, default 0).
    ``return_convergence_delta=True`` also returns sum(attribution) - (F(x) - F(b)) per input.
    ``internal_batch_size`` bounds the path points (rows) per forward pass.
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model,
        *,
        steps: int = 32,
        baseline: float | torch.Tensor = 0.0,
        method: str = "riemann_middle",
        rules=None,
        chunk_size=None,
        layer=None,
        attribute_to_layer_input=False,
        n_steps: int | None = None,
        baselines=None,
    ):
        super().__init__(
            model, rules=rules, chunk_size=chunk_size, layer=layer, attribute_to_layer_input=attribute_to_layer_input
        )
        self.steps = _check_steps(n_steps if n_steps is not None else steps)
        self.method = _check_method(method)
        self.baseline = baselines if baselines is not None else baseline

    def _pop_kwargs(self, kwargs):
        self._steps = _check_steps(kwargs.pop("n_steps", kwargs.pop("steps", self.steps)))
        self._method = _check_method(kwargs.pop("method", self.method))
        self._base = kwargs.pop("baselines", kwargs.pop("baseline", self.baseline))
        self._delta = bool(kwargs.pop("return_convergence_delta", False))

    def attribute(self, inputs, target=None, *, internal_batch_size=None, **kwargs):
        self._rows = _check_chunk(internal_batch_size, "internal_batch_size")
        self._n_all = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() else 0
        self._deltas = []
        out = super().attribute(inputs, target, internal_batch_size=None, **kwargs)
        if self._delta:
            return out, torch.cat(self._deltas)
        return out

    def _baseline_rows(self, x: torch.Tensor, lo: int) -> torch.Tensor:
        b = self._base
        b = (
            b.to(x.device)
            if isinstance(b, torch.Tensor)
            else torch.as_tensor(b, device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        )
        if not x.is_floating_point() and b.is_floating_point() and bool((b == b.round()).all()):
            b = b.long()  # the default baseline 0.0 is token id 0 for token inputs (as in captum)
        b = b.to(x.dtype) if (x.is_floating_point() or not b.is_floating_point()) else b
        if not x.is_floating_point() and b.is_floating_point():
            raise ConfigError(
                "token-id inputs need integer baselines (token ids, e.g. a pad token)",
                hint="baselines=0 or a [N, T] id tensor",
            )
        if b.dim() > 0 and b.shape[0] == self._n_all and b.shape[0] != x.shape[0] and b.dim() == x.dim():
            b = b[lo : lo + x.shape[0]]
        try:
            return b.expand_as(x)
        except RuntimeError:
            raise ConfigError(
                f"baselines of shape {tuple(b.shape)} do not broadcast to inputs {tuple(x.shape)}",
                hint="a number, or a tensor shaped like the inputs (or one input)",
            ) from None

    def _one(self, x, t, args, values):
        lo = getattr(self, "_lo", 0)
        self._lo = lo + x.shape[0]
        b = self._baseline_rows(x, lo)
        alphas, weights = ig_grid(self._method, self._steps)
        n = x.shape[0]
        if values is None:
            diff, base, acc = x - b, b, torch.zeros_like(x)
        else:
            with torch.no_grad(), self._tap.active():
                call_model(self.model, b, *args)
            base = self._tap.value
            diff, acc = values - base, torch.zeros_like(values)
        rows = self._rows or n
        per = max(1, rows // n)  # path points per forward pass
        for k0 in range(0, len(alphas), per):
            ks = list(range(k0, min(k0 + per, len(alphas))))
            a = torch.tensor([alphas[k] for k in ks], dtype=diff.dtype, device=diff.device).repeat_interleave(n)
            a = a.view(-1, *[1] * (diff.dim() - 1))
            tk, ak = t.repeat(len(ks)), _repeat_args(args, len(ks), n)
            if values is None:
                xk = base.repeat(len(ks), *[1] * (x.dim() - 1)) + a * diff.repeat(len(ks), *[1] * (x.dim() - 1))
                g = self._grad(xk, tk, ak)
            else:
                xk = x.repeat(len(ks), *[1] * (x.dim() - 1))
                path = base.repeat(len(ks), *[1] * (base.dim() - 1)) + a * diff.repeat(len(ks), *[1] * (base.dim() - 1))
                g = self._grad(xk, tk, ak, transform=lambda v, p=path: p)
            for j, k in enumerate(ks):
                acc += weights[k] * g[j * n : (j + 1) * n]
        attr = diff * acc
        if self._delta:
            self._deltas.append(self._convergence(x, b, t, args, attr))
        return attr

    def _convergence(self, x, b, t, args, attr):
        with torch.no_grad():
            fx = t.scores(logits_of(call_model(self.model, x, *args)))
            fb = t.scores(logits_of(call_model(self.model, b, *args)))
        return attr.flatten(1).sum(1) - (fx - fb)

    def _reset(self):
        self._lo = 0

    def _clean(self, x, args, size):
        self._reset()
        return super()._clean(x, args, size)


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"steps (n_steps) must be an integer >= 2, got {steps!r}")
    return steps


def _check_method(method):
    if method not in IG_METHODS:
        raise ConfigError(f"unknown IG method {method!r}", hint=", ".join(IG_METHODS))
    return method


class ExcitationPullback(Gradient):
    """Excitation pullback (Satkiewicz 2025, arXiv 2507.22832): the target logit's gradient with
    every ReLU derivative replaced by sigmoid(z/T) on the pre-activation (and max-pool, GELU, SiLU
    surrogates; optionally LayerNorm / RMSNorm with detached statistics and a softer attention
    softmax), forward untouched. docs/pullback.md.

    ``temperature`` defaults to 0.3 (``gate='logistic'``) or 0.6 (``gate='probit'``, successor).
    ``preset='original'`` / ``'successor'`` reproduce the authors' two codes (modules only unless
    ``functional=True``; see :func:`~innerprobe.pullback.apply.preset_rules`). ``scale='spread'``
    reads ``temperature`` as tau and sets each call's T = tau * std(z) on the batch being
    attributed (a project option for networks without BatchNorm). ``rules`` overrides everything.
    """

    name = "excitation_pullback"

    def __init__(
        self,
        model,
        temperature: float | None = None,
        *,
        gate: str = "logistic",
        pool: str = "soft",
        pool_temperature: float | None = None,
        pool_detach: bool = False,
        pool_padding: str | None = None,
        gelu_temperature: float | None = None,
        silu_temperature: float | None = None,
        norm=None,
        attention=None,
        functional: bool | None = None,
        preset: str | None = None,
        scale: str = "global",
        rules: Rules | None = None,
        chunk_size=None,
        layer=None,
        attribute_to_layer_input=False,
    ):
        if scale not in ("global", "spread"):
            raise ConfigError(
                f"unknown temperature scale {scale!r}",
                hint="'global' (one T for every layer) or 'spread' (T_l = tau * std(z_l))",
            )
        if rules is None and preset is not None:
            over = {
                "temperature": temperature,
                "pool_temperature": pool_temperature,
                "pool_padding": pool_padding,
                "norm": norm,
                "attention": attention,
                "gelu_temperature": gelu_temperature,
                "silu_temperature": silu_temperature,
            }
            over = {k: v for k, v in over.items() if v is not None}
            rules = preset_rules(preset, functional=bool(functional), **over)
        elif rules is None:
            rules = pullback_rules(
                temperature,
                gate,
                pool=pool,
                pool_temperature=pool_temperature,
                pool_detach=pool_detach,
                pool_padding=pool_padding or "-inf",
                norm=norm,
                attention=attention,
                gelu_temperature=1.0 if gelu_temperature is None else gelu_temperature,
                silu_temperature=1.6 if silu_temperature is None else silu_temperature,
                functional=True if functional is None else functional,
            )
        super().__init__(
            model, rules=rules, chunk_size=chunk_size, layer=layer, attribute_to_layer_input=attribute_to_layer_input
        )
        probit = gate == "probit" or preset == "successor"
        self.temperature = (0.6 if probit else 0.3) if temperature is None else temperature
        self.scale, self.preset = scale, preset
        self._calibrated = None

    def _rules_for(self, x):
        if self.scale == "spread":
            if self._calibrated is not None:
                return self._calibrated
            return calibrate_temperatures(self.model, x, self.temperature, self.rules)
        return self.rules

    def attribute(self, inputs, target=None, **kwargs):
        """As :meth:`Attribution.attribute`; with ``scale='spread'`` the per-call T are calibrated once on the whole batch."""
        self._calibrated = None
        if self.scale == "spread":
            if isinstance(inputs, torch.Tensor):
                self._layer_for(inputs)
            x = _check_inputs(inputs, self.model, tokens_ok=self._tap is not None)
            with _grad_env(self.model):
                fwd = _forward_with(self.model, _forward_args(kwargs.get("additional_forward_args")))
                self._calibrated = calibrate_temperatures(self.model, x, self.temperature, self.rules, forward=fwd)
        try:
            return super().attribute(inputs, target, **kwargs)
        finally:
            self._calibrated = None


def _forward_with(model, args):
    return lambda x: model(x, *args)


# --------------------------------------------------------------------------- ascent
@dataclass
class AscentResult:
    """``x`` the final inputs, ``delta = x - x0`` (the explanation), ``logits`` [steps + 1, N, C]."""

    x: torch.Tensor
    delta: torch.Tensor
    logits: torch.Tensor
    config: dict


def pullback_ascent(
    model: nn.Module,
    inputs: torch.Tensor,
    target,
    *,
    steps: int = 5,
    step: float | None = None,
    radius: float | None = None,
    rules: Rules | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    step_rms: float = 0.025,
    radius_rms: float = 0.13,
) -> AscentResult:
    """L2 projected gradient ascent on the target logit, guided by pullbacks (authors' code, "PGA").

    For k = 1..K: g = pullback at x; x <- x + step * g / |g|_2; project x - x0 on the L2 ball of
    ``radius``; clamp. ``step`` / ``radius`` are L2 norms per input; when None they are
    ``step_rms * sqrt(d)`` and ``radius_rms * sqrt(d)`` -- the paper's alpha = 20, eps = 100 on
    3x224x224 images in [-1, 1] are about 0.025 / 0.13 per-pixel RMS in [0, 1] units.
    ``radius=math.inf`` disables the projection. ``rules=gradient_rules()`` gives plain gradient ascent.
    """
    _check_model(model)
    x0 = _check_inputs(inputs, model).detach()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    d = x0[0].numel()
    step = step_rms * math.sqrt(d) if step is None else float(step)
    radius = radius_rms * math.sqrt(d) if radius is None else float(radius)
    if not step > 0 or not radius > 0:
        raise ConfigError(f"step and radius must be positive, got step={step}, radius={radius}")
    rules = pullback_rules() if rules is None else rules
    x = x0.clone()
    traj = []
    with _grad_env(model):
        with torch.no_grad():
            t = resolve_target(target, logits_of(call_model(model, x0)))
        for _ in range(steps):
            g, logits = target_gradient(model, x, t, rules)
            traj.append(logits)
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
            x = x + step * g / norm
            delta = x - x0
            if math.isfinite(radius):
                dn = delta.flatten(1).norm(dim=1).view(-1, *[1] * (g.dim() - 1))
                delta = delta * torch.clamp(radius / dn.clamp_min(1e-12), max=1.0)
            x = x0 + delta
            if clamp is not None:
                x = x.clamp(*clamp)
        with torch.no_grad():
            traj.append(logits_of(model(x)).detach())
    return AscentResult(
        x.detach(),
        (x - x0).detach(),
        torch.stack(traj),
        {"steps": steps, "step": step, "radius": radius, "rules": rules.to_dict(), "clamp": clamp},
    )


class PullbackAscent(Attribution):
    """Attribution map x_K - x0 of :func:`pullback_ascent` (the successor's "PullbackAscent"); input space only."""

    name = "pullback_ascent"

    def __init__(
        self,
        model,
        *,
        steps: int = 5,
        step: float | None = None,
        radius: float | None = None,
        rules: Rules | None = None,
        clamp=(0.0, 1.0),
        chunk_size=None,
    ):
        super().__init__(model, rules=rules if rules is not None else pullback_rules(), chunk_size=chunk_size)
        self.kw = {"steps": steps, "step": step, "radius": radius, "clamp": clamp}

    def attribute(self, inputs, target=None, **kwargs):
        if kwargs.get("additional_forward_args") is not None:
            raise ConfigError(
                "PullbackAscent does not take additional_forward_args",
                hint="wrap the model so it takes the inputs only",
            )
        _check_inputs(inputs, self.model)
        return super().attribute(inputs, target, **kwargs)

    def _one(self, x, t, args, values):
        return pullback_ascent(self.model, x, t, rules=self.rules, **self.kw).delta


# --------------------------------------------------------------------------- captum-named layer methods
def LayerIntegratedGradients(model: nn.Module, layer, *, multiply_by_inputs: bool = True, **kw) -> IntegratedGradients:
    """captum's ``LayerIntegratedGradients(forward_func, layer)``: :class:`IntegratedGradients` at ``layer``."""
    if not multiply_by_inputs:
        raise ConfigError(
            "multiply_by_inputs=False is not supported", hint="IG attributions are multiplied by (value - baseline)"
        )
    return IntegratedGradients(model, layer=layer, **kw)


def LayerGradientXActivation(model: nn.Module, layer, *, multiply_by_inputs: bool = True, **kw) -> Attribution:
    """captum's ``LayerGradientXActivation``: value x gradient at ``layer`` (``multiply_by_inputs=False``: the gradient)."""
    return (InputXGradient if multiply_by_inputs else Gradient)(model, layer=layer, **kw)


METHODS = {
    "gradient": Gradient,
    "input_x_gradient": InputXGradient,
    "smoothgrad": SmoothGrad,
    "integrated_gradients": IntegratedGradients,
    "guided_backprop": GuidedBackprop,
    "excitation_pullback": ExcitationPullback,
    "pullback_ascent": PullbackAscent,
}

__all__ = [
    "METHODS",
    "AscentResult",
    "Attribution",
    "ExcitationPullback",
    "Gradient",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "LogitDiff",
    "PullbackAscent",
    "SmoothGrad",
    "TokenTarget",
    "pullback_ascent",
    "reduce_map",
    "target_gradient",
]
