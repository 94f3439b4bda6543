"""Shared pieces of the APEX studies: zoo loading, cached APEX runs, headline rows (docs/apex.md, docs/results.md)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..core.stats import CI, t_interval
from ..results import Result, provenance, row

#: default absolute grid (the pilot's geomspace(0.02, 20, 31), docs/apex.md), widened for BatchNorm CNNs
GRID = np.geomspace(0.02, 50, 31)
GRID_QUICK = np.geomspace(0.02, 50, 16)


def available(name: str, seed: int = 0, **overrides) -> bool:
    """False only when INNERPROBE_APEX_SKIP_UNCACHED=1 and a Fashion-MNIST model is not in the zoo cache
    (to run the full studies without hours of CPU training; the skip is reported in the study's section)."""
    import os

    if os.environ.get("INNERPROBE_APEX_SKIP_UNCACHED") != "1" or not name.startswith("fashion"):
        return True
    from .. import zoo

    return zoo.status(name, seed, **overrides)[0] == "cached"


def load(name: str, seed: int, **overrides):
    from .. import zoo

    return zoo.load(name, seed=seed, progress=False, **overrides)


def data(name: str, seed: int, **overrides):
    from .. import zoo

    return zoo.recipe_data(name, seed=seed, **overrides)


def _cache_dir() -> Path:
    from ..zoo import cache_root

    d = Path(cache_root()) / "apex-runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_apex(
    name: str,
    seed: int,
    x,
    sigmas,
    *,
    samples: int = 32,
    sites=None,
    relative: bool = False,
    tag: str = "",
    overrides: dict | None = None,
    crn_seed: int = 0,
    ids=None,
):
    """APEX counts for zoo model ``name``/``seed`` on inputs ``x``; cached on disk by everything that
    determines them (the model's card fingerprint, the inputs, grid, K, sites, noise seed).
    Returns a dict with counts, y0, clean_logits, site_rms, sites, seconds (of the original run)."""
    import torch

    from ..perturb import Engine

    overrides = overrides or {}
    model, card = load(name, seed, **overrides)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                name,
                seed,
                overrides,
                card.get("fingerprint"),
                list(map(float, sigmas)),
                samples,
                sites,
                relative,
                crn_seed,
                tag,
                None if ids is None else list(map(int, ids)),
            ],
            default=str,
        ).encode()
    )
    h.update(np.ascontiguousarray(x.numpy()).tobytes())
    path = _cache_dir() / f"{h.hexdigest()[:24]}.npz"
    if path.exists():
        try:
            z = np.load(path, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            return {"counts": z["counts"], "y0": z["y0"], "clean_logits": z["clean_logits"], **meta}
        except Exception:
            path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    eng = Engine(model, x, sites=sites, samples=samples, relative=relative, seed=crn_seed, ids=ids)
    counts = eng.counts(np.asarray(sigmas, float))
    meta = {
        "site_rms": [float(r) for r in eng.rms],
        "sites": [str(r) for r in eng.rsites],
        "seconds": time.perf_counter() - t0,
    }
    out = {"counts": counts, "y0": eng.y0.numpy(), "clean_logits": eng.clean_logits.float().numpy(), **meta}
    tmp = path.with_name(path.stem + f".{time.time_ns()}.tmp.npz")
    np.savez_compressed(tmp, counts=counts, y0=out["y0"], clean_logits=out["clean_logits"], meta=json.dumps(meta))
    tmp.replace(path)
    del torch
    return out


class Rows:
    """Headline records of a study (:func:`innerprobe.results.row`): one per metric, model and condition.

    ``add(metric, per_seed, seeds, ...)`` gives the mean and a t-interval over seeds
    (:func:`innerprobe.core.stats.t_interval`; one seed: no interval) unless ``ci`` (a
    :class:`~innerprobe.core.stats.CI`, e.g. a bootstrap over inputs) is passed; the per-seed values
    are kept in the row's ``per_seed`` field.
    """

    def __init__(self):
        self.rows: list[dict] = []

    def add(
        self,
        metric: str,
        per_seed,
        seeds,
        *,
        model: str | None = None,
        condition: dict | None = None,
        ci: CI | None = None,
        **extra,
    ) -> dict:
        vals = [None if v is None or not np.isfinite(v) else float(v) for v in per_seed]
        value = ci if ci is not None else t_interval(vals, nan_policy="omit")
        r = row(metric, value, model=model, condition=condition, seeds=list(seeds), per_seed=vals, **extra)
        self.rows.append(r)
        return r


def finish(
    out: Path,
    kind: str,
    heads: Rows,
    section,
    *,
    data: dict | None = None,
    tables: dict | None = None,
    arrays: dict | None = None,
    seeds=None,
    config: dict | None = None,
):
    """Write summary.json (``{"rows": [...]}`` + tables + config) and section.json; return the Result."""
    section.rows = heads.rows
    section.save(out)
    res = Result(
        kind,
        rows=heads.rows,
        data={**(data or {}), "seeds": list(seeds or [])},
        tables=tables or {},
        arrays=arrays or {},
        provenance=provenance(seed=None if not seeds else list(seeds)[0], model=kind, config=config or {}),
    )
    res.save(out / "summary.json")
    return res


def mean_rms(run: dict) -> float:
    return float(np.mean(run["site_rms"]))
