"""Metrics for path patching (Goldowsky-Dill et al. 2023, §2; docs/patching.md, "Metrics").

Unexplained effect of a pair: UE = delta(G(x_r), G_H(x_r, x_c)); AUE = E[UE]. With a baseline
hypothesis H0 (default: no paths, so AUE(H0) = ATE):

    proportion(H; H0) = (AUE(H0) - AUE(H)) / AUE(H0)

a ratio of means (never a mean of ratios); it may exceed 1 or fall below 0. With the signed loss
delta(y, y') = L(y') - L(y) on x_r's labels this is causal scrubbing's "fraction of loss recovered".
Bootstrap CIs resample (x_r, x_c) pairs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


def lm_loss(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-example mean next-token cross-entropy on x_r's tokens (``mask`` [B, T-1] picks targets)."""

    def loss(logits: torch.Tensor) -> torch.Tensor:
        lead = logits.shape[:-3]  # optional hypothesis axis
        V = logits.shape[-1]
        lg = logits[..., :-1, :]
        tgt = tokens[:, 1:].expand(*lead, *tokens[:, 1:].shape)
        ce = F.cross_entropy(lg.reshape(-1, V), tgt.reshape(-1), reduction="none").view(tgt.shape)
        if mask is None:
            return ce.mean(-1)
        m = mask.to(ce.dtype)
        return (ce * m).sum(-1) / m.sum(-1).clamp_min(1)

    return loss


def label_loss(labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-example cross-entropy of a classifier's outputs ``[(K,) B, C]`` against ``labels`` [B]."""
    labels = torch.as_tensor(labels).long()

    def loss(out: torch.Tensor) -> torch.Tensor:
        flat = out.reshape(-1, out.shape[-1])
        y = labels.to(out.device).repeat(flat.shape[0] // len(labels))
        return F.cross_entropy(flat, y, reduction="none").view(out.shape[:-1])

    loss.name = "cross-entropy"
    return loss


def signed_loss(loss: Callable) -> Callable:
    """delta(ref, patched) = L(patched) - L(ref), per example."""

    def delta(ref_out, patched_out):
        return loss(patched_out) - loss(ref_out)

    delta.name = "signed loss"
    return delta


def kl_div(mask: torch.Tensor | None = None) -> Callable:
    """delta = KL(softmax(G(x_r)) || softmax(G_H)) per example, averaged over (masked) positions."""

    def delta(ref_out, patched_out):
        p = ref_out.log_softmax(-1)
        q = patched_out.log_softmax(-1)
        kl = (p.exp() * (p - q)).sum(-1)  # [(K,) B, T] for sequences, [(K,) B] for classifiers
        if ref_out.dim() < 3:
            return kl
        if mask is None:
            return kl.mean(-1)
        m = mask.to(kl.dtype)
        kl = kl[..., : m.shape[-1]]
        return (kl * m).sum(-1) / m.sum(-1).clamp_min(1)

    delta.name = "KL"
    return delta


def logit_diff(correct: torch.Tensor, wrong: torch.Tensor, position: int = -1) -> Callable:
    """Per-example logit[correct] - logit[wrong] at ``position`` (a metric, not a delta)."""

    def metric(logits):
        lg = logits[..., position, :] if logits.dim() >= 3 else logits
        return lg.gather(-1, correct.view(*([1] * (lg.dim() - 2)), -1, 1).expand(*lg.shape[:-1], 1)).squeeze(
            -1
        ) - lg.gather(-1, wrong.view(*([1] * (lg.dim() - 2)), -1, 1).expand(*lg.shape[:-1], 1)).squeeze(-1)

    return metric


def proportion(ue: np.ndarray, ue0: np.ndarray) -> float:
    """(mean ue0 - mean ue) / mean ue0, a ratio of means."""
    ue, ue0 = np.asarray(ue, float), np.asarray(ue0, float)
    d = ue0.mean()
    if abs(d) < 1e-12:
        raise ConfigError(
            "the baseline hypothesis has no effect (AUE(H0) = 0): proportion explained is undefined",
            hint="check that x_c differs from x_r where it matters, or choose another baseline",
        )
    return float((d - ue.mean()) / d)


def bootstrap_proportion(
    ue: np.ndarray, ue0: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over (x_r, x_c) pairs of the ratio of means."""
    ue, ue0 = np.asarray(ue, float), np.asarray(ue0, float)
    if ue.shape != ue0.shape or ue.ndim != 1:
        raise ConfigError(
            f"unexplained effects must be two 1-D arrays of the same length, got {ue.shape} and {ue0.shape}"
        )
    est = proportion(ue, ue0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ue), size=(n_boot, len(ue)))
    num = ue0[idx].mean(1) - ue[idx].mean(1)
    den = ue0[idx].mean(1)
    ok = np.abs(den) > 1e-12
    boots = num[ok] / den[ok]
    a = (1 - level) / 2
    return est, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t-interval across seeds (or any small sample)."""
    from scipy import stats

    v = np.asarray(values, float)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h
