"""Applying backward rules reversibly: module selectors, functional interception, coverage.

``with apply_rules(model, rules) as ctx: ...`` makes every nonlinearity call inside the block use
its rule's backward. Nothing in the model is replaced or mutated: a ``TorchFunctionMode`` sees every
call of ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (and the in-place ``relu_`` forms), ``F.gelu``,
``F.silu`` and ``F.max_pool2d`` -- which is also how ``nn.ReLU``, ``nn.GELU``, ``nn.SiLU`` and
``nn.MaxPool2d`` compute -- and hooks owned by a :class:`~innerprobe.core.hooks.HookSession` track
which module is running, so rules can be chosen by module type, site string or callable. Because
rules act per call, a module reused at several call sites gates each call on its own
pre-activation, and in-place activations gate on the value before it is overwritten. On exit (also
after an exception) the mode is popped and every hook is removed.

``ctx.coverage`` counts gated calls against all nonlinearity calls seen.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from ..core.hooks import HookSession
from ..core.sites import Site, resolve
from ..errors import ConfigError
from .rules import GATES, OPS, Gate, GELUGate, GuidedGate, HardGate, MaxPoolSurrogate, Rule, SiLUGate, _check_T

Selector = Any  # nn.Module subclass | site string | Site | callable(name, module) -> bool


# --------------------------------------------------------------------------- which calls
def _relu_inplace(args, kwargs):
    return bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))


def _silu_inplace(args, kwargs):
    return bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))


# func -> (op, in-place?(args, kwargs))
_FUNCS: dict[Any, tuple[str, Callable]] = {
    F.relu: ("relu", _relu_inplace),
    torch.relu: ("relu", lambda a, k: False),
    torch._C.TensorBase.relu: ("relu", lambda a, k: False),
    torch.relu_: ("relu", lambda a, k: True),
    torch._C.TensorBase.relu_: ("relu", lambda a, k: True),
    F.gelu: ("gelu", lambda a, k: False),
    F.silu: ("silu", _silu_inplace),
    F.max_pool2d: ("max_pool2d", lambda a, k: False),
    torch.max_pool2d: ("max_pool2d", lambda a, k: False),
    F.max_pool2d_with_indices: ("max_pool2d", lambda a, k: False),
}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _pool_kwargs(args, kwargs) -> dict:
    d = dict(zip(_POOL_ARGS, args))
    d.update(kwargs)
    k = _pair(d["kernel_size"])
    s = d.get("stride")
    s = k if s is None or (isinstance(s, (list, tuple)) and len(s) == 0) else _pair(s)
    return {"kernel_size": k, "stride": s, "padding": _pair(d.get("padding", 0)), "dilation": _pair(d.get("dilation", 1)),
            "ceil_mode": bool(d.get("ceil_mode", False)), "return_indices": bool(d.get("return_indices", False))}


# --------------------------------------------------------------------------- rule sets
class Rules:
    """An ordered list of ``(selector, rule)`` entries plus a fallback for functional calls.

    A selector is an ``nn.Module`` subclass, a site string or :class:`Site` (``'features.3'``,
    ``'@ReLU'``, ``'block*'``, resolved with :func:`innerprobe.core.sites.resolve`), or a callable
    ``(name, module) -> bool``. A call of a nonlinearity is governed by the *first entry* (in list
    order) that selects any module currently running (the innermost one or an ancestor) and whose
    rule handles that op; ``None`` as a rule means "leave the plain derivative". Calls that no entry
    covers use ``functional[op]`` (``None``: plain derivative, reported as ungated).
    ``temperatures`` maps call keys (``'relu1:relu#0'``, see :class:`Coverage`) to per-call T.
    """

    def __init__(self, entries: Sequence[tuple[Selector, Rule | None]] = (), *, functional: dict | None = None,
                 temperatures: dict[str, float] | None = None, description: str = "custom"):
        self.entries = list(entries)
        for sel, rule in self.entries:
            if rule is not None and not isinstance(rule, Rule):
                raise ConfigError(f"rule for selector {sel!r} is a {type(rule).__name__}, not a Rule", hint="use Gate(), HardGate(), GuidedGate(), MaxPoolSurrogate() or None")
        self.functional = dict(functional or {})
        bad = [op for op in self.functional if op not in OPS]
        if bad:
            raise ConfigError(f"unknown op(s) {bad} in functional rules", hint=f"ops are {', '.join(OPS)}")
        self.temperatures = {k: _check_T(v, f"temperature for {k}") for k, v in (temperatures or {}).items()}
        self.description = description

    def with_temperatures(self, temperatures: dict[str, float]) -> "Rules":
        return Rules(self.entries, functional=self.functional, temperatures=temperatures, description=self.description + " (per-call T)")

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
                raise ConfigError(f"cannot select modules with {sel!r}", hint="a selector is a module class, a site string like 'features.3' or '@ReLU', or a callable (name, module) -> bool")
            for m in hits:
                out.setdefault(id(m), []).append((i, rule))
        return out

    def __repr__(self) -> str:
        return f"Rules({self.description})"

    def to_dict(self) -> dict:
        def sel_name(s):
            return s.__name__ if isinstance(s, type) else (str(s) if isinstance(s, (str, Site)) else getattr(s, "__name__", "callable"))

        return {"description": self.description,
                "entries": [[sel_name(s), None if r is None else r.name] for s, r in self.entries],
                "functional": {k: None if r is None else r.name for k, r in self.functional.items()},
                "temperatures": dict(self.temperatures)}


def pullback_rules(temperature: float = 0.3, gate: str = "logistic", *, pool: str = "soft", pool_temperature: float | None = None,
                   pool_detach: bool = False, gelu_temperature: float = 1.0, silu_temperature: float = 1.6,
                   functional: bool = True) -> Rules:
    """The excitation-pullback rule set (arXiv 2507.22832): soft ReLU gate, max-pool surrogate, GELU/SiLU gates.

    ``gate``: 'logistic' (sigmoid(z/T), the original), 'probit' (Phi(z/T), the successor), 'hard'
    (plain gradient) or 'guided' (guided backprop control). ``pool``: 'soft' (surrogate at
    ``pool_temperature``, default T) or 'hard'. ``functional=False`` leaves functional calls hard.
    """
    if gate not in GATES:
        raise ConfigError(f"unknown gate {gate!r}", hint=f"gates: {', '.join(GATES)}")
    relu = GATES[gate](temperature) if gate in ("logistic", "probit") else GATES[gate]()
    if pool not in ("soft", "hard"):
        raise ConfigError(f"unknown pool rule {pool!r}", hint="use 'soft' (softmax-weighted backward) or 'hard' (plain max-pool gradient)")
    soft = gate in ("logistic", "probit")
    mp = MaxPoolSurrogate(pool_temperature if pool_temperature is not None else temperature, pool_detach) if (pool == "soft" and soft) else None
    gelu = GELUGate(gelu_temperature) if soft else None
    silu = SiLUGate(silu_temperature) if soft else None
    by_op = {"relu": relu, "max_pool2d": mp, "gelu": gelu, "silu": silu}
    entries = [(nn.ReLU, relu), (nn.MaxPool2d, mp), (nn.GELU, gelu), (nn.SiLU, silu)]
    desc = f"{relu.name}" + (f", {mp.name}" if mp else ", hard pool") + ("" if functional else ", modules only")
    return Rules(entries, functional=by_op if functional else {}, description=desc)


def gradient_rules() -> Rules:
    """No rule anywhere: the plain gradient (coverage then reports every call as ungated)."""
    return Rules([], functional={}, description="plain gradient")


def guided_rules() -> Rules:
    return pullback_rules(gate="guided", pool="hard")


# --------------------------------------------------------------------------- coverage
@dataclass
class Coverage:
    """Gated calls vs all nonlinearity calls seen, per call key ``'module:op#k'``.

    ``k`` counts calls of that op inside that (innermost) module within one forward pass, so a
    ReLU module reused three times shows up as ``relu:relu#0``, ``#1``, ``#2``; a functional call
    at the model's top level has module ``''``.
    """

    calls: dict = field(default_factory=dict)  # key -> {"op", "rule", "seen", "gated", "reason"}

    def record(self, key: str, op: str, rule: str | None, gated: bool, reason: str = "") -> None:
        e = self.calls.setdefault(key, {"op": op, "rule": rule, "seen": 0, "gated": 0, "reason": reason})
        e["seen"] += 1
        e["gated"] += int(gated)
        if not gated and reason:
            e["reason"] = reason

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
            text += "; ungated: " + ", ".join(f"{k} ({self.calls[k]['reason'] or 'no rule'})" for k in miss[:8]) + (" ..." if len(miss) > 8 else "")
        return text

    def to_dict(self) -> dict:
        return {"seen": self.seen, "gated": self.gated, "fraction": self.fraction, "by_op": self.by_op(), "calls": self.calls}


# --------------------------------------------------------------------------- the mode
class _RuleMode(TorchFunctionMode):
    def __init__(self, ctx: "RuleContext"):
        super().__init__()
        self.ctx = ctx

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            spec = _FUNCS.get(func)
        except TypeError:  # unhashable callables
            spec = None
        if spec is None:
            return func(*args, **kwargs)
        return self.ctx._call(func, spec, args, kwargs)


class RuleContext:
    """State of one :func:`apply_rules` block: the module stack, call counters and coverage."""

    def __init__(self, model: nn.Module, rules: Rules, record: Callable | None = None):
        self.model = model
        self.rules = rules
        self.coverage = Coverage()
        self._bound = rules.bind(model)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._stack: list[nn.Module] = []
        self._counts: Counter = Counter()
        self._record = record  # optional fn(key, op, z) for calibration

    # hooks
    def _push(self, module, args):
        if module is self.model:
            self._counts.clear()
            self._stack.clear()
        self._stack.append(module)

    def _pop(self, module, args, output):
        while self._stack:
            if self._stack.pop() is module:
                break

    def _choose(self, op: str) -> tuple[bool, Rule | None]:
        best = None
        for m in self._stack:
            for i, rule in self._bound.get(id(m), ()):
                if rule is None or rule.handles(op):
                    if best is None or i < best[0]:
                        best = (i, rule)
                    break
        if best is not None:
            return True, best[1]
        return False, self.rules.functional.get(op)

    def _call(self, func, spec, args, kwargs):
        op, inplace_of = spec
        inplace = inplace_of(args, kwargs)
        where = self._names.get(id(self._stack[-1]), "?") if self._stack else ""
        n = self._counts[(where, op)]
        self._counts[(where, op)] += 1
        key = f"{where}:{op}#{n}"
        z = args[0] if args else kwargs.get("input", kwargs.get("self"))
        _, rule = self._choose(op)
        reason = ""
        extra: dict = {}
        if rule is not None and op == "max_pool2d":
            extra = _pool_kwargs(args, kwargs)
            if extra["ceil_mode"] or extra["return_indices"] or not (isinstance(z, torch.Tensor) and z.dim() == 4):
                reason = "pool with ceil_mode, return_indices or a non-[N,C,H,W] input: surrogate not supported"
                rule = None
        elif op == "gelu":
            extra = {"approximate": kwargs.get("approximate", args[1] if len(args) > 1 else "none")}
        if rule is not None and not isinstance(z, torch.Tensor):
            rule, reason = None, "input is not a tensor"
        self.coverage.record(key, op, None if rule is None else rule.name, rule is not None, reason or "no rule")
        if self._record is not None and isinstance(z, torch.Tensor):
            self._record(key, op, z)
        if rule is None or not (torch.is_grad_enabled() and z.requires_grad):
            return func(*args, **kwargs)
        T = self.rules.temperatures.get(key)
        out = rule.apply(op, z, extra, T)
        if inplace:
            z.copy_(out)
            return z
        return out


@contextlib.contextmanager
def apply_rules(model: nn.Module, rules: Rules | None = None, *, record: Callable | None = None) -> Iterator[RuleContext]:
    """``with apply_rules(model, pullback_rules(0.3)) as ctx:`` forward + backward use the rules.

    The forward value of every op is unchanged (bitwise). On exit every hook is removed, the
    function mode popped and train/eval flags and ``requires_grad`` restored, even after errors.
    """
    rules = pullback_rules() if rules is None else rules
    if not isinstance(rules, Rules):
        raise ConfigError(f"rules must be a Rules object, got {type(rules).__name__}", hint="build one with pullback_rules(temperature=0.3) or Rules([...])")
    ctx = RuleContext(model, rules, record)
    with HookSession(model) as hs:
        for m in model.modules():
            hs.pre_hook(m, ctx._push)
            hs.forward_hook(m, ctx._pop)
        with _RuleMode(ctx):
            yield ctx


def calibrate_temperatures(model: nn.Module, inputs: torch.Tensor, tau: float, rules: Rules) -> Rules:
    """Per-call T = tau * std(z) of each gated call's input on a batch (networks without BatchNorm).

    A project option, not from the paper: the paper's ImageNet models put BatchNorm before every
    ReLU, so one global T fits all layers; here each layer's T is scaled by its own spread.
    """
    tau = _check_T(tau, "tau")
    stds: dict[str, float] = {}

    def rec(key, op, z):
        if z.numel() > 1:
            stds[key] = float(z.detach().float().std())

    from .attribution import preserved_buffers

    with torch.no_grad(), preserved_buffers(model), apply_rules(model, rules, record=rec) as ctx:
        model(inputs)
    temps = {k: max(tau * s, 1e-6) for k, s in stds.items() if ctx.coverage.calls[k]["gated"]}
    return rules.with_temperatures(temps)


__all__ = ["Rules", "pullback_rules", "gradient_rules", "guided_rules", "apply_rules", "calibrate_temperatures", "Coverage",
           "Gate", "HardGate", "GuidedGate", "MaxPoolSurrogate", "GELUGate", "SiLUGate"]
