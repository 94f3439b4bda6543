"""``apex(model, x, sigmas, ...)``: a resumable APEX sweep returning a :class:`~innerprobe.results.Result`.

The sigma grid is processed in chunks; with ``out=DIR`` each chunk's counts are written to
``DIR/sweep/`` as soon as they exist, next to a manifest of what they were computed from. Running
the same call again (after Ctrl-C or a killed process) loads the finished chunks and computes only
the rest. Because noise is seeded per (sample, site, call), the resumed result is identical to an
uninterrupted one with the same seed.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, check
from ..results import Result, provenance
from . import readouts as ro
from .engine import Engine, check_sigmas

MANIFEST = "manifest.json"


def _chunk_path(folder: Path, i: int) -> Path:
    return folder / f"counts_{i:04d}.npy"


def _save_chunk(folder: Path, i: int, counts: np.ndarray) -> None:
    path = _chunk_path(folder, i)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, counts)
    tmp.replace(path)


def apex(model, x, sigmas, *, samples: int = 64, sites=None, noise="gaussian", relative: bool = False,
         calibration=None, seed: int = 0, chunk_rows: int = 8192, sigma_chunk: int | None = None, out=None,
         prefix: bool = True, tau: float = 0.5, rule: str = "survival", ids=None, labels=None,
         model_name: str | None = None, progress: bool = False, engine: Engine | None = None) -> Result:
    """Run APEX on ``model`` for inputs ``x`` over the increasing grid ``sigmas``.

    Parameters: ``samples`` K noisy passes per input and sigma; ``sites`` noise sites (default:
    after every hidden nonlinearity; ``':input'`` is the model input); ``noise`` 'gaussian' |
    'multiplicative' | 'dropout'; ``relative`` scales sigma by each site's clean activation RMS on
    ``calibration`` (default ``x``); ``seed`` for the common random numbers; ``chunk_rows`` bounds
    rows per forward pass; ``out`` makes the sweep resumable (chunks of ``sigma_chunk`` sigmas).

    Returns a Result of kind ``apex`` whose arrays hold ``counts`` [N, S, C], ``sigmas``, ``y0``,
    ``clean_logits``, ``escape_sigma`` / ``censor`` / ``escape_class`` (apex.md §2.1-2.2),
    ``histogram`` [S, C] (§2.3), ``D`` / ``D_floor`` (§2.4) and ``margin`` (clean logit margin).
    """
    t0 = time.perf_counter()
    eng = engine or Engine(model, x, sites=sites, noise=noise, samples=samples, relative=relative,
                           calibration=calibration, seed=seed, chunk_rows=chunk_rows, prefix=prefix, ids=ids)
    sig = check_sigmas(sigmas, kind=eng.kind)
    S = len(sig)
    if sigma_chunk is None:
        sigma_chunk = S if out is None else max(1, math.ceil(S / 8))
    check(isinstance(sigma_chunk, int) and sigma_chunk >= 1, f"sigma_chunk must be a positive integer, got {sigma_chunk!r}")
    chunks = [(i, list(range(a, min(S, a + sigma_chunk)))) for i, a in enumerate(range(0, S, sigma_chunk))]
    folder = None
    if out is not None:
        folder = Path(out) / "sweep"
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {**eng.fingerprint(), "sigmas": sig.tolist(), "sigma_chunk": sigma_chunk}
        mpath = folder / MANIFEST
        if mpath.exists():
            old = json.loads(mpath.read_text())
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise ConfigError(f"{folder} holds a sweep with different settings ({', '.join(diff)})",
                                  hint="use a new --out folder, or delete the old one to start over")
        else:
            mpath.write_text(json.dumps(manifest, indent=1))
    counts = np.zeros((len(eng.x), S, eng.C), dtype=np.int64)
    resumed = 0
    todo = []
    for i, idx in chunks:
        if folder is not None and _chunk_path(folder, i).exists():
            counts[:, idx] = np.load(_chunk_path(folder, i))
            resumed += 1
        else:
            todo.append((i, idx))
    if progress and todo:
        from ..progress import track

        todo_iter = track(todo, "APEX sweep", total=len(todo))
    else:
        todo_iter = todo
    for i, idx in todo_iter:
        c = eng.counts(sig[idx])
        counts[:, idx] = c
        if folder is not None:
            _save_chunk(folder, i, c)
    seconds = time.perf_counter() - t0
    res = summarize(counts, sig, eng.y0.numpy(), eng.clean_logits.float().numpy(), tau=tau, rule=rule,
                    labels=labels)
    res.data.update({
        "K": eng.K, "noise": eng.kind.name, "relative": eng.relative, "seed": eng.seed,
        "sites": [str(r) for r in eng.rsites], "site_rms": {str(r): v for r, v in zip(eng.rsites, eng.rms)},
        "prefix_reuse": eng.split is not None, "prefix_children": eng.split, "seconds": seconds,
        "resumed_chunks": resumed, "chunks": len(chunks),
    })
    res.provenance = provenance(seed=eng.seed, model=model_name or type(eng.model).__name__, sites=res.data["sites"],
                                config={"samples": eng.K, "noise": eng.kind.name, "relative": eng.relative, "tau": tau,
                                        "rule": rule, "chunk_rows": eng.chunk_rows, "sigma_chunk": sigma_chunk,
                                        "sigmas": sig.tolist()})
    if out is not None:
        res.save(Path(out) / "apex.json")
    return res


def summarize(counts, sigmas, y0, clean_logits=None, *, tau: float = 0.5, rule: str = "survival", labels=None) -> Result:
    """Every read-out of apex.md §2 from counts [N, S, C]; a Result of kind ``apex``."""
    counts = np.asarray(counts)
    sig = np.asarray(sigmas, float)
    esc = ro.escape_noise(counts, sig, y0, tau=tau, rule=rule)
    hist = ro.class_histogram(counts)
    D, floor = ro.sample_dependence(counts)
    arrays = {"counts": counts, "sigmas": sig, "y0": np.asarray(y0), "escape_sigma": esc.sigma, "censor": esc.censor,
              "escape_index": esc.index, "escape_class": esc.escape_class, "histogram": hist, "D": D, "D_floor": floor}
    data = {"N": int(counts.shape[0]), "S": int(counts.shape[1]), "C": int(counts.shape[2]), "tau": tau, "rule": rule,
            **esc.rates()}
    uncens = esc.censor == 0
    data["median_escape_sigma"] = float(np.median(esc.sigma)) if (esc.censor != 0).mean() <= 0.5 else None
    data["half_way_sigma"] = ro.half_way(sig, D, floor)
    data["large_noise_argmax_class"] = int(hist[-1].argmax())
    data["large_noise_entropy"] = float(ro.normalized_entropy(hist[-1]))
    data["uncensored"] = int(uncens.sum())
    if clean_logits is not None:
        arrays["clean_logits"] = np.asarray(clean_logits)
        arrays["margin"] = ro.logit_margin(clean_logits, y0)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    tables = {"sigma": [{"sigma": float(s), "D": float(d), "D_floor": float(f), "histogram_entropy": float(ro.normalized_entropy(h)),
                         "argmax_class": int(h.argmax()), "mean_survival": float(ro.survival(counts[:, i:i + 1], y0).mean())}
                        for i, (s, d, f, h) in enumerate(zip(sig, D, floor, hist))]}
    return Result("apex", data=data, tables=tables, arrays=arrays)


def escape_bisect(model, x, sigmas, *, steps: int = 6, samples: int = 64, sites=None, noise="gaussian",
                  relative: bool = False, seed: int = 0, chunk_rows: int = 8192, tau: float = 0.5,
                  rule: str = "survival", engine: Engine | None = None) -> ro.Escape:
    """Escape noise by bisection (apex.md §2.1 option): bracket each input on the coarse grid
    ``sigmas``, then ``steps`` geometric-midpoint bisections, all inputs in parallel (per-row sigma),
    K fresh-seeded passes per step (common random numbers across steps). The escape class is read at
    the final upper bracket."""
    eng = engine or Engine(model, x, sites=sites, noise=noise, samples=samples, relative=relative, seed=seed,
                           chunk_rows=chunk_rows, noise_cache_mb=512)
    sig = check_sigmas(sigmas, kind=eng.kind)
    check(isinstance(steps, int) and steps >= 0, f"steps must be a non-negative integer, got {steps!r}")
    y0 = eng.y0.numpy()
    coarse = eng.counts(sig)
    esc = ro.escape_noise(coarse, sig, y0, tau=tau, rule=rule, refine="none")
    mid = esc.censor == 0
    lo = np.where(mid, sig[np.maximum(esc.index - 1, 0)], np.nan)
    hi = np.where(mid, sig[np.maximum(esc.index, 0)], np.nan)
    last_counts = coarse[np.arange(len(y0)), np.maximum(esc.index, 0)][:, None]  # [N, 1, C]
    N = len(y0)
    for _ in range(steps):
        if not mid.any():
            break
        m = np.where(lo > 0, np.sqrt(np.where(mid, lo * hi, 1.0)), hi / 2)
        m = np.where(mid, m, sig[0])
        c = eng.counts(m[:, None])
        f = ro._margin_curve(c, y0, rule, tau)[:, 0]
        gone = f < 0
        hi = np.where(mid & gone, m, hi)
        lo = np.where(mid & ~gone, m, lo)
    out = esc.sigma.copy()
    out[mid] = np.where(lo[mid] > 0, np.sqrt(lo[mid] * hi[mid]), hi[mid] / 2)
    if mid.any():
        final = eng.counts(np.where(mid, hi, sig[0])[:, None])
        last_counts = np.where(mid[:, None, None], final, last_counts)
    cls = ro.escape_class(last_counts, y0, np.where(esc.censor == 1, -1, 0))
    del N
    return ro.Escape(out, esc.censor, esc.index, cls)


def escape_early_exit(model, x, sigmas, *, samples: int = 64, sites=None, noise="gaussian", relative: bool = False,
                      seed: int = 0, chunk_rows: int = 8192, tau: float = 0.5, rule: str = "survival", sigma_chunk: int = 1,
                      noise_cache_mb: float = 512, engine: Engine | None = None) -> ro.Escape:
    """Escape noise only, with early exit (apex.md §4.4): the grid is walked upwards ``sigma_chunk``
    sigmas at a time and an input leaves the batch once its crossing and the sigma after it (for the
    escape-class tie-break) are known. Identical to :func:`escape_noise` on a full sweep with the same seed."""
    eng = engine or Engine(model, x, sites=sites, noise=noise, samples=samples, relative=relative, seed=seed, chunk_rows=chunk_rows,
                           noise_cache_mb=noise_cache_mb)
    sig = check_sigmas(sigmas, kind=eng.kind)
    N, S = len(eng.x), len(sig)
    y0 = eng.y0.numpy()
    counts = np.zeros((N, S, eng.C), dtype=np.int64)
    alive = np.arange(N)
    done_upto = np.full(N, -1)
    for a in range(0, S, sigma_chunk):
        if len(alive) == 0:
            break
        b = min(S, a + sigma_chunk)
        counts[alive, a:b] = eng.counts(sig[a:b], subset=alive)
        done_upto[alive] = b - 1
        f = ro._margin_curve(counts[alive, : b], y0[alive], rule, tau)
        below = f < 0
        first = np.where(below.any(1), below.argmax(1), S)
        alive = alive[~(first + 1 <= b - 1) & ~((first == S - 1) & (b == S))]
    # inputs still alive at the end never crossed or crossed at the very end: their rows are complete
    esc = ro.escape_noise(counts, sig, y0, tau=tau, rule=rule)
    return esc
