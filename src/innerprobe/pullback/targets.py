"""What an attribution back-propagates: one scalar per input, read from the model's logits (docs/pullback.md, "Targets").

Classifiers (logits ``[N, C]``): ``None`` (the predicted class), a class index, or one per input.
Language models (logits ``[N, T, V]``):

* ``None`` -- the predicted next token at the last position;
* an int -- that token's logit at the last position; a list of ints -- one per input;
* ``(position, token)`` -- captum's tuple form; a list of tuples -- one per input;
* :class:`TokenTarget` ``(token, position=-1)`` -- both may be per input (answer positions);
* :class:`LogitDiff` ``(a, b, position=-1)`` -- ``logit[a] - logit[b]``, e.g. IO - S on IOI prompts;
* a callable ``logits -> [N]`` -- anything else.

What is back-propagated is the raw logit (or logit difference), summed over the batch, never a
softmax: Satkiewicz 2025 (arXiv 2507.22832) back-propagates the raw class logit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, ModelError

_HINT = (
    "e.g. target=3, target=[3, 1, 4], target=(-1, 42) for a token at a position, TokenTarget(ids, position) or "
    "LogitDiff(io, s)"
)


@dataclass(frozen=True)
class TokenTarget:
    """The logit of ``token`` at ``position`` (ints, or one per input)."""

    token: Any
    position: Any = -1


@dataclass(frozen=True)
class LogitDiff:
    """``logit[a] - logit[b]`` at ``position`` (each an int or one per input): e.g. IO - S."""

    a: Any
    b: Any
    position: Any = -1


def _ids(value, n: int, what: str, device) -> torch.Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"{what} must be integer indices, got {t.dtype}", hint=_HINT)
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ConfigError(f"{what} has {t.numel()} entries for {n} inputs", hint="pass one value, or one per input")
    return t


@dataclass
class Target:
    """A resolved target: per-row index tensors (``cls`` or ``a``/``b``, ``pos`` for sequence logits)."""

    kind: str  # 'class' | 'token' | 'diff' | 'callable'
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    fn: Callable | None = None

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """One scalar per row of ``logits``."""
        if self.kind == "callable":
            s = self.fn(logits)
            if not isinstance(s, torch.Tensor) or s.shape != (logits.shape[0],):
                raise ConfigError(
                    f"a callable target must return one value per input, shape ({logits.shape[0]},)",
                    hint="e.g. target=lambda logits: logits[:, -1, 5] - logits[:, -1, 7]",
                )
            return s
        rows = torch.arange(logits.shape[0], device=logits.device)
        if logits.dim() == 3:
            logits = logits[rows, self.pos]
        out = logits[rows, self.a]
        return out - logits[rows, self.b] if self.kind == "diff" else out

    def take(self, idx) -> Target:
        """The rows ``idx`` (a slice or index tensor) of this target."""
        sel = lambda t: None if t is None else t[idx]
        return Target(self.kind, sel(self.a), sel(self.b), sel(self.pos), self.fn)

    def repeat(self, k: int) -> Target:
        """The target for ``k`` stacked copies of the batch (interpolation steps, noise samples)."""
        rep = lambda t: None if t is None else t.repeat(k)
        return Target(self.kind, rep(self.a), rep(self.b), rep(self.pos), self.fn)

    def describe(self) -> str:
        if self.kind == "callable":
            return "callable"
        lst = lambda t: t.tolist() if t.numel() <= 8 else f"{t[:8].tolist()}..."
        text = {"class": "class", "token": "token", "diff": "logit difference"}[self.kind] + f" {lst(self.a)}"
        text += f" - {lst(self.b)}" if self.kind == "diff" else ""
        return text + (f" at position {lst(self.pos)}" if self.pos is not None else "")


def resolve_target(target, logits: torch.Tensor) -> Target:
    """Turn any accepted target form into a :class:`Target` for these ``logits`` (the clean forward's)."""
    if logits.dim() not in (2, 3):
        raise ModelError(
            f"expected logits [N, classes] or [N, positions, vocab], got shape {tuple(logits.shape)}",
            hint="attribution needs a classifier's or a language model's logits",
        )
    n, v, dev = logits.shape[0], logits.shape[-1], logits.device
    seq = logits.dim() == 3
    if isinstance(target, Target):
        return target
    if callable(target) and not isinstance(target, (TokenTarget, LogitDiff)):
        return Target("callable", fn=target)
    pos = None
    if target is None:
        t = Target("token" if seq else "class", logits[:, -1].argmax(-1) if seq else logits.argmax(-1))
        pos = torch.full((n,), -1, device=dev, dtype=torch.long) if seq else None
        t.pos = pos
        return t
    if isinstance(target, LogitDiff):
        a, b = _ids(target.a, n, "LogitDiff.a", dev), _ids(target.b, n, "LogitDiff.b", dev)
        pos = _ids(target.position, n, "LogitDiff.position", dev)
        t = Target("diff", a, b, pos)
    elif isinstance(target, TokenTarget):
        t = Target(
            "token", _ids(target.token, n, "target token", dev), pos=_ids(target.position, n, "target position", dev)
        )
    elif isinstance(target, tuple) or (isinstance(target, list) and target and isinstance(target[0], tuple)):
        pairs = [target] * n if isinstance(target, tuple) else list(target)
        if any(len(p) != 2 for p in pairs) or len(pairs) != n:
            raise ConfigError(f"tuple targets are (position, token), one or one per input; got {target!r}", hint=_HINT)
        t = Target(
            "token",
            _ids([p[1] for p in pairs], n, "target token", dev),
            pos=_ids([p[0] for p in pairs], n, "target position", dev),
        )
    else:
        t = Target("token" if seq else "class", _ids(target, n, "target", dev))
        if seq:
            t.pos = torch.full((n,), -1, device=dev, dtype=torch.long)
    if t.pos is not None and not seq:
        raise ConfigError(
            "a target with a position needs sequence logits [N, positions, vocab]; this model returns "
            f"{tuple(logits.shape)}",
            hint="pass a class index, e.g. target=3",
        )
    for name, ids in (("target", t.a), ("target", t.b)):
        if ids is not None and ((ids < 0).any() or (ids >= v).any()):
            raise ConfigError(
                f"{name} indices {ids.unique()[:8].tolist()} out of range for {v} logits",
                hint=f"indices are 0..{v - 1}",
            )
    if t.pos is not None:
        T = logits.shape[1]
        if ((t.pos < -T) | (t.pos >= T)).any():
            raise ConfigError(
                f"target positions {t.pos.unique()[:8].tolist()} out of range for {T} positions",
                hint=f"positions are -{T}..{T - 1}",
            )
    return t


def _rows(value, sl: slice, n: int, what: str):
    if value is None or isinstance(value, (int, tuple)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value
    if isinstance(value, torch.Tensor):
        flat = value.reshape(-1)
        if flat.numel() != n:
            raise ConfigError(
                f"{what} has {flat.numel()} entries for {n} inputs", hint="pass one value, or one per input"
            )
        return flat[sl]
    if isinstance(value, (list, range)):
        if len(value) == 1:
            return value
        if len(value) != n:
            raise ConfigError(
                f"{what} has {len(value)} entries for {n} inputs", hint="pass one value, or one per input"
            )
        return list(value)[sl]
    return value


def slice_target(target, sl: slice, n: int):
    """The rows ``sl`` of a target as given by the user (before it is resolved against logits)."""
    if isinstance(target, Target):
        return target.take(sl)
    if isinstance(target, TokenTarget):
        return TokenTarget(_rows(target.token, sl, n, "target token"), _rows(target.position, sl, n, "target position"))
    if isinstance(target, LogitDiff):
        return LogitDiff(
            _rows(target.a, sl, n, "LogitDiff.a"),
            _rows(target.b, sl, n, "LogitDiff.b"),
            _rows(target.position, sl, n, "LogitDiff.position"),
        )
    if callable(target):
        return target
    return _rows(target, sl, n, "target")


__all__ = ["LogitDiff", "Target", "TokenTarget", "resolve_target", "slice_target"]
