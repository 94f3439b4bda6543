"""Applying backward rules reversibly: module selectors, functional interception, coverage (docs/pullback.md).

``with apply_rules(model, rules) as ctx: ...`` makes every nonlinearity call inside the block use
its rule's backward. Nothing in the model is replaced or mutated: a ``TorchFunctionMode`` sees every
call listed in :mod:`innerprobe.pullback.calls` -- which is also how ``nn.ReLU``, ``nn.GELU``,
``nn.SiLU``, ``nn.MaxPool2d``, ``nn.LayerNorm`` compute -- and hooks owned by a
:class:`~innerprobe.core.hooks.HookSession` track which module is running, so rules can be chosen
by module type, site string or callable. Hand-written activation modules (HF ``NewGELUActivation``)
and TransformerLens MLPs with a hand-written GELU are gated at the module boundary. Because rules
act per call, a module reused at several call sites gates each call on its own pre-activation, and
in-place activations gate on the value before it is overwritten. On exit (also after an exception)
the mode is popped and every hook is removed.

``ctx.coverage`` counts gated calls against every nonlinearity, pool, norm and attention call seen.
Activation checkpointing (recomputation in the backward pass) is refused with a ModelError.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.hooks import HookSession
from ..core.sites import Site, resolve
from ..errors import ConfigError, InnerprobeError, ModelError
from . import calls as C
from .rules import (
    GATES,
    OPS,
    AttentionSurrogate,
    Gate,
    GELUGate,
    GuidedGate,
    HardGate,
    MaxPoolSurrogate,
    NormSurrogate,
    Rule,
    SiLUGate,
    _check_T,
)

Selector = Any  # nn.Module subclass | site string | Site | callable(name, module) -> bool


class PullbackWarning(UserWarning):
    """A pullback ran but its rules gated nothing, or the model was in train mode."""


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


# --------------------------------------------------------------------------- rule sets
def _check_selector_site(sel) -> None:
    """A rule selects modules: a site's port, element or selectors cannot be honoured, so they are refused."""
    try:
        site = Site.parse(sel)
    except InnerprobeError:
        return  # resolve() reports unparsable sites
    if site.port != "output" or site.index is not None or site.selects:
        raise ConfigError(
            f"rule selector {str(sel)!r} names a port, element or selector ({site.port}"
            f"{'' if site.index is None else '.' + str(site.index)}{', selectors' if site.selects else ''}); "
            "a rule applies to whole modules, so these would be ignored",
            hint=f"select the module only, e.g. {site.module!r}",
        )


class Rules:
    """An ordered list of ``(selector, rule)`` entries plus a fallback for functional calls.

    A selector is an ``nn.Module`` subclass, a site string or :class:`Site` naming modules
    (``'features.3'``, ``'@ReLU'``, ``'block*'``, resolved with :func:`innerprobe.core.sites.resolve`;
    ports, elements and selectors such as ``'1:input[units=0:2]'`` are refused, a rule acts on whole
    modules), or a callable ``(name, module) -> bool``. A call of a nonlinearity is governed by the
    *first entry* (in list order) that selects any module currently running (the innermost one or
    an ancestor) and whose rule handles that op; ``None`` as a rule means "leave the plain
    derivative". Calls that no entry covers use ``functional[op]`` (``None``: plain derivative,
    reported as ungated). ``temperatures`` maps call keys (``'relu1:relu#0'``, see
    :class:`Coverage`) to per-call T.
    """

    def __init__(
        self,
        entries: Sequence[tuple[Selector, Rule | None]] = (),
        *,
        functional: dict | None = None,
        temperatures: dict[str, float] | None = None,
        description: str = "custom",
    ):
        self.entries = list(entries)
        for sel, rule in self.entries:
            if rule is not None and not isinstance(rule, Rule):
                raise ConfigError(
                    f"rule for selector {sel!r} is a {type(rule).__name__}, not a Rule",
                    hint="use Gate(), HardGate(), GuidedGate(), MaxPoolSurrogate(), NormSurrogate(), "
                    "AttentionSurrogate() or None",
                )
            if isinstance(sel, (str, Site)):
                _check_selector_site(sel)
        self.functional = dict(functional or {})
        bad = [op for op in self.functional if op not in OPS]
        if bad:
            raise ConfigError(f"unknown op(s) {bad} in functional rules", hint=f"ops are {', '.join(OPS)}")
        self.temperatures = {k: _check_T(v, f"temperature for {k}") for k, v in (temperatures or {}).items()}
        self.description = description

    def with_temperatures(self, temperatures: dict[str, float]) -> Rules:
        return Rules(
            self.entries,
            functional=self.functional,
            temperatures=temperatures,
            description=self.description + " (per-call T)",
        )

    def bind(self, model: nn.Module) -> dict[int, list[tuple[int, Rule | None]]]:
        """id(module) -> [(entry index, rule)] for every module some entry selects."""
        named = list(model.named_modules())
        out: dict[int, list] = {}
        for i, (sel, rule) in enumerate(self.entries):
            if isinstance(sel, type) and issubclass(sel, nn.Module):
                hits = [m for _, m in named if isinstance(m, sel)]
            elif isinstance(sel, (str, Site)):
                hits = [r.module for r in resolve(model, sel)]
            elif callable(sel):
                hits = [m for n, m in named if sel(n, m)]
            else:
                raise ConfigError(
                    f"cannot select modules with {sel!r}",
                    hint="a selector is a module class, a site string like 'features.3' or '@ReLU', "
                    "or a callable (name, module) -> bool",
                )
            for m in hits:
                out.setdefault(id(m), []).append((i, rule))
        return out

    @property
    def soft(self) -> bool:
        """Whether any rule changes a derivative (False for the plain-gradient rule set)."""
        rules = [r for _, r in self.entries] + list(self.functional.values())
        return any(r is not None and not isinstance(r, HardGate) for r in rules)

    def __repr__(self) -> str:
        return f"Rules({self.description})"

    def to_dict(self) -> dict:
        def sel_name(s):
            if isinstance(s, type):
                return s.__name__
            return str(s) if isinstance(s, (str, Site)) else getattr(s, "__name__", "callable")

        return {
            "description": self.description,
            "entries": [[sel_name(s), None if r is None else r.name] for s, r in self.entries],
            "functional": {k: None if r is None else r.name for k, r in self.functional.items()},
            "temperatures": dict(self.temperatures),
        }


def _norm_rule(norm) -> NormSurrogate | None:
    if norm in (None, False, "none"):
        return None
    if norm in (True, "detach"):
        return NormSurrogate()
    if isinstance(norm, NormSurrogate):
        return norm
    raise ConfigError(f"unknown norm rule {norm!r}", hint="norm='detach' (statistics detached, successor code) or None")


def _attention_rule(attention) -> AttentionSurrogate | None:
    if attention in (None, False, "none"):
        return None
    if isinstance(attention, AttentionSurrogate):
        return attention
    if isinstance(attention, (int, float)) and not isinstance(attention, bool):
        return AttentionSurrogate(float(attention))
    raise ConfigError(
        f"unknown attention rule {attention!r}",
        hint="attention=T (a softmax temperature, e.g. 1.0), AttentionSurrogate(T, detach_pattern=True) or None",
    )


def pullback_rules(
    temperature: float | None = None,
    gate: str = "logistic",
    *,
    pool: str = "soft",
    pool_temperature: float | None = None,
    pool_detach: bool = False,
    pool_padding: str = "-inf",
    gelu_temperature: float = 1.0,
    silu_temperature: float = 1.6,
    norm=None,
    attention=None,
    functional: bool = True,
) -> Rules:
    """The excitation-pullback rule set (Satkiewicz 2025, arXiv 2507.22832; docs/pullback.md, "Rules").

    ``gate``: 'logistic' (sigmoid(z/T), the original; T defaults to 0.3), 'probit' (Phi(z/T), the
    successor; T defaults to 0.6), 'hard' (plain gradient) or 'guided' (guided backprop control).
    ``pool``: 'soft' (surrogate at ``pool_temperature``, default T, padded with ``pool_padding``
    '-inf' or 'zero') or 'hard'. ``norm='detach'`` adds the LayerNorm / RMSNorm rule with detached
    statistics, ``attention=T`` the attention-softmax surrogate (both successor code, off by
    default). ``functional=False`` gates torch's modules only (``nn.ReLU``, ``nn.MaxPool2d``,
    ``nn.GELU``, ``nn.SiLU``, ``nn.LayerNorm``), as the authors' code does.
    """
    if gate not in GATES:
        raise ConfigError(f"unknown gate {gate!r}", hint=f"gates: {', '.join(GATES)}")
    if temperature is None:
        temperature = 0.6 if gate == "probit" else 0.3
    relu = GATES[gate](temperature) if gate in ("logistic", "probit") else GATES[gate]()
    if pool not in ("soft", "hard"):
        raise ConfigError(
            f"unknown pool rule {pool!r}",
            hint="use 'soft' (softmax-weighted backward) or 'hard' (plain max-pool gradient)",
        )
    soft = gate in ("logistic", "probit")
    mp = None
    if pool == "soft" and soft:
        mp = MaxPoolSurrogate(
            pool_temperature if pool_temperature is not None else temperature, pool_detach, pool_padding
        )
    gelu = GELUGate(gelu_temperature) if soft else None
    silu = SiLUGate(silu_temperature) if soft else None
    nr, ar = _norm_rule(norm), _attention_rule(attention)
    by_op = {
        "relu": relu,
        "gelu": gelu,
        "silu": silu,
        "layer_norm": nr,
        "rms_norm": nr,
        "norm_module": nr,
        "attention_softmax": ar,
        "sdpa": ar,
    }
    by_op.update({op: mp for op in MaxPoolSurrogate.ops})
    entries = [
        (nn.ReLU, relu),
        (nn.MaxPool2d, mp),
        (nn.MaxPool1d, mp),
        (nn.GELU, gelu),
        (nn.SiLU, silu),
        (nn.LayerNorm, nr),
        (nn.RMSNorm, nr),
    ]
    desc = (
        relu.name
        + (f", {mp.name}" if mp else ", hard pool")
        + (f", {nr.name}" if nr else "")
        + (f", {ar.name}" if ar else "")
    )
    desc += "" if functional else ", modules only"
    return Rules(entries, functional=by_op if functional else {}, description=desc)


PRESETS = ("original", "successor")


def preset_rules(preset: str, *, functional: bool = False, **overrides) -> Rules:
    """The reference configurations (docs/pullback.md, "Presets").

    * ``'original'`` -- 314-Foundation/ExcitationPullbacks: sigmoid(z/0.3) on ``nn.ReLU`` modules,
      soft max-pool at T = 0.3 with gradient through the weights, zero-padded windows; modules only.
    * ``'successor'`` -- 314-Foundation/SemanticPullbacks defaults: Phi(z/0.6) on ReLU, sigmoid(z/1.6)
      on SiLU, Phi(z/1.0) on GELU, detached soft max-pool at T = 0.3 (zero-padded), LayerNorm
      statistics detached, attention softmax at T = 1.0; modules only.

    ``functional=True`` extends a preset to functional calls and hand-written modules (needed for
    Hugging Face / TransformerLens language models); ``overrides`` go to :func:`pullback_rules`.
    """
    if preset == "original":
        kw = {"temperature": 0.3, "gate": "logistic", "pool_detach": False, "pool_padding": "zero"}
    elif preset == "successor":
        kw = {
            "temperature": 0.6,
            "gate": "probit",
            "pool_temperature": 0.3,
            "pool_detach": True,
            "pool_padding": "zero",
            "gelu_temperature": 1.0,
            "silu_temperature": 1.6,
            "norm": "detach",
            "attention": 1.0,
        }
    else:
        raise ConfigError(
            f"unknown preset {preset!r}", hint="preset='original' (the authors' first code) or 'successor'"
        )
    kw.update(overrides)
    rules = pullback_rules(functional=functional, **kw)
    # the module classes each code swaps (the first: ReLU and MaxPool2d; the successor adds SiLU, GELU, LayerNorm)
    keep = (nn.ReLU, nn.MaxPool2d) if preset == "original" else (nn.ReLU, nn.MaxPool2d, nn.SiLU, nn.GELU, nn.LayerNorm)
    rules.entries = [(s, r) for s, r in rules.entries if s in keep]
    rules.description = f"preset {preset}: {rules.description}"
    return rules


def gradient_rules() -> Rules:
    """No rule anywhere: the plain gradient (coverage then reports every call as ungated)."""
    return Rules([], functional={}, description="plain gradient")


def guided_rules() -> Rules:
    return pullback_rules(gate="guided", pool="hard")


# --------------------------------------------------------------------------- coverage
@dataclass
class Coverage:
    """Gated calls vs all nonlinearity / pool / norm / attention calls seen, per call key ``'module:op#k'``.

    ``k`` counts calls of that op inside that (innermost) module within one forward pass, so a
    ReLU module reused three times shows up as ``relu:relu#0``, ``#1``, ``#2``; a functional call
    at the model's top level has module ``''``. Ops without any rule (tanh, LeakyReLU, ReLU6,
    3-D max-pools, ...) are counted as seen and ungated, with the reason.
    """

    calls: dict = field(default_factory=dict)  # key -> {"op", "rule", "seen", "gated", "reason"}

    def record(self, key: str, op: str, rule: str | None, gated: bool, reason: str = "") -> None:
        e = self.calls.setdefault(key, {"op": op, "rule": rule, "seen": 0, "gated": 0, "reason": reason})
        e["seen"] += 1
        e["gated"] += int(gated)
        if not gated and reason:
            e["reason"] = reason

    def merge(self, other: Coverage) -> None:
        for k, e in other.calls.items():
            d = self.calls.setdefault(k, {**e, "seen": 0, "gated": 0})
            d["seen"] += e["seen"]
            d["gated"] += e["gated"]

    @property
    def seen(self) -> int:
        return sum(e["seen"] for e in self.calls.values())

    @property
    def gated(self) -> int:
        return sum(e["gated"] for e in self.calls.values())

    @property
    def fraction(self) -> float:
        return self.gated / self.seen if self.seen else 1.0

    def by_op(self) -> dict[str, tuple[int, int]]:
        c: Counter = Counter()
        s: Counter = Counter()
        for e in self.calls.values():
            c[e["op"]] += e["gated"]
            s[e["op"]] += e["seen"]
        return {op: (c[op], s[op]) for op in s}

    def ungated(self) -> list[str]:
        return [k for k, e in self.calls.items() if e["gated"] < e["seen"]]

    def __str__(self) -> str:
        parts = ", ".join(f"{op} {g}/{s}" for op, (g, s) in self.by_op().items())
        text = f"coverage {self.gated}/{self.seen} nonlinearity calls gated ({parts or 'none seen'})"
        miss = self.ungated()
        if miss:
            text += "; ungated: " + ", ".join(f"{k} ({self.calls[k]['reason'] or 'no rule'})" for k in miss[:8])
            text += " ..." if len(miss) > 8 else ""
        return text

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "gated": self.gated,
            "fraction": self.fraction,
            "by_op": self.by_op(),
            "calls": self.calls,
        }


def warn_if_ungated(coverage: Coverage | None, rules: Rules | None, stacklevel: int = 3) -> None:
    """A soft rule set that gated nothing returned the plain gradient: say so (PullbackWarning)."""
    if coverage is None or rules is None or not rules.soft or coverage.gated:
        return
    what = "no nonlinearity was seen" if not coverage.seen else str(coverage)
    warnings.warn(
        f"the pullback gated no call, so it equals the plain gradient: {what}", PullbackWarning, stacklevel=stacklevel
    )


# --------------------------------------------------------------------------- the mode
class _RuleMode(TorchFunctionMode):
    def __init__(self, ctx: RuleContext):
        super().__init__()
        self.ctx = ctx

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = C.classify(func, args, kwargs)
        if spec is None:
            return func(*args, **kwargs)
        return self.ctx._call(func, spec, args, kwargs)


@dataclass
class _Frame:
    module: nn.Module
    name: str
    kind: str | None  # 'gelu' / 'silu' (hand-written activation), 'norm', 'attention', None
    z: Any = None
    n_calls: int = 0  # the context's call counter at entry: unchanged at exit means nothing inside was intercepted
    inner_norm: bool = False  # an F.layer_norm / F.rms_norm ran inside (a norm module that calls torch's norm)


_CHECKPOINT_HINT = (
    "disable activation checkpointing for attribution (HF: model.gradient_checkpointing_disable(); "
    "or call the block without torch.utils.checkpoint)"
)


class RuleContext:
    """State of one :func:`apply_rules` block: the module stack, call counters and coverage."""

    def __init__(self, model: nn.Module, rules: Rules, record: Callable | None = None, expect_grad: bool = True):
        self.model = model
        self.rules = rules
        self.coverage = Coverage()
        self.expect_grad = expect_grad
        self._bound = rules.bind(model)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._kinds = {id(m): C.module_kind(m) for m in model.modules()}
        self._stack: list[_Frame] = []
        self._counts: Counter = Counter()
        self._n_calls = 0
        self._in_composite = 0  # > 0 between a TransformerLens MLP's hook_pre and hook_post
        self._record = record  # optional fn(key, op, z) for calibration

    # ------------------------------------------------------------------ module stack
    def _push(self, module, args):
        _refuse_recompute("module forward")
        if module is self.model:
            self._counts.clear()
            self._stack.clear()
            self._in_composite = 0
        kind = self._kinds.get(id(module))
        z = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self._stack.append(_Frame(module, self._names.get(id(module), "?"), kind, z, self._n_calls))

    def _pop(self, module, args, output):
        frame = None
        while self._stack:
            frame = self._stack.pop()
            if frame.module is module:
                break
        if frame is None or frame.module is not module or frame.kind not in ("gelu", "silu", "norm"):
            return None
        if frame.n_calls != self._n_calls and frame.kind != "norm":
            return None  # a gated function inside (F.gelu in GELUTanh) was handled already
        if frame.kind == "norm":
            return self._norm_module_done(frame, output)
        self._stack.append(frame)  # rule selection sees the module itself
        try:
            return self._gate_output(frame.kind, frame.z, output, frame.name, "hand-written activation module")
        finally:
            self._stack.pop()

    def _key(self, where: str, op: str) -> str:
        n = self._counts[(where, op)]
        self._counts[(where, op)] += 1
        return f"{where}:{op}#{n}"

    def _choose(self, op: str) -> tuple[bool, Rule | None]:
        best = None
        for fr in self._stack:
            for i, rule in self._bound.get(id(fr.module), ()):
                if rule is None or rule.handles(op):
                    if best is None or i < best[0]:
                        best = (i, rule)
                    break
        if best is not None:
            return True, best[1]
        return False, self.rules.functional.get(op)

    # ------------------------------------------------------------------ module-level gates
    def _gate_output(self, op: str, z, out, where: str, what: str):
        """Gate a hand-written activation at its output: value kept, d out / d z = gate(z)."""
        key = self._key(where, op)
        _, rule = self._choose(op)
        ok = (
            isinstance(rule, Gate)
            and isinstance(z, torch.Tensor)
            and isinstance(out, torch.Tensor)
            and z.shape == out.shape
        )
        reason = (
            ""
            if ok
            else (
                f"{what}: no rule (functional=False gates torch's modules only)"
                if rule is None
                else f"{what}: rule {getattr(rule, 'name', rule)} cannot gate it"
            )
        )
        self.coverage.record(key, op, rule.name if ok else None, ok, reason)
        if not ok or not (torch.is_grad_enabled() and z.requires_grad):
            return None
        return rule.inject(z, out, self.rules.temperatures.get(key))

    def _norm_module_done(self, frame: _Frame, output):
        key = self._key(frame.name, "norm_module")
        _, rule = self._choose("norm_module")
        if frame.inner_norm:  # an F.layer_norm / F.rms_norm inside was counted already
            return
        ok = isinstance(rule, NormSurrogate)
        self.coverage.record(
            key, "norm_module", rule.name if ok else None, ok, "" if ok else self._why_ungated("norm_module")
        )
        return

    def tl_hooks(self, hs: HookSession) -> None:
        """TransformerLens MLPs with a hand-written GELU: gate between ``hook_pre`` and ``hook_post``."""
        for name, m in self.model.named_modules():
            op = C.tl_composite_act(m)
            if op is None:
                continue
            state: dict = {}

            def pre_out(mod, args, out, state=state):
                state["z"], state["n"] = out, self._n_calls
                self._in_composite += 1

            def post_out(mod, args, out, state=state, op=op, name=name):
                z = state.pop("z", None)
                if z is None:
                    return None
                self._in_composite = max(0, self._in_composite - 1)
                if state.pop("n") != self._n_calls:
                    return None
                return self._gate_output(op, z, out, name, "TransformerLens hand-written GELU")

            hs.forward_hook(m.hook_pre, pre_out)
            hs.forward_hook(m.hook_post, post_out)

    # ------------------------------------------------------------------ intercepted calls
    def _call(self, func, spec, args, kwargs):
        op, inplace = spec
        top = self._stack[-1] if self._stack else None
        if op == "stat":
            out = func(*args, **kwargs)
            if top is not None and top.kind == "norm" and isinstance(self._choose("norm_module")[1], NormSurrogate):
                return _detach_all(out)
            return out
        if op == "softmax" and (top is None or top.kind != "attention"):
            return func(*args, **kwargs)
        composite = self._in_composite or (top is not None and top.kind in ("gelu", "silu"))
        if composite and op not in ("gelu", "silu", "relu"):
            return func(*args, **kwargs)  # the internals of a hand-written activation, gated at its boundary
        _refuse_recompute(op)
        self._n_calls += 1
        op = "attention_softmax" if op == "softmax" else op
        if op in ("layer_norm", "rms_norm") and top is not None and top.kind == "norm":
            top.inner_norm = True
        where = top.name if top is not None else ""
        key = self._key(where, op)
        z = args[0] if args else kwargs.get("input", kwargs.get("self"))
        _, rule = self._choose(op)
        rule, extra, reason = self._prepare(op, func, rule, z, args, kwargs)
        self.coverage.record(key, op, None if rule is None else rule.name, rule is not None, reason)
        if self._record is not None and isinstance(z, torch.Tensor):
            self._record(key, op, z)
        if rule is None or not torch.is_grad_enabled():
            if rule is not None and self.expect_grad:
                raise ModelError(
                    f"{key} ran without autograd inside the attributed forward pass (torch.no_grad inside the "
                    "model, or torch.utils.checkpoint with use_reentrant=True): the rules cannot apply there",
                    hint=_CHECKPOINT_HINT,
                )
            return func(*args, **kwargs)
        if not _any_requires_grad(args, kwargs):
            return func(*args, **kwargs)
        return self._run(op, func, rule, z, extra, key, inplace, args, kwargs)

    def _prepare(self, op, func, rule, z, args, kwargs):
        """(rule or None, the rule's kwargs, why ungated)."""
        if rule is None:
            return None, {}, self._why_ungated(op)
        if op not in OPS or not rule.handles(op):
            return None, {}, f"rule {rule.name} does not handle {op}"
        if not isinstance(z, torch.Tensor):
            return None, {}, "input is not a tensor"
        extra: dict = {}
        if op in MaxPoolSurrogate.ops:
            extra, why = C.pool_kwargs(func, args, kwargs, z)
            if extra is None:
                return None, {}, why
        elif op == "gelu":
            extra = {"approximate": kwargs.get("approximate", args[1] if len(args) > 1 else "none")}
        elif op in ("layer_norm", "rms_norm"):
            names = (
                ("input", "normalized_shape", "weight", "bias", "eps")
                if op == "layer_norm"
                else ("input", "normalized_shape", "weight", "eps")
            )
            extra = dict(zip(names, args))
            extra.update(kwargs)
            extra.setdefault("eps", 1e-5 if op == "layer_norm" else None)
            extra["normalized_shape"] = (
                tuple(extra["normalized_shape"])
                if not isinstance(extra["normalized_shape"], int)
                else (extra["normalized_shape"],)
            )
        elif op == "sdpa":
            names = ("query", "key", "value")
            qkv = dict(zip(names, args))
            qkv.update({k: v for k, v in kwargs.items() if k in names})
            extra = {
                "q": qkv["query"],
                "k": qkv["key"],
                "v": qkv["value"],
                "rest": {k: v for k, v in kwargs.items() if k not in names},
            }
            if len(args) > 3:
                return None, {}, "scaled_dot_product_attention with positional options: no surrogate"
        elif op == "attention_softmax":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None:
                return None, {}, "softmax without dim"
            extra = {"dim": dim, "dtype": kwargs.get("dtype")}
        return rule, extra, ""

    def _why_ungated(self, op: str) -> str:
        if op in ("layer_norm", "rms_norm", "norm_module"):
            return "norm statistics not detached (norm='detach' or preset='successor' detaches them)"
        if op in ("sdpa", "attention_softmax"):
            return "no attention surrogate (attention=T adds one)"
        if op not in OPS:
            return C.WHY.get(op, "no rule for this op")
        return "no rule (functional=False gates torch's modules only)" if not self.rules.functional else "no rule"

    def _run(self, op, func, rule, z, extra, key, inplace, args, kwargs):
        T = self.rules.temperatures.get(key)
        if op in ("layer_norm", "rms_norm", "sdpa", "attention_softmax"):
            extra = {**extra, "call": lambda: func(*args, **kwargs)}
            return rule.apply(op, z, extra, T)
        if op in MaxPoolSurrogate.ops and extra.get("return_indices"):
            with torch.no_grad():
                _, idx = func(*args, **kwargs)
            return rule.apply(op, z, extra, T), idx
        out = rule.apply(op, z, extra, T)
        if inplace:
            z.copy_(out)
            return z
        return out


def _any_requires_grad(args, kwargs) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in list(args) + list(kwargs.values()))


def _detach_all(out):
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, tuple):
        return (
            type(out)(_detach_all(o) for o in out)
            if not hasattr(out, "_fields")
            else type(out)(*[_detach_all(o) for o in out])
        )
    return out


def _refuse_recompute(what: str) -> None:
    """A forward call while the autograd engine runs is a recomputation (activation checkpointing)."""
    if torch._C._current_graph_task_id() != -1:
        raise ModelError(
            f"activation checkpointing detected: {what} was recomputed during the backward pass, where the "
            "pullback rules would read the recomputed values (innerprobe refuses rather than return a "
            "silently wrong map)",
            hint=_CHECKPOINT_HINT,
        )


def _refuse_checkpointing_flags(model: nn.Module) -> None:
    """Hugging Face models with gradient checkpointing switched on (it only runs in train mode)."""
    if model.training and getattr(model, "is_gradient_checkpointing", False):
        raise ModelError(
            "the model has gradient checkpointing on and is in train mode: its blocks are recomputed in "
            "the backward pass, which the pullback rules cannot follow",
            hint=_CHECKPOINT_HINT + ", or model.eval()",
        )


@contextlib.contextmanager
def apply_rules(
    model: nn.Module, rules: Rules | None = None, *, record: Callable | None = None, expect_grad: bool = True
) -> Iterator[RuleContext]:
    """``with apply_rules(model, pullback_rules(0.3)) as ctx:`` forward + backward use the rules.

    The forward value of every op is unchanged (bitwise). On exit every hook is removed, the
    function mode popped and train/eval flags and ``requires_grad`` restored, even after errors.
    A call recomputed in the backward pass (activation checkpointing) raises a ModelError.
    """
    rules = pullback_rules() if rules is None else rules
    if not isinstance(rules, Rules):
        raise ConfigError(
            f"rules must be a Rules object, got {type(rules).__name__}",
            hint="build one with pullback_rules(temperature=0.3) or Rules([...])",
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="pass the model object")
    _refuse_checkpointing_flags(model)
    ctx = RuleContext(model, rules, record, expect_grad)
    with HookSession(model) as hs:
        for m in model.modules():
            hs.pre_hook(m, ctx._push)
            hs.forward_hook(m, ctx._pop)
        ctx.tl_hooks(hs)
        with _RuleMode(ctx):
            yield ctx


def calibrate_temperatures(
    model: nn.Module, inputs: torch.Tensor, tau: float, rules: Rules, forward: Callable | None = None
) -> Rules:
    """Per-call T = tau * std(z) of each gated call's input on a batch (networks without BatchNorm).

    A project option, not from the paper: the paper's ImageNet models put BatchNorm before every
    ReLU, so one global T fits all layers; here each layer's T is scaled by its own spread.
    """
    tau = _check_T(tau, "tau")
    stds: dict[str, float] = {}

    def rec(key, op, z):
        if z.numel() > 1 and z.is_floating_point():
            stds[key] = float(z.detach().float().std())

    with torch.no_grad(), preserved_buffers(model), apply_rules(model, rules, record=rec, expect_grad=False) as ctx:
        (forward or model)(inputs)
    temps = {k: max(tau * s, 1e-6) for k, s in stds.items() if ctx.coverage.calls[k]["gated"]}
    return rules.with_temperatures(temps)


__all__ = [
    "PRESETS",
    "AttentionSurrogate",
    "Coverage",
    "GELUGate",
    "Gate",
    "GuidedGate",
    "HardGate",
    "MaxPoolSurrogate",
    "NormSurrogate",
    "PullbackWarning",
    "Rules",
    "SiLUGate",
    "apply_rules",
    "calibrate_temperatures",
    "gradient_rules",
    "guided_rules",
    "preserved_buffers",
    "preset_rules",
    "pullback_rules",
    "warn_if_ungated",
]
