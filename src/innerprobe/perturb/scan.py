"""A reference-free APEX backdoor scan (goes past Ren, Luo, Li 2026, arXiv 2602.03586).

Two statistics, both from the model alone and a handful of clean inputs:

* ``method='sink'`` (default): a backdoor target is a *universal sink*: whatever the input,
  noise pushes it to the target first. For each class c, the share of inputs (whose clean class
  is not c) whose escape class (apex.md §2.2) is c, turned into a robust z-score among the
  classes; computed with noise at the input and with noise after the last hidden nonlinearity,
  and the class score is the smaller of the two z's (both views must agree). Chosen on the
  seed-0 digits models; see the apex-backdoor study for held-out results.
* ``method='histogram'``: the large-noise class histogram (the paper's observable), as below.

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


SINK_GRID = tuple(np.geomspace(0.02, 200, 17).tolist())


def sink_scores(model, x, *, sites=("input", "last"), sigmas=SINK_GRID, samples: int = 16, seed: int = 0,
                mad_floor: float = 0.02, chunk_rows: int = 8192):
    """Per site keyword: (share of escapes into each class [C], robust z [C], site strings)."""
    from .readouts import escape_noise

    out = {}
    for w in sites:
        eng = Engine(model, x, sites=scan_sites(model, w), samples=samples, relative=True, seed=seed, chunk_rows=chunk_rows)
        sig = np.asarray(sigmas, float)
        c = eng.counts(sig)
        y0 = eng.y0.numpy()
        e = escape_noise(c, sig, y0)
        ok = e.escape_class >= 0
        share = np.array([float((e.escape_class[ok & (y0 != k)] == k).mean()) if (ok & (y0 != k)).any() else 0.0
                          for k in range(eng.C)])
        out[w] = (share, robust_z(share, mad_floor), [str(r) for r in eng.rsites])
    return out


def backdoor_scan(model, x, *, method: str = "sink", sites=None, sigmas=None, relative: bool = True, samples: int | None = None,
                  threshold: float = 3.5, mad_floor: float = 0.02, seed: int = 0, chunk_rows: int = 8192,
                  class_names=None, model_name: str | None = None) -> Result:
    """Name a suspected backdoor target class from ``model`` and clean inputs ``x``, or none.

    ``method='sink'`` (default; ``sites`` default ('input', 'last'), ``sigmas`` a relative grid) or
    ``'histogram'`` (``sites`` default 'first', ``sigmas`` (4, 16, 64) x RMS).

    Returns a Result (kind ``apex-scan``) with ``data['suspect']`` (class index or None),
    ``data['score']`` (mean robust z of the top class), ``data['top_class']``, and per-sigma class
    shares and z-scores in ``arrays``.
    """
    check(threshold > 0, f"threshold must be > 0, got {threshold}")
    check(method in ("sink", "histogram"), f"unknown scan method {method!r}", "use 'sink' or 'histogram'")
    if method == "sink":
        return _sink_scan(model, x, sites=sites or ("input", "last"), sigmas=SINK_GRID if sigmas is None else sigmas,
                          samples=samples or 16, threshold=threshold, mad_floor=mad_floor, seed=seed, chunk_rows=chunk_rows,
                          class_names=class_names, model_name=model_name)
    sites = sites or "first"
    sigmas = DEFAULT_SIGMAS if sigmas is None else sigmas
    samples = samples or 32
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
    data = {"method": "histogram", "suspect": top if flagged else None, "suspect_name": names[top] if flagged else None, "score": float(score[top]),
            "top_class": top, "threshold": threshold, "sites": [str(r) for r in eng.rsites], "relative": relative,
            "sigmas": sig.tolist(), "K": samples, "n_inputs": int(len(x)), "top_share": hist[:, top].tolist(),
            "runner_up_score": float(np.sort(score)[-2]) if len(score) > 1 else None}
    tables = {"classes": [{"class": names[c], "score": float(score[c]), **{f"share@{s:g}": float(hist[i, c]) for i, s in enumerate(sig)}}
                          for c in range(hist.shape[1])]}
    return Result("apex-scan", data=data, tables=tables, arrays={"histogram": hist, "z": z, "score": score, "sigmas": sig},
                  provenance=provenance(seed=seed, model=model_name or type(model).__name__, sites=data["sites"],
                                        config={"sigmas": sig.tolist(), "relative": relative, "samples": samples,
                                                "threshold": threshold, "mad_floor": mad_floor}))


def _sink_scan(model, x, *, sites, sigmas, samples, threshold, mad_floor, seed, chunk_rows, class_names, model_name) -> Result:
    if isinstance(sites, str):
        sites = (sites,)
    per = sink_scores(model, x, sites=tuple(sites), sigmas=sigmas, samples=samples, seed=seed, mad_floor=mad_floor,
                      chunk_rows=chunk_rows)
    Z = np.stack([per[w][1] for w in sites])  # [sites, C]
    score = Z.min(0)
    top = int(score.argmax())
    flagged = bool(score[top] > threshold)
    C = len(score)
    names = class_names or [str(c) for c in range(C)]
    data = {"method": "sink", "suspect": top if flagged else None, "suspect_name": names[top] if flagged else None,
            "score": float(score[top]), "top_class": top, "threshold": threshold, "sites": {w: per[w][2] for w in sites},
            "relative": True, "sigmas": list(map(float, sigmas)), "K": samples, "n_inputs": int(len(x)),
            "top_share": [float(per[w][0][top]) for w in sites],
            "runner_up_score": float(np.sort(score)[-2]) if C > 1 else None}
    tables = {"classes": [{"class": names[c], "score": float(score[c]), **{f"sink share ({w})": float(per[w][0][c]) for w in sites},
                           **{f"z ({w})": float(per[w][1][c]) for w in sites}} for c in range(C)]}
    return Result("apex-scan", data=data, tables=tables,
                  arrays={"share": np.stack([per[w][0] for w in sites]), "z": Z, "score": score},
                  provenance=provenance(seed=seed, model=model_name or type(model).__name__, sites=list(sites),
                                        config={"method": "sink", "sigmas": list(map(float, sigmas)), "samples": samples,
                                                "threshold": threshold, "mad_floor": mad_floor}))
