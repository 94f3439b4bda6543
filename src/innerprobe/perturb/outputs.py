"""What APEX counts: from a model's output to one score vector per input.

APEX (Ren, Luo, Li 2026, arXiv 2602.03586; docs/apex.md "Language models") counts the argmax
ŷ_k = argmax_c s_c^(k)(x; σ) of K noisy passes. For a classifier ``s`` is its logits
``[batch, classes]``. For a language model the output is ``[batch, seq, vocab]`` and
:class:`Readout` says which scores are meant:

* ``position``: the sequence position read, ``-1`` (last token, the default) or any int, or one
  index per input (e.g. each prompt's answer position; negative values count from the end);
* ``tokens``: the candidate set. ``None`` is the whole vocabulary (next-token prediction);
  ``[a, b, ...]`` the same candidates for every input; an ``[N, C]`` array per-input candidates,
  e.g. the IO and S names of each IOI prompt, so class ``c`` means "candidate column c".

Outputs can be tensors, tuples (first element), dicts or Hugging Face ``ModelOutput`` (``.logits``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.trees import logits_of
from ..errors import ConfigError, ModelError


def _index_array(value, name: str, n: int | None) -> torch.Tensor | int | None:
    if value is None or isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return None if value is None else int(value)
    try:
        t = torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be an int or integers, got {type(value).__name__}", hint="e.g. -1 or one index per input"
        ) from None
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise ConfigError(f"{name} must hold integers, got {t.dtype}", hint="token ids and positions are integers")
    return t.long()


class Readout:
    """Scores APEX takes the argmax of. ``Readout(position=None, tokens=None, names=None)``.

    ``position``: ``None`` (classifier logits as they are; ``-1`` for ``[batch, seq, vocab]``),
    an int, or one int per input. ``tokens``: ``None`` (every class / the whole vocabulary),
    a list of class or token ids shared by every input, or an ``[N, C]`` array per input.
    ``names``: optional names of the C classes (e.g. ``["IO", "S"]``).
    """

    def __init__(self, position=None, tokens=None, names=None):
        self.position = _index_array(position, "position", None)
        tok = _index_array(tokens, "tokens", None)
        if isinstance(tok, int):
            tok = torch.tensor([tok])
        if tok is not None and (tok.dim() not in (1, 2) or tok.shape[-1] < 2):
            raise ConfigError(
                f"tokens must be [C] or [N, C] with C >= 2 candidates, got shape {tuple(tok.shape)}",
                hint="APEX counts which candidate wins; give at least two",
            )
        self.tokens = tok
        self.names = None if names is None else [str(n) for n in names]
        self.kind: str | None = None  # "classifier" or "lm", set by bind()
        self.vocab: int | None = None

    # ------------------------------------------------------------------ binding
    def positions(self, seq_len: int, n_inputs: int) -> torch.Tensor | None:
        """The read positions in [0, seq_len) (a 0-d tensor or one per input); checks their range."""
        T = int(seq_len)
        p = torch.as_tensor(-1 if self.position is None else self.position)
        if p.dim() == 1 and len(p) != n_inputs:
            raise ConfigError(
                f"position has {len(p)} entries for {n_inputs} inputs", hint="one position per input, or one int"
            )
        if p.dim() > 1 or bool(((p < -T) | (p >= T)).any()):
            shown = p.tolist() if p.dim() == 0 else p.tolist()[:8]
            raise ConfigError(
                f"position {shown} is out of range for sequences of length {T}",
                hint=f"positions lie in [-{T}, {T - 1}]; -1 is the last token",
            )
        return p % T

    def bind(self, output, n_inputs: int, *, seq_len: int | None = None, kept: torch.Tensor | None = None) -> None:
        """Check the readout against the model's clean output and fix its kind. ``kept``: the
        positions the model was asked to return logits for (HF ``logits_to_keep``), else all."""
        logits = logits_of(output)
        if logits.dim() == 3:
            self.kind = "lm"
        elif logits.dim() == 2:
            if self.position is not None:
                raise ConfigError(
                    f"position= applies to [batch, seq, vocab] logits; this model returns {tuple(logits.shape)}",
                    hint="drop --position for a classifier",
                )
            self.kind = "classifier"
        else:
            raise ModelError(
                f"the model's logits have shape {tuple(logits.shape)}, neither [batch, classes] nor [batch, seq, "
                f"vocab]",
                hint="APEX reads a classifier's logits or a language model's logits at a position",
            )
        self.vocab = int(logits.shape[-1])
        if self.kind == "lm":
            self._pos = self.positions(seq_len or logits.shape[1], n_inputs)
            self._abs = self._pos
            if kept is not None:
                self._pos = torch.searchsorted(kept, self._pos)
            elif seq_len is not None and logits.shape[1] != seq_len:
                raise ModelError(f"the model returned logits for {logits.shape[1]} of {seq_len} positions")
        if self.tokens is not None:
            t = self.tokens
            if t.dim() == 2 and len(t) != n_inputs:
                raise ConfigError(
                    f"tokens has {len(t)} rows for {n_inputs} inputs",
                    hint="one row of candidates per input, or one list",
                )
            if bool(((t < 0) | (t >= self.vocab)).any()):
                raise ConfigError(
                    f"token ids must lie in [0, {self.vocab}), got {t.min().item()}..{t.max().item()}",
                    hint="candidates are ids into the model's vocabulary (or class indices)",
                )

    @property
    def n_classes(self) -> int:
        return int(self.tokens.shape[-1]) if self.tokens is not None else int(self.vocab)

    def describe(self) -> dict:
        """JSON-safe description (kept with every result and in the resume fingerprint)."""
        pos = None if self.kind != "lm" else (self._abs.tolist() if self._abs.dim() else int(self._abs))
        tok = None if self.tokens is None else self.tokens.tolist()
        return {"kind": self.kind, "position": pos, "tokens": tok, "names": self.names, "vocab": self.vocab}

    # ------------------------------------------------------------------ reading
    def __call__(self, output, index: torch.Tensor) -> torch.Tensor:
        """Scores ``[rows, C]`` for the rows of ``output``; ``index[r]`` is row r's input index."""
        logits = logits_of(output)
        rows = logits.shape[0]
        if logits.dim() == 3:
            if self.kind != "lm":
                raise ModelError(f"noisy logits have shape {tuple(logits.shape)} where the clean ones were 2-D")
            p = self._pos if self._pos.dim() == 0 else self._pos.to(logits.device)[index]
            ar = torch.arange(rows, device=logits.device)
            logits = logits[ar, p.expand(rows) if p.dim() == 0 else p]
        elif logits.dim() != 2:
            raise ModelError(f"noisy logits have shape {tuple(logits.shape)}, expected [{rows}, classes]")
        if self.tokens is None:
            return logits
        t = self.tokens.to(logits.device)
        return logits[:, t] if t.dim() == 1 else logits.gather(1, t[index])


def as_readout(readout=None, *, position=None, tokens=None, names=None) -> Readout:
    """A :class:`Readout` from one, or from ``position`` / ``tokens`` / ``names``."""
    if readout is not None:
        if not isinstance(readout, Readout):
            raise ConfigError(f"readout must be an innerprobe.perturb.Readout, got {type(readout).__name__}")
        if position is not None or tokens is not None:
            raise ConfigError("give either readout= or position=/tokens=, not both")
        return readout
    return Readout(position=position, tokens=tokens, names=names)
