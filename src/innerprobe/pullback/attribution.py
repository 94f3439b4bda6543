"""Attribution API in captum's shape: ``Method(model, ...).attribute(inputs, target=...)``.

* :class:`ExcitationPullback` -- gradient of the raw target logit with soft-gated backward rules
  (Satkiewicz 2025, arXiv 2507.22832, Sec. "excitation pullback"; default sigmoid(z/0.3)).
* :class:`Gradient`, :class:`InputXGradient`, :class:`SmoothGrad` (Smilkov et al. 2017),
  :class:`IntegratedGradients` (Sundararajan et al. 2017, Eq. 1, Riemann sum), and
  :class:`GuidedBackprop` (Springenberg et al. 2015, the failing control) behind the same verb.
  Every one of them takes ``rules=``: ``SmoothGrad(model, rules=pullback_rules(0.3))`` is the
  soft-gated ("pullback mode") version.
* :func:`pullback_ascent` / :class:`PullbackAscent` -- L2 projected gradient ascent on the input
  guided by pullbacks (the authors' code: K steps of size alpha along g/|g|, projected on an
  eps-ball, clamped), for counterfactual pictures towards any target class.

What is back-propagated is the raw logit of the target class, summed over the batch. Attribution
works inside ``torch.no_grad()``; tensors made under ``torch.inference_mode()`` are refused with a
clear error. The model is left exactly as it came (flags, requires_grad, no hooks).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.hooks import preserved_state
from ..core.trees import logits_of
from ..errors import ConfigError, ModelError
from .apply import Coverage, Rules, apply_rules, calibrate_temperatures, guided_rules, pullback_rules


# --------------------------------------------------------------------------- checks
def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="pass the model object, e.g. zoo.load('digits-cnn')[0]")
    for p in list(model.parameters())[:1] + list(model.buffers())[:1]:
        if p.is_inference():
            raise ModelError("the model's parameters were created under torch.inference_mode(), so no gradient can flow through them",
                             hint="build or load the model outside torch.inference_mode()")


def _check_inputs(inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise ConfigError(f"inputs must be a tensor, got {type(inputs).__name__}", hint="pass a float tensor [N, ...] (e.g. images [N, 1, 8, 8])")
    if inputs.is_inference():
        raise ConfigError("the inputs are inference-mode tensors (created under torch.inference_mode()); gradients cannot be taken w.r.t. them",
                          hint="create the inputs outside torch.inference_mode() (torch.no_grad() is fine), or pass inputs.clone() made outside it")
    if not inputs.is_floating_point():
        raise ConfigError(f"inputs must be floating point, got {inputs.dtype}", hint="convert with inputs.float()")
    if inputs.dim() < 2:
        raise ConfigError(f"inputs need a batch axis, got shape {tuple(inputs.shape)}", hint="add one with inputs.unsqueeze(0)")
    return inputs


def _targets(logits: torch.Tensor, target) -> torch.Tensor:
    n, c = logits.shape[0], logits.shape[-1]
    if logits.dim() != 2:
        raise ModelError(f"expected logits [N, classes], got shape {tuple(logits.shape)}", hint="attribution needs a classifier's logits")
    if target is None:
        return logits.argmax(-1)
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ConfigError(f"target must be integer class indices, got {t.dtype}", hint="e.g. target=3 or target=[3, 1, 4]")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ConfigError(f"target has {t.numel()} entries for {n} inputs", hint="pass one class index, or one per input")
    if (t < 0).any() or (t >= c).any():
        raise ConfigError(f"target classes {t.unique().tolist()} out of range for {c} logits", hint=f"classes are 0..{c - 1}")
    return t


@contextlib.contextmanager
def preserved_buffers(model: nn.Module):
    """Restore every buffer bitwise on exit (a train-mode BatchNorm updates its running stats)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                if not torch.equal(b, v):
                    b.copy_(v)


@contextlib.contextmanager
def _grad_env(model):
    with contextlib.ExitStack() as st:
        st.enter_context(preserved_buffers(model))
        if torch.is_inference_mode_enabled():
            st.enter_context(torch.inference_mode(False))
        st.enter_context(torch.enable_grad())
        st.enter_context(preserved_state(model))
        yield


def target_gradient(model: nn.Module, inputs: torch.Tensor, target=None, rules: Rules | None = None,
                    coverage: Coverage | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(d logit_target / d inputs, logits) for one batch, with ``rules`` applied if given."""
    x = inputs.detach().clone().requires_grad_(True)
    with _grad_env(model):
        with (apply_rules(model, rules) if rules is not None else contextlib.nullcontext()) as ctx:
            logits = logits_of(model(x))
            t = _targets(logits, target)
            sel = logits.gather(1, t[:, None]).sum()
            (g,) = torch.autograd.grad(sel, x)
        if ctx is not None and coverage is not None:
            for k, e in ctx.coverage.calls.items():
                d = coverage.calls.setdefault(k, {**e, "seen": 0, "gated": 0})
                d["seen"] += e["seen"]
                d["gated"] += e["gated"]
    return g.detach(), logits.detach()


# --------------------------------------------------------------------------- methods
class Attribution:
    """Base: ``attribute(inputs, target=None)`` returns a tensor shaped like ``inputs``.

    ``target``: None (the predicted class), one class index, or one per input. ``chunk_size``
    splits the batch (results do not depend on it). After a call, ``self.coverage`` reports
    gated vs seen nonlinearity calls (None when no rules were applied).
    """

    name = "attribution"

    def __init__(self, model: nn.Module, *, rules: Rules | None = None, chunk_size: int | None = None):
        _check_model(model)
        if rules is not None and not isinstance(rules, Rules):
            raise ConfigError(f"rules must be a Rules object, got {type(rules).__name__}", hint="use pullback_rules(temperature=0.3)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.model = model
        self.rules = rules
        self.chunk_size = chunk_size
        self.coverage: Coverage | None = None

    def _rules_for(self, x: torch.Tensor) -> Rules | None:
        return self.rules

    def _grad(self, x, target):
        return target_gradient(self.model, x, target, self._rules_for(x), self.coverage)[0]

    def _one(self, x: torch.Tensor, target) -> torch.Tensor:
        raise NotImplementedError

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        x = _check_inputs(inputs)
        self.coverage = Coverage() if self.rules is not None or isinstance(self, ExcitationPullback) else None
        with _grad_env(self.model):
            if target is None:  # predicted class, fixed once for every sample / step
                with torch.no_grad():
                    target = torch.cat([logits_of(self.model(c)).argmax(-1) for c in _chunks(x, self.chunk_size)])
            t = torch.as_tensor(target)
            if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
                raise ConfigError(f"target must be integer class indices, got {t.dtype}", hint="e.g. target=3 or target=[3, 1, 4]")
            t = t.long().reshape(-1)
            t = t.expand(x.shape[0]) if t.numel() == 1 else t
            outs = []
            for i, c in enumerate(_chunks(x, self.chunk_size)):
                lo = i * (self.chunk_size or x.shape[0])
                tc = t[lo:lo + c.shape[0]] if t.numel() == x.shape[0] else t
                outs.append(self._one(c, tc))
        return torch.cat(outs).detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rules!r})" if self.rules is not None else f"{type(self).__name__}()"


def _chunks(x: torch.Tensor, size: int | None):
    if size is None or size >= x.shape[0]:
        yield x
        return
    for i in range(0, x.shape[0], size):
        yield x[i:i + size]


class Gradient(Attribution):
    """The plain gradient of the target logit (signed; captum's ``Saliency(abs=False)``)."""

    name = "gradient"

    def _one(self, x, t):
        return self._grad(x, t)


class InputXGradient(Attribution):
    """x * gradient (Shrikumar et al. 2016)."""

    name = "input_x_gradient"

    def _one(self, x, t):
        return x * self._grad(x, t)


class GuidedBackprop(Gradient):
    """Guided backprop (Springenberg et al. 2015): negative gradients clamped at every ReLU. A control."""

    name = "guided_backprop"

    def __init__(self, model, *, chunk_size=None):
        super().__init__(model, rules=guided_rules(), chunk_size=chunk_size)


class SmoothGrad(Attribution):
    """Mean gradient over ``n_samples`` copies with Gaussian noise of std ``sigma`` (Smilkov et al. 2017).

    Noise is drawn once per call from a generator seeded with ``seed``, for the whole batch, so the
    result does not depend on ``chunk_size``.
    """

    name = "smoothgrad"

    def __init__(self, model, *, n_samples: int = 16, sigma: float = 0.15, seed: int = 0, rules=None, chunk_size=None):
        super().__init__(model, rules=rules, chunk_size=chunk_size)
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ConfigError(f"sigma must be >= 0, got {sigma!r}", hint="noise std in input units, e.g. 0.15 for images in [0, 1]")
        self.n_samples, self.sigma, self.seed = n_samples, float(sigma), seed

    def attribute(self, inputs, target=None):
        x = _check_inputs(inputs)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self._noise = torch.randn((self.n_samples, *x.shape), generator=gen, dtype=x.dtype).to(x.device) * self.sigma
        self._offset = 0
        try:
            return super().attribute(x, target)
        finally:
            del self._noise

    def _one(self, x, t):
        n = x.shape[0]
        noise = self._noise[:, self._offset:self._offset + n]
        self._offset += n
        acc = torch.zeros_like(x)
        for s in range(self.n_samples):
            acc += self._grad(x + noise[s], t)
        return acc / self.n_samples


class IntegratedGradients(Attribution):
    """(x - b) * sum_k w_k grad(b + alpha_k (x - b)) (Sundararajan et al. 2017, Eq. 3 Riemann sum).

    ``method``: 'riemann_middle' (alpha_k = (k + 1/2)/m), 'riemann_trapezoid', 'riemann_left',
    'riemann_right' -- the same grids as captum's methods of those names.
    """

    name = "integrated_gradients"

    def __init__(self, model, *, steps: int = 32, baseline: float | torch.Tensor = 0.0, method: str = "riemann_middle",
                 rules=None, chunk_size=None):
        super().__init__(model, rules=rules, chunk_size=chunk_size)
        if not (isinstance(steps, int) and steps >= 2):
            raise ConfigError(f"steps must be an integer >= 2, got {steps!r}")
        if method not in ("riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right"):
            raise ConfigError(f"unknown IG method {method!r}", hint="riemann_middle, riemann_trapezoid, riemann_left or riemann_right")
        self.steps, self.baseline, self.method = steps, baseline, method

    def _grid(self) -> tuple[list[float], list[float]]:
        m = self.steps
        if self.method == "riemann_trapezoid":
            a = [k / (m - 1) for k in range(m)]
            w = [1 / (m - 1)] * m
            w[0] = w[-1] = 0.5 / (m - 1)
        elif self.method == "riemann_left":
            a, w = [k / m for k in range(m)], [1 / m] * m
        elif self.method == "riemann_right":
            a, w = [(k + 1) / m for k in range(m)], [1 / m] * m
        else:
            a, w = [(k + 0.5) / m for k in range(m)], [1 / m] * m
        return a, w

    def _one(self, x, t):
        b = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        if b.dim() > 0 and b.shape[0] == self._n and b.shape[0] != x.shape[0]:
            raise ConfigError("a per-input IG baseline cannot be chunked", hint="use chunk_size=None or a broadcastable baseline")
        b = b.expand_as(x)
        acc = torch.zeros_like(x)
        for a, w in zip(*self._grid()):
            acc += w * self._grad(b + a * (x - b), t)
        return (x - b) * acc

    def attribute(self, inputs, target=None):
        self._n = inputs.shape[0] if isinstance(inputs, torch.Tensor) else 0
        return super().attribute(inputs, target)


class ExcitationPullback(Gradient):
    """Excitation pullback (Satkiewicz 2025, arXiv 2507.22832): the target logit's gradient with
    every ReLU derivative replaced by sigmoid(z/T) on the pre-activation (and max-pool, GELU, SiLU
    surrogates), forward untouched.

    ``gate='probit'`` uses Phi(z/T) (successor code, T = 0.6 there). ``scale='spread'`` reads
    ``temperature`` as tau and sets each call's T = tau * std(z) on the batch being attributed (a
    project option for networks without BatchNorm). ``rules`` overrides everything else.
    """

    name = "excitation_pullback"

    def __init__(self, model, temperature: float = 0.3, *, gate: str = "logistic", pool: str = "soft",
                 pool_temperature: float | None = None, pool_detach: bool = False, functional: bool = True,
                 scale: str = "global", rules: Rules | None = None, chunk_size=None):
        if scale not in ("global", "spread"):
            raise ConfigError(f"unknown temperature scale {scale!r}", hint="'global' (one T for every layer) or 'spread' (T_l = tau * std(z_l))")
        rules = rules if rules is not None else pullback_rules(temperature, gate, pool=pool, pool_temperature=pool_temperature,
                                                               pool_detach=pool_detach, functional=functional)
        super().__init__(model, rules=rules, chunk_size=chunk_size)
        self.temperature, self.scale = temperature, scale

    def _rules_for(self, x):
        if self.scale == "spread":
            if getattr(self, "_calibrated", None) is not None:
                return self._calibrated
            return calibrate_temperatures(self.model, x, self.temperature, self.rules)
        return self.rules

    def attribute(self, inputs, target=None):
        """As :meth:`Attribution.attribute`; with ``scale='spread'`` the per-call T are calibrated once on the whole batch."""
        self._calibrated = None
        if self.scale == "spread":
            x = _check_inputs(inputs)
            with _grad_env(self.model):
                self._calibrated = calibrate_temperatures(self.model, x, self.temperature, self.rules)
        try:
            return super().attribute(inputs, target)
        finally:
            self._calibrated = None


# --------------------------------------------------------------------------- ascent
@dataclass
class AscentResult:
    """``x`` the final inputs, ``delta = x - x0`` (the explanation), ``logits`` [steps + 1, N, C]."""

    x: torch.Tensor
    delta: torch.Tensor
    logits: torch.Tensor
    config: dict


def pullback_ascent(model: nn.Module, inputs: torch.Tensor, target, *, steps: int = 5, step: float | None = None,
                    radius: float | None = None, rules: Rules | None = None, clamp: tuple[float, float] | None = (0.0, 1.0),
                    step_rms: float = 0.025, radius_rms: float = 0.13) -> AscentResult:
    """L2 projected gradient ascent on the target logit, guided by pullbacks (authors' code, "PGA").

    For k = 1..K: g = pullback at x; x <- x + step * g / |g|_2; project x - x0 on the L2 ball of
    ``radius``; clamp. ``step`` / ``radius`` are L2 norms per input; when None they are
    ``step_rms * sqrt(d)`` and ``radius_rms * sqrt(d)`` -- the paper's alpha = 20, eps = 100 on
    3x224x224 images in [-1, 1] are about 0.025 / 0.13 per-pixel RMS in [0, 1] units.
    ``radius=math.inf`` disables the projection. ``rules=gradient_rules()`` gives plain gradient ascent.
    """
    _check_model(model)
    x0 = _check_inputs(inputs).detach()
    if not (isinstance(steps, int) and steps >= 1):
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
        for _ in range(steps):
            g, logits = target_gradient(model, x, target, rules)
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
    return AscentResult(x.detach(), (x - x0).detach(), torch.stack(traj), {"steps": steps, "step": step, "radius": radius,
                                                                            "rules": rules.to_dict(), "clamp": clamp})


class PullbackAscent(Attribution):
    """Attribution map x_K - x0 of :func:`pullback_ascent` (the successor's "PullbackAscent")."""

    name = "pullback_ascent"

    def __init__(self, model, *, steps: int = 5, step: float | None = None, radius: float | None = None,
                 rules: Rules | None = None, clamp=(0.0, 1.0), chunk_size=None):
        super().__init__(model, rules=rules if rules is not None else pullback_rules(), chunk_size=chunk_size)
        self.kw = {"steps": steps, "step": step, "radius": radius, "clamp": clamp}

    def _one(self, x, t):
        return pullback_ascent(self.model, x, t, rules=self.rules, **self.kw).delta


METHODS = {"gradient": Gradient, "input_x_gradient": InputXGradient, "smoothgrad": SmoothGrad,
           "integrated_gradients": IntegratedGradients, "guided_backprop": GuidedBackprop,
           "excitation_pullback": ExcitationPullback, "pullback_ascent": PullbackAscent}
