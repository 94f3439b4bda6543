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
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, check
from ..results import Result, provenance
from . import readouts as ro
from .engine import NONFINITE, Engine, check_sigmas

MANIFEST = "manifest.json"


def _chunk_path(folder: Path, i: int) -> Path:
    return folder / f"counts_{i:04d}.npz"


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and an atomic rename: a kill leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_chunk(folder: Path, i: int, counts: np.ndarray, classes: list[int]) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, counts=counts, classes=np.asarray(classes, dtype=np.int64))

    _atomic_write(_chunk_path(folder, i), write)


def _read_manifest(path: Path) -> dict:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"sweep manifest {path} is unreadable ({type(e).__name__}: truncated or not JSON)",
            hint=f"delete {path.parent} to start the sweep over, or use a new --out folder",
        ) from None
    if not isinstance(old, dict):
        raise DataError(
            f"sweep manifest {path} holds a JSON {type(old).__name__}, not an object",
            hint=f"delete {path.parent} to start the sweep over",
        )
    return old


def _prepare_folder(out, eng: Engine, sig: np.ndarray, sigma_chunk: int) -> Path:
    folder = Path(out) / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {**eng.fingerprint(), "sigmas": sig.tolist(), "sigma_chunk": sigma_chunk}
    mpath = folder / MANIFEST
    if mpath.exists():
        old = _read_manifest(mpath)
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ConfigError(
                f"{folder} holds a sweep with different settings ({', '.join(diff)})",
                hint="use a new --out folder, or delete the old one to start over",
            )
    else:
        _atomic_write(mpath, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
    return folder


def _load_chunk(path: Path, eng: Engine, n_sigmas: int) -> np.ndarray:
    """A saved chunk remapped onto the engine's outcome columns; refuses a chunk of the wrong shape."""
    try:
        with np.load(path, allow_pickle=False) as z:
            counts, classes = z["counts"], z["classes"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(
            f"sweep chunk {path} is unreadable ({type(e).__name__})", hint=f"delete {path} to recompute it"
        ) from None
    N, K = len(eng.x), eng.K
    ok = (
        counts.ndim == 3
        and counts.shape[:2] == (N, n_sigmas)
        and classes.ndim == 1
        and len(classes) == counts.shape[2]
        and np.issubdtype(counts.dtype, np.integer)
        and bool((counts >= 0).all())
        and bool((counts.sum(-1) == K).all())
    )
    if not ok:
        raise DataError(
            f"sweep chunk {path} has counts of shape {counts.shape} (K sums {np.unique(counts.sum(-1))[:3].tolist()}), "
            f"expected [{N}, {n_sigmas}, C] summing to K = {K}",
            hint=f"delete {path} to recompute it",
        )
    codes = torch.as_tensor(np.where(classes == NONFINITE, eng.C, classes))
    if bool(((codes < 0) | (codes > eng.C)).any()):
        raise DataError(f"sweep chunk {path} names classes outside [0, {eng.C})", hint=f"delete {path} to recompute it")
    cols = eng.columns(codes).numpy()
    out = np.zeros((N, n_sigmas, eng.n_outcomes), dtype=np.int64)
    out[:, :, cols] = counts
    return out


def canonical(counts: np.ndarray, classes, y0_token) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns sorted by class id, the non-finite outcome last: (counts, classes, y0 as column index)."""
    cls = np.asarray(classes, dtype=np.int64)
    key = np.where(cls == NONFINITE, np.iinfo(np.int64).max, cls)
    order = np.argsort(key, kind="stable")
    cls = cls[order]
    y0 = np.searchsorted(np.where(cls == NONFINITE, np.iinfo(np.int64).max, cls), np.asarray(y0_token, np.int64))
    return counts[..., order], cls, y0


def apex(
    model,
    x,
    sigmas,
    *,
    samples: int = 64,
    sites=None,
    noise="gaussian",
    relative: bool = False,
    calibration=None,
    seed: int = 0,
    chunk_rows: int | None = None,
    sigma_chunk: int | None = None,
    out=None,
    prefix: bool = True,
    tau: float = 0.5,
    rule: str = "survival",
    ids=None,
    labels=None,
    model_name: str | None = None,
    progress: bool = False,
    engine: Engine | None = None,
    readout=None,
    position=None,
    tokens=None,
) -> Result:
    """Run APEX on ``model`` for inputs ``x`` over the increasing grid ``sigmas``.

    Parameters: ``samples`` K noisy passes per input and sigma; ``sites`` noise sites (default:
    after every hidden nonlinearity, module or functional; ``'residual'``; ``':input'`` is the
    model input, the token embedding for token ids); ``noise`` 'gaussian' | 'multiplicative' |
    'dropout'; ``relative`` scales sigma by each site's clean activation RMS on ``calibration``
    (default ``x``); ``seed`` for the common random numbers; ``chunk_rows`` bounds rows per forward
    pass; ``out`` makes the sweep resumable (chunks of ``sigma_chunk`` sigmas). ``readout`` or
    ``position`` / ``tokens`` choose what is counted on a language model (docs/apex.md).

    Returns a Result of kind ``apex`` whose arrays hold ``counts`` [N, S, C'] over the outcome
    columns ``classes`` (class or token ids; -2 = non-finite logits), ``sigmas``, ``y0`` (column of
    the clean prediction), ``y0_class``, ``clean_logits``, ``escape_sigma`` / ``censor`` /
    ``escape_class``, ``histogram`` [S, C'], ``D`` / ``D_floor`` (docs/apex.md, 'Definitions')
    and ``margin`` (clean logit margin).
    """
    t0 = time.perf_counter()
    eng = engine or Engine(
        model,
        x,
        sites=sites,
        noise=noise,
        samples=samples,
        relative=relative,
        calibration=calibration,
        seed=seed,
        chunk_rows=chunk_rows,
        prefix=prefix,
        ids=ids,
        readout=readout,
        position=position,
        tokens=tokens,
    )
    sig = check_sigmas(sigmas, kind=eng.kind)
    S = len(sig)
    if sigma_chunk is None:
        sigma_chunk = S if out is None else max(1, math.ceil(S / 8))
    check(
        isinstance(sigma_chunk, int) and sigma_chunk >= 1,
        f"sigma_chunk must be a positive integer, got {sigma_chunk!r}",
    )
    chunks = [(i, list(range(a, min(S, a + sigma_chunk)))) for i, a in enumerate(range(0, S, sigma_chunk))]
    folder = None if out is None else _prepare_folder(out, eng, sig, sigma_chunk)
    parts: dict[int, np.ndarray] = {}
    todo = []
    for i, idx in chunks:
        if folder is not None and _chunk_path(folder, i).exists():
            parts[i] = _load_chunk(_chunk_path(folder, i), eng, len(idx))
        else:
            todo.append((i, idx))
    resumed = len(parts)
    todo_iter = todo
    if progress and todo:
        from ..progress import track

        todo_iter = track(todo, "APEX sweep", total=len(todo))
    for i, idx in todo_iter:
        parts[i] = eng.counts(sig[idx])
        if folder is not None:
            _save_chunk(folder, i, parts[i], eng.classes[: parts[i].shape[-1]])
    counts = np.concatenate([eng.pad(parts[i]) for i, _ in chunks], axis=1)
    counts, classes, y0 = canonical(counts, eng.classes, eng.y0_token.numpy())
    seconds = time.perf_counter() - t0
    logits = eng.clean_logits.float().numpy() if eng.C <= 4096 else None
    res = summarize(
        counts,
        sig,
        y0,
        logits,
        tau=tau,
        rule=rule,
        labels=labels,
        classes=classes,
        n_classes=eng.C,
        y0_class=eng.y0_token.numpy(),
    )
    res.data.update(
        {
            "K": eng.K,
            "noise": eng.kind.name,
            "relative": eng.relative,
            "seed": eng.seed,
            "readout": eng.readout.describe(),
            "sites": [str(r) for r in eng.rsites],
            "site_rms": {str(r): v for r, v in zip(eng.rsites, eng.rms)},
            "prefix_reuse": eng.split is not None,
            "prefix_children": eng.split,
            "seconds": seconds,
            "resumed_chunks": resumed,
            "chunks": len(chunks),
            "chunk_rows": eng.chunk_rows,
        }
    )
    if logits is None:
        res.arrays["margin"] = ro.logit_margin(eng.clean_logits.double().numpy(), eng.y0_token.numpy())
    res.provenance = provenance(
        seed=eng.seed,
        model=model_name or type(eng.model).__name__,
        sites=res.data["sites"],
        config={
            "samples": eng.K,
            "noise": eng.kind.name,
            "relative": eng.relative,
            "tau": tau,
            "rule": rule,
            "chunk_rows": eng.chunk_rows,
            "sigma_chunk": sigma_chunk,
            "sigmas": sig.tolist(),
            "readout": eng.readout.describe(),
        },
    )
    if out is not None:
        res.save(Path(out) / "apex.json")
    return res


def summarize(
    counts,
    sigmas,
    y0,
    clean_logits=None,
    *,
    tau: float = 0.5,
    rule: str = "survival",
    labels=None,
    classes=None,
    n_classes: int | None = None,
    y0_class=None,
) -> Result:
    """Every read-out of docs/apex.md, 'Definitions' from counts [N, S, C']; a Result of kind ``apex``.

    ``y0`` is the clean prediction's column; ``classes`` the class id of each column (default
    0..C'-1; ``NONFINITE`` = -2 for passes with non-finite logits); ``n_classes`` the readout's
    number of classes (the entropy's log base; a vocabulary readout stores only the columns seen).
    """
    counts = np.asarray(counts)
    sig = np.asarray(sigmas, float)
    cls = np.arange(counts.shape[2]) if classes is None else np.asarray(classes, dtype=np.int64)
    esc = ro.escape_noise(counts, sig, y0, tau=tau, rule=rule)
    hist = ro.class_histogram(counts)
    D, floor = ro.sample_dependence(counts)
    nonfinite = (
        counts[..., cls == NONFINITE].sum(-1) if (cls == NONFINITE).any() else np.zeros(counts.shape[:2], np.int64)
    )
    K = max(int(counts[0, 0].sum()), 1)
    esc_cls = np.where(esc.escape_class >= 0, cls[np.maximum(esc.escape_class, 0)], -1)
    arrays = {
        "counts": counts,
        "sigmas": sig,
        "y0": np.asarray(y0),
        "classes": cls,
        "escape_sigma": esc.sigma,
        "censor": esc.censor,
        "escape_index": esc.index,
        "escape_class": esc_cls,
        "histogram": hist,
        "D": D,
        "D_floor": floor,
        "nonfinite": nonfinite,
    }
    if y0_class is not None:
        arrays["y0_class"] = np.asarray(y0_class)
    C = max(int(n_classes or counts.shape[2]), 2)
    top = int(hist[-1].argmax())
    data = {
        "N": int(counts.shape[0]),
        "S": int(counts.shape[1]),
        "C": int(n_classes or counts.shape[2]),
        "tau": tau,
        "rule": rule,
        **esc.rates(),
    }
    data["median_escape_sigma"] = float(np.median(esc.sigma)) if (esc.censor != 0).mean() <= 0.5 else None
    data["half_way_sigma"] = ro.half_way(sig, D, floor)  # NaN when D never crosses half-way on the grid
    data["large_noise_argmax_class"] = int(cls[top])
    data["large_noise_argmax_share"] = float(hist[-1, top])
    data["large_noise_argmax_is_nonfinite"] = bool(cls[top] == NONFINITE)
    data["large_noise_entropy"] = float(ro.normalized_entropy(hist[-1], n_classes=C))
    data["uncensored"] = int((esc.censor == 0).sum())
    data["nonfinite_passes"] = int(nonfinite.sum())
    data["nonfinite_share_max"] = float(nonfinite.mean(0).max() / K)
    if clean_logits is not None:
        arrays["clean_logits"] = np.asarray(clean_logits)
        arrays["margin"] = ro.logit_margin(clean_logits, y0 if y0_class is None else y0_class)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    tables = {
        "sigma": [
            {
                "sigma": float(s),
                "D": float(d),
                "D_floor": float(f),
                "histogram_entropy": float(ro.normalized_entropy(h, n_classes=C)),
                "argmax_class": int(cls[int(h.argmax())]),
                "mean_survival": float(ro.survival(counts[:, i : i + 1], y0).mean()),
                "nonfinite_share": float(nonfinite[:, i].mean() / K),
            }
            for i, (s, d, f, h) in enumerate(zip(sig, D, floor, hist))
        ]
    }
    return Result("apex", data=data, tables=tables, arrays=arrays)


def escape_bisect(
    model,
    x,
    sigmas,
    *,
    steps: int = 6,
    samples: int = 64,
    sites=None,
    noise="gaussian",
    relative: bool = False,
    seed: int = 0,
    chunk_rows: int = 8192,
    tau: float = 0.5,
    rule: str = "survival",
    engine: Engine | None = None,
) -> ro.Escape:
    """Escape noise by bisection (an option in docs/apex.md, 'Definitions'): bracket each input on the coarse grid
    ``sigmas``, then ``steps`` geometric-midpoint bisections, all inputs in parallel (per-row sigma),
    K fresh-seeded passes per step (common random numbers across steps). The escape class is read at
    the final upper bracket."""
    eng = engine or Engine(
        model,
        x,
        sites=sites,
        noise=noise,
        samples=samples,
        relative=relative,
        seed=seed,
        chunk_rows=chunk_rows,
        noise_cache_mb=512,
    )
    sig = check_sigmas(sigmas, kind=eng.kind)
    check(isinstance(steps, int) and steps >= 0, f"steps must be a non-negative integer, got {steps!r}")
    coarse = eng.counts(sig)
    y0 = eng.y0.numpy()  # the clean prediction's column in the counts
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
        last_counts = np.where(mid[:, None, None], final, eng.pad(last_counts))
    cls = ro.escape_class(last_counts, y0, np.where(esc.censor == 1, -1, 0))
    del N
    return ro.Escape(out, esc.censor, esc.index, cls)


def escape_early_exit(
    model,
    x,
    sigmas,
    *,
    samples: int = 64,
    sites=None,
    noise="gaussian",
    relative: bool = False,
    seed: int = 0,
    chunk_rows: int = 8192,
    tau: float = 0.5,
    rule: str = "survival",
    sigma_chunk: int = 1,
    noise_cache_mb: float = 512,
    engine: Engine | None = None,
) -> ro.Escape:
    """Escape noise only, with early exit (docs/apex.md, 'How it is computed'): grid is walked upwards ``sigma_chunk``
    sigmas at a time and an input leaves the batch once its crossing and the sigma after it (for the
    escape-class tie-break) are known. Identical to :func:`escape_noise` on a full sweep with the same seed."""
    eng = engine or Engine(
        model,
        x,
        sites=sites,
        noise=noise,
        samples=samples,
        relative=relative,
        seed=seed,
        chunk_rows=chunk_rows,
        noise_cache_mb=noise_cache_mb,
    )
    sig = check_sigmas(sigmas, kind=eng.kind)
    N, S = len(eng.x), len(sig)
    y0 = eng.y0.numpy()  # the clean prediction's column in the counts
    counts = np.zeros((N, S, eng.n_outcomes), dtype=np.int64)
    alive = np.arange(N)
    done_upto = np.full(N, -1)
    for a in range(0, S, sigma_chunk):
        if len(alive) == 0:
            break
        b = min(S, a + sigma_chunk)
        part = eng.counts(sig[a:b], subset=alive)
        counts = eng.pad(counts)  # new outcome columns (a vocabulary readout, non-finite passes) widen the table
        counts[alive, a:b] = part
        done_upto[alive] = b - 1
        f = ro._margin_curve(counts[alive, :b], y0[alive], rule, tau)
        below = f < 0
        first = np.where(below.any(1), below.argmax(1), S)
        alive = alive[~(first + 1 <= b - 1) & ~((first == S - 1) & (b == S))]
    # inputs still alive at the end never crossed or crossed at the very end: their rows are complete
    esc = ro.escape_noise(counts, sig, y0, tau=tau, rule=rule)
    return esc
