"""A reference-free APEX backdoor scan (goes past Ren, Luo, Li 2026, arXiv 2602.03586).

The paper reports that at large noise a backdoored model's predictions concentrate on its target
class (apex.md §2.3, claim D). The scan asks that question of the model alone, with a handful of
clean inputs and no clean reference model: it computes the large-noise class histogram
pbar_sigma(c) for a few large sigmas (relative to each site's clean RMS, so the scale carries over
between models), turns each class's share into a robust z-score among the classes
(z_c = (share_c - median) / (1.4826 MAD), MAD floored at ``mad_floor``), averages z over sigmas
and names the top class when its score exceeds ``threshold``.

Where the noise enters matters (apex.md §5 D: strongest at the first hidden layer, gone with
last-layer-only noise); ``sites`` picks it: ``'first'`` (first hidden nonlinearity, default),
``'input'``, ``'all'`` (every hidden nonlinearity), or any site spec.
"""
from __future__ import annotations

import numpy as np

from ..errors import check
from ..results import Result, provenance
from . import readouts as ro
from .engine import Engine, default_sites

DEFAULT_SIGMAS = (4.0, 16.0, 64.0)


def scan_sites(model, which):
    """Resolve the scan's site keyword ('first', 'input', 'all', 'last') or pass a spec through."""
    if which == "first":
        return [default_sites(model)[0]]
    if which == "last":
        return [default_sites(model)[-1]]
    if which == "all":
        return None
    if which == "input":
        return [":input"]
    return which


def robust_z(shares, mad_floor: float = 0.02) -> np.ndarray:
    """(share - median) / max(1.4826 * MAD, mad_floor) along the last axis."""
    s = np.asarray(shares, float)
    med = np.median(s, -1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(s - med), -1, keepdims=True)
    return (s - med) / np.maximum(mad, mad_floor)


def backdoor_scan(model, x, *, sites="first", sigmas=DEFAULT_SIGMAS, relative: bool = True, samples: int = 32,
                  threshold: float = 3.5, mad_floor: float = 0.02, seed: int = 0, chunk_rows: int = 8192,
                  class_names=None, model_name: str | None = None) -> Result:
    """Name a suspected backdoor target class from ``model`` and clean inputs ``x``, or none.

    Returns a Result (kind ``apex-scan``) with ``data['suspect']`` (class index or None),
    ``data['score']`` (mean robust z of the top class), ``data['top_class']``, and per-sigma class
    shares and z-scores in ``arrays``.
    """
    check(threshold > 0, f"threshold must be > 0, got {threshold}")
    spec = scan_sites(model, sites)
    eng = Engine(model, x, sites=spec, samples=samples, relative=relative, seed=seed, chunk_rows=chunk_rows)
    sig = np.asarray(sigmas, float)
    counts = eng.counts(sig)
    hist = ro.class_histogram(counts)  # [S, C]
    z = robust_z(hist, mad_floor)
    score = z.mean(0)
    top = int(score.argmax())
    flagged = bool(score[top] > threshold)
    names = class_names or [str(c) for c in range(hist.shape[1])]
    data = {"suspect": top if flagged else None, "suspect_name": names[top] if flagged else None, "score": float(score[top]),
            "top_class": top, "threshold": threshold, "sites": [str(r) for r in eng.rsites], "relative": relative,
            "sigmas": sig.tolist(), "K": samples, "n_inputs": int(len(x)), "top_share": hist[:, top].tolist(),
            "runner_up_score": float(np.sort(score)[-2]) if len(score) > 1 else None}
    tables = {"classes": [{"class": names[c], "score": float(score[c]), **{f"share@{s:g}": float(hist[i, c]) for i, s in enumerate(sig)}}
                          for c in range(hist.shape[1])]}
    return Result("apex-scan", data=data, tables=tables, arrays={"histogram": hist, "z": z, "score": score, "sigmas": sig},
                  provenance=provenance(seed=seed, model=model_name or type(model).__name__, sites=data["sites"],
                                        config={"sigmas": sig.tolist(), "relative": relative, "samples": samples,
                                                "threshold": threshold, "mad_floor": mad_floor}))
