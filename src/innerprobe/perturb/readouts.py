"""Read-outs of APEX counts (Ren, Luo, Li 2026, arXiv 2602.03586; definitions in docs/apex.md, 'Definitions').

Everything here is a function of the stored integer counts ``[N inputs, S sigmas, C classes]``
(plus the clean prediction ``y0``), so it can be recomputed without new forward passes.

* :func:`escape_noise` -- smallest sigma where the clean class's share drops below ``tau``
  (survival rule, default) or stops being the majority (``rule='majority'``), first crossing on
  the increasing grid, refined by log-interpolation between grid points (docs/apex.md, 'Definitions'), with
  censoring flags (-1 left-censored: already escaped at sigma_min; +1 right-censored: never escaped).
* :func:`escape_class` -- the class that takes over at the crossing (docs/apex.md, 'Definitions').
* :func:`class_histogram` -- mean p_sigma(c|x) over inputs (docs/apex.md, 'Definitions'), with entropy.
* :func:`sample_dependence` -- D(sigma) = mean_x TV(p_sigma(.|x), pbar_sigma) with its Monte Carlo
  floor (docs/apex.md, 'Definitions'); :func:`mutual_information` the plug-in alternative.
* :func:`logit_margin` -- the clean-margin control.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, check

LEFT, NONE, RIGHT = -1, 0, 1


def _counts(counts) -> np.ndarray:
    c = np.asarray(counts)
    check(c.ndim == 3, f"counts must have shape [N, S, C], got {c.shape}", "pass the 'counts' array of an APEX result")
    return c


def shares(counts) -> np.ndarray:
    """p_sigma(c|x) = counts / K, shape [N, S, C]."""
    c = _counts(counts)
    k = c.sum(-1, keepdims=True)
    return c / np.maximum(k, 1)


def survival(counts, y0) -> np.ndarray:
    """S_x(sigma) = p_sigma(y0(x)|x), shape [N, S]."""
    p = shares(counts)
    y0 = np.asarray(y0, dtype=np.int64)
    return np.take_along_axis(p, y0[:, None, None].repeat(p.shape[1], 1), axis=2)[..., 0]


def _margin_curve(counts, y0, rule: str, tau: float) -> np.ndarray:
    """A curve f[N, S] that is >= 0 while the clean class survives and < 0 once it has escaped."""
    p = shares(counts)
    s = survival(counts, y0)
    if rule == "survival":
        return s - tau
    if rule == "majority":
        rival = p.copy()
        np.put_along_axis(rival, np.asarray(y0, np.int64)[:, None, None].repeat(p.shape[1], 1), -1.0, axis=2)
        return s - rival.max(-1) - 1e-12  # a tie with a rival counts as a flip (argmax no longer unique)
    raise ConfigError(
        f"unknown escape rule {rule!r}", hint="use 'survival' (share of the clean class < tau) or 'majority'"
    )


@dataclass
class Escape:
    """Escape noise per input: ``sigma`` [N], ``censor`` [N] (-1, 0, +1), ``index`` [N] = first grid
    index past the crossing (-1 if right-censored), ``escape_class`` [N] (-1 if right-censored)."""

    sigma: np.ndarray
    censor: np.ndarray
    index: np.ndarray
    escape_class: np.ndarray

    def rates(self) -> dict:
        n = max(len(self.censor), 1)
        return {
            "left_censored": float((self.censor == LEFT).sum() / n),
            "right_censored": float((self.censor == RIGHT).sum() / n),
        }


def escape_noise(counts, sigmas, y0, *, tau: float = 0.5, rule: str = "survival", refine: str = "log") -> Escape:
    """Escape noise sigma_esc(x) per input (docs/apex.md, 'Definitions').

    First crossing of the survival curve below ``tau`` (or of the majority) on the increasing grid;
    ``refine='log'`` interpolates in log sigma between the bracketing grid points (linearly when the
    lower one is 0), ``refine='none'`` returns the first grid point past the crossing.
    Right-censored inputs get sigma_max, left-censored ones sigma_min, both flagged.
    """
    c = _counts(counts)
    sig = np.asarray(sigmas, dtype=np.float64)
    check(sig.ndim == 1 and len(sig) == c.shape[1], f"sigmas has shape {sig.shape} but counts has {c.shape[1]} sigmas")
    check(0 < tau < 1, f"tau must be in (0, 1), got {tau}")
    check(
        refine in ("log", "none"),
        f"unknown refinement {refine!r}",
        "use 'log' or 'none' (bisection is apex.escape_bisect)",
    )
    f = _margin_curve(c, y0, rule, tau)
    N = f.shape[0]
    below = f < 0
    crossed = below.any(1)
    first = np.where(crossed, below.argmax(1), -1)
    out = np.empty(N)
    censor = np.zeros(N, dtype=np.int8)
    censor[~crossed] = RIGHT
    out[~crossed] = sig[-1]
    left = crossed & (first == 0)
    censor[left] = LEFT
    out[left] = sig[0]
    mid = crossed & (first > 0)
    i = first[mid]
    a, b = sig[i - 1], sig[i]
    fa, fb = f[mid, i - 1], f[mid, i]
    if refine == "none":
        out[mid] = b
    else:
        t = np.clip(fa / np.maximum(fa - fb, 1e-12), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            logv = np.log(np.maximum(a, 1e-300)) + t * (np.log(b) - np.log(np.maximum(a, 1e-300)))
        out[mid] = np.where(a > 0, np.exp(logv), a + t * (b - a))
    return Escape(out, censor, first, escape_class(c, y0, first))


def escape_class(counts, y0, index) -> np.ndarray:
    """e(x) = argmax_{c != y0} p_{sigma*}(c|x) at grid index ``index`` (docs/apex.md, 'Definitions'); ties broken by
    the larger count at the next sigma, then by the smaller class index; -1 where index < 0."""
    c = _counts(counts).astype(np.float64)
    N, S, _ = c.shape
    y0 = np.asarray(y0, np.int64)
    idx = np.asarray(index, np.int64)
    out = np.full(N, -1, dtype=np.int64)
    ok = idx >= 0
    if not ok.any():
        return out
    rows = np.nonzero(ok)[0]
    at = c[rows, idx[ok]]
    nxt = c[rows, np.minimum(idx[ok] + 1, S - 1)]
    K = c[0, 0].sum()
    score = at * (K + 1) + nxt  # lexicographic: count now, then count at the next sigma
    score[np.arange(len(rows)), y0[ok]] = -1  # np.argmax then takes the smallest index among ties
    out[rows] = score.argmax(1)
    return out


def class_histogram(counts) -> np.ndarray:
    """pbar_sigma(c) = mean_x p_sigma(c|x), shape [S, C] (docs/apex.md, 'Definitions')."""
    return shares(counts).mean(0)


def normalized_entropy(p, axis: int = -1, n_classes: int | None = None) -> np.ndarray:
    """H(p) / log C, with C = ``n_classes`` (default the length of ``axis``; a vocabulary readout
    stores only the outcomes seen, so it passes the vocabulary size)."""
    p = np.asarray(p, dtype=np.float64)
    C = max(int(n_classes or p.shape[axis]), 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis)
    return h / np.log(C)


def _tv(p, q) -> np.ndarray:
    return 0.5 * np.abs(p - q).sum(-1)


def sample_dependence(counts, *, n_sim: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """D(sigma) = mean_x TV(p_sigma(.|x), pbar_sigma) and its Monte Carlo floor (docs/apex.md, 'Definitions').

    The floor is E TV(multinomial(K, pbar)/K, pbar), estimated by ``n_sim`` simulations per sigma:
    the value D takes when every input has the same distribution and only K-pass noise remains.
    """
    c = _counts(counts)
    p = shares(c)
    K = int(c[0, 0].sum())
    pbar = p.mean(0)
    D = _tv(p, pbar[None]).mean(0)
    rng = np.random.default_rng(seed)
    floor = np.empty(len(D))
    for s in range(len(D)):
        q = pbar[s] / pbar[s].sum()
        draws = rng.multinomial(K, q, size=n_sim) / K
        floor[s] = _tv(draws, q[None]).mean()
    return D, floor


def mutual_information(counts, *, n_sim: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in I(x; y_sigma) = H(pbar) - mean_x H(p(.|x)) in nats, and its floor under one shared
    distribution (simulated as in :func:`sample_dependence`)."""
    c = _counts(counts)
    p = shares(c)
    K = int(c[0, 0].sum())
    pbar = p.mean(0)
    H = lambda q: -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0.0).sum(-1)
    I = H(pbar) - H(p).mean(0)
    rng = np.random.default_rng(seed)
    floor = np.empty(len(I))
    n = min(c.shape[0], 500)
    for s in range(len(I)):
        q = pbar[s] / pbar[s].sum()
        draws = rng.multinomial(K, q, size=(n_sim // 10 + 1, n)) / K
        floor[s] = (H(draws.mean(1)) - H(draws).mean(1)).mean()
    return I, floor


def half_way(sigmas, D, floor) -> float:
    """The sigma where D crosses half-way between its first value and its floor (log-interpolated);
    NaN if it never does on the grid."""
    sig = np.asarray(sigmas, float)
    D = np.asarray(D, float)
    target = 0.5 * (D[0] + float(np.mean(np.asarray(floor)[-3:])))
    below = np.nonzero(D < target)[0]
    if len(below) == 0 or below[0] == 0:
        return float("nan")
    i = below[0]
    a, b = sig[i - 1], sig[i]
    t = (D[i - 1] - target) / max(D[i - 1] - D[i], 1e-12)
    if a <= 0:
        return float(a + t * (b - a))
    return float(np.exp(np.log(a) + t * (np.log(b) - np.log(a))))


def logit_margin(logits, y0=None) -> np.ndarray:
    """Clean margin s_y0 - max_{c != y0} s_c (the baseline control; docs/apex.md, 'Definitions')."""
    z = np.asarray(logits, dtype=np.float64)
    y0 = z.argmax(-1) if y0 is None else np.asarray(y0, np.int64)
    top = np.take_along_axis(z, y0[:, None], 1)[:, 0]
    other = z.copy()
    np.put_along_axis(other, y0[:, None], -np.inf, 1)
    return top - other.max(-1)
