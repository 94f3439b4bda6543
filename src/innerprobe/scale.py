"""Scale-out: an APEX sweep, all-edge path patching and studies as lists of tasks (docs/scale.md).

Each function here cuts one long run into pure tasks (:mod:`innerprobe.core.tasks`), runs them on the
executor asked for (``local`` in-process or ``--workers N`` processes, or ``ray``), and merges the shards
exactly:

* **APEX** (Ren, Luo, Li 2026; docs/apex.md): shards of inputs. The noise of input ``i`` is seeded by its
  global index (common random numbers per sample, docs/apex.md), so counts do not depend on the sharding;
  relative sigma is calibrated on the whole batch, as in one process. Shard counts are aligned on the union
  of outcome columns and concatenated, then every read-out is computed once from the merged counts.
* **All-edge patching** (Goldowsky-Dill et al. 2023; docs/patching.md): shards of edges; each effect is the
  exact single-edge patch, so shards concatenate in edge order.
* **Studies**: one task per study, each writing its own folder.

A model given by its spec (zoo name, ``file.py:factory``, HF folder) is loaded once per worker; a model
object is sent once per worker. Results are identical whatever the executor, the number of workers or the
order in which tasks finish; with ``store`` a rerun skips finished tasks.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .core.tasks import Shared, Store, Task, array_hash, module_hash, run_tasks
from .errors import ConfigError

#: Options of :func:`innerprobe.perturb.apex` a shard task passes on (JSON-able ones only).
APEX_OPTIONS = (
    "samples",
    "sites",
    "noise",
    "relative",
    "seed",
    "chunk_rows",
    "prefix",
    "tau",
    "rule",
    "position",
    "tokens",
)
_MODELS: dict[str, nn.Module] = {}
_RUNS: dict[tuple, tuple] = {}


def _model_ref(model, weights=None) -> tuple[dict, dict]:
    """(identifying args, shared payload) for a model spec or object; specs are loaded in the workers."""
    if isinstance(model, nn.Module):
        return {"hash": module_hash(model)}, {"model": model}
    if not isinstance(model, str):
        raise ConfigError(f"model must be an nn.Module or a model spec string, got {type(model).__name__}")
    from .zoo.loading import load_model

    net = load_model(model, weights)
    ref = {"spec": model, "weights": None if weights is None else str(weights), "hash": module_hash(net)}
    return ref, {"model": net}


def _model(ref: dict, shared_model: nn.Module | None) -> nn.Module:
    """The model of a task: the shared object, or the spec loaded once per worker process."""
    if "spec" not in ref:
        return shared_model
    key = f"{ref['spec']}|{ref['weights']}|{ref['hash']}"
    if key not in _MODELS:
        from .zoo.loading import load_model

        _MODELS[key] = load_model(ref["spec"], ref["weights"])
    return _MODELS[key]


#: Edges per task unless ``shard`` says otherwise: fixed, so that results do not depend on the number of workers
#: (edge effects batch edges; float rounding depends on the batch, so other shard sizes agree to ~1e-7).
EDGE_SHARD = 32


def _shards(n: int, shard: int | None, workers: int | None) -> list[tuple[int, int]]:
    """Row ranges of ``shard`` each (default for inputs: four tasks per worker; counts do not depend on it)."""
    if shard is None:
        shard = max(1, math.ceil(n / (4 * (workers or 1))))
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 1:
        raise ConfigError(f"shard must be a positive whole number, got {shard!r}")
    return [(a, min(n, a + shard)) for a in range(0, n, shard)]


# ----------------------------------------------------------------------------- APEX
def apex(
    model,
    x,
    sigmas,
    *,
    weights=None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    store=None,
    shard: int | None = None,
    ids=None,
    labels=None,
    model_name: str | None = None,
    progress: bool | None = None,
    **options,
):
    """:func:`innerprobe.perturb.apex` over shards of inputs on an executor; the same Result, merged exactly.

    ``options`` are APEX's own (``samples``, ``sites``, ``noise``, ``relative``, ``seed``, ``chunk_rows``,
    ``prefix``, ``tau``, ``rule``, ``position``, ``tokens``); ``shard`` inputs per task (default: four
    tasks per worker); ``store`` a folder for task results (resume).
    """
    from .perturb.engine import check_sigmas

    bad = sorted(set(options) - set(APEX_OPTIONS))
    if bad:
        raise ConfigError(
            f"unknown APEX option(s) for a sharded run: {', '.join(bad)}", hint=f"use: {', '.join(APEX_OPTIONS)}"
        )
    x = torch.as_tensor(x)
    sig = check_sigmas(sigmas).tolist()
    ids = list(range(len(x))) if ids is None else [int(i) for i in ids]
    if len(ids) != len(x):
        raise ConfigError(f"ids has {len(ids)} entries for {len(x)} inputs")
    ref, shared = _model_ref(model, weights)
    shared["x"] = x
    options, per_input = _split_per_input(options, len(x))
    shared.update(per_input)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    base = {
        "model": ref,
        "data": array_hash(x, *per_input.values()),
        "per_input": sorted(per_input),
        "sigmas": sig,
        "config": config,
    }
    payload = {"model_obj": Shared("model"), "x": Shared("x")} | {k: Shared(k) for k in per_input}
    tasks = [
        Task("innerprobe.scale:apex_shard", {**base, "ids": ids[a:b], "rows": [a, b]}, payload)
        for a, b in _shards(len(x), shard, workers)
    ]
    resumed = sum(Store(store).path(t).exists() for t in tasks) if store is not None else 0
    t0 = time.perf_counter()
    parts = run_tasks(
        tasks,
        executor=executor,
        workers=workers,
        address=address,
        store=store,
        shared=shared,
        progress=progress,
        label="APEX shards",
    )
    res = merge_apex(parts, sig, options, labels=labels, model_name=model_name)
    res.data.update(
        seconds=time.perf_counter() - t0, resumed_chunks=resumed, chunks=len(tasks), executor=executor, workers=workers
    )
    return res


def _split_per_input(options: dict, n: int) -> tuple[dict, dict]:
    """Per-input ``position`` ([N]) and ``tokens`` ([N, C]) arrays go to the shards sliced; the rest is config."""
    options, per_input = dict(options), {}
    for k, ndim in (("position", 1), ("tokens", 2)):
        v = options.get(k)
        if v is None or isinstance(v, int) or (isinstance(v, (list, tuple)) and np.ndim(v) < ndim):
            continue
        t = torch.as_tensor(v)
        if t.dim() != ndim or len(t) != n:
            raise ConfigError(
                f"{k} has shape {tuple(t.shape)}; per-input {k} needs {n} rows",
                hint="one row per input, or a single value for all",
            )
        options.pop(k)
        per_input[k] = t
    for k, v in options.items():
        if isinstance(v, (torch.Tensor, np.ndarray)):
            options[k] = v.tolist()
    return options, per_input


def apex_shard(
    model: dict,
    data: str,
    sigmas: list,
    config: dict,
    ids: list,
    rows: list,
    per_input=(),
    model_obj=None,
    x=None,
    position=None,
    tokens=None,
) -> dict:
    """One APEX task: inputs ``x[rows[0]:rows[1]]`` seeded by their global ``ids``; calibration on all of ``x``."""
    from .perturb.sweep import apex as run_apex

    net = _model(model, model_obj)
    a, b = rows
    sliced = {k: v[a:b] for k, v in (("position", position), ("tokens", tokens)) if v is not None}
    res = run_apex(net, x[a:b], sigmas, ids=ids, calibration=x, **config, **sliced)  # RMS of the whole batch
    out = {k: res.arrays[k] for k in ("counts", "classes", "y0_class") if k in res.arrays}
    if "clean_logits" in res.arrays:
        out["clean_logits"] = res.arrays["clean_logits"]
    out["n_classes"] = int(res.data["C"])
    out.update({k: res.data[k] for k in _SHARD_DATA if k in res.data})
    return out


#: Run descriptions every shard reports alike (the whole batch calibrates the site RMS); the merge keeps shard 0's.
_SHARD_DATA = ("K", "noise", "relative", "seed", "readout", "sites", "site_rms", "prefix_reuse", "chunk_rows")


def merge_apex(parts: list[dict], sigmas, options: dict, *, labels=None, model_name=None):
    """Shard results -> the Result one process would give: counts aligned on the union of outcome columns."""
    from .perturb.sweep import canonical, summarize
    from .results import provenance

    classes = np.unique(np.concatenate([p["classes"] for p in parts]))
    blocks = []
    for p in parts:
        full = np.zeros((*p["counts"].shape[:2], len(classes)), dtype=p["counts"].dtype)
        full[..., np.searchsorted(classes, p["classes"])] = p["counts"]
        blocks.append(full)
    y0_class = np.concatenate([p["y0_class"] for p in parts])
    counts, cls, y0 = canonical(np.concatenate(blocks), classes, y0_class)
    logits = np.concatenate([p["clean_logits"] for p in parts]) if all("clean_logits" in p for p in parts) else None
    res = summarize(
        counts,
        sigmas,
        y0,
        logits,
        tau=options.get("tau", 0.5),
        rule=options.get("rule", "survival"),
        labels=labels,
        classes=cls,
        n_classes=int(parts[0]["n_classes"]),
        y0_class=y0_class,
    )
    res.data.update({k: parts[0][k] for k in _SHARD_DATA if k in parts[0]})
    res.data["shards"] = len(parts)
    res.provenance = provenance(seed=options.get("seed", 0), model=model_name, config={**options, "shards": len(parts)})
    return res


# ----------------------------------------------------------------------------- all-edge patching
EDGE_METRICS = ("kl", "lm_loss", "label_loss")


def edge_effects(
    model,
    x_r,
    x_c,
    *,
    weights=None,
    graph: str = "auto",
    metric: str = "kl",
    mask=None,
    labels=None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    store=None,
    shard: int | None = None,
    progress: bool | None = None,
) -> tuple[list[str], np.ndarray]:
    """Every edge's exact single-edge effect (metric with the edge patched to x_c minus on x_r), in edge order.

    ``metric``: 'kl' (KL to the reference output, per example, over ``mask``ed positions), 'lm_loss' (next-token
    loss of ``x_r`` over ``mask``ed positions) or 'label_loss' (cross-entropy against ``labels``); the same
    functions as :mod:`innerprobe.patch.metrics`. Returns (edge names, effects [E]).
    """
    from .core.graph import build_graph

    if metric not in EDGE_METRICS:
        raise ConfigError(f"unknown edge metric {metric!r}", hint=f"use one of: {', '.join(EDGE_METRICS)}")
    if (metric == "label_loss") != (labels is not None):
        raise ConfigError("labels go with metric 'label_loss' (and it needs them)")
    ref, shared = _model_ref(model, weights)
    names = [str(e) for e in build_graph(shared["model"], graph).edges]
    shared.update(x_r=torch.as_tensor(x_r), x_c=torch.as_tensor(x_c))
    shared["mask"] = None if mask is None else torch.as_tensor(mask)
    shared["labels"] = None if labels is None else torch.as_tensor(labels)
    extra = [t for t in (shared["mask"], shared["labels"]) if t is not None]
    base = {
        "model": ref,
        "graph": graph,
        "metric": metric,
        "edges": len(names),
        "data": array_hash(shared["x_r"], shared["x_c"], *extra),
    }
    payload = {k: Shared(k) for k in ("x_r", "x_c", "mask", "labels")} | {"model_obj": Shared("model")}
    tasks = [
        Task("innerprobe.scale:edge_shard", {**base, "edge_range": [a, b]}, payload)
        for a, b in _shards(len(names), shard or EDGE_SHARD, workers)
    ]
    parts = run_tasks(
        tasks,
        executor=executor,
        workers=workers,
        address=address,
        store=store,
        shared=shared,
        progress=progress,
        label="edge shards",
    )
    return names, np.concatenate([p["effects"] for p in parts])


def edge_shard(
    model: dict,
    graph: str,
    metric: str,
    edges: int,
    data: str,
    edge_range: list,
    model_obj=None,
    x_r=None,
    x_c=None,
    mask=None,
    labels=None,
) -> dict:
    """One edge task: exact single-edge effects of edges ``edge_range[0]:edge_range[1]``, batched by receiver."""
    from .patch.path import evaluate_edges

    g, runs, delta, base = _edge_setup(model, graph, metric, data, model_obj, x_r, x_c, mask, labels)
    a, b = edge_range
    pos = {n: k for k, n in enumerate(g.order)}
    idx = sorted(range(a, b), key=lambda i: (pos[g.edges[i].dst], i))
    effects = np.zeros(b - a)
    for s in range(0, len(idx), 8):
        chunk = idx[s : s + 8]
        masks = torch.ones(len(chunk), len(g.edges))
        masks[torch.arange(len(chunk)), torch.tensor(chunk)] = 0
        with torch.no_grad():
            vals = delta(evaluate_edges(g, runs, masks)).mean(-1)
        effects[[i - a for i in chunk]] = vals.double().numpy() - base
    return {"effects": effects}


def _edge_setup(model, graph, metric, data, model_obj, x_r, x_c, mask, labels):
    """Graph, prepared runs and metric for one model and data, built once per worker."""
    from .core.graph import build_graph
    from .patch.metrics import kl_div, label_loss, lm_loss
    from .patch.path import prepare

    key = (model["hash"], graph, metric, data)
    if key not in _RUNS:
        net = _model(model, model_obj)
        g = build_graph(net, graph)
        runs = prepare(g, x_r, x_c)
        clean = runs.clean["out"]
        if metric == "kl":
            kl = kl_div(mask)

            def delta(o):
                return kl(clean, o)
        elif metric == "lm_loss":
            delta = lm_loss(x_r, mask)
        else:
            delta = label_loss(labels)
        with torch.no_grad():
            base = float(delta(clean).double().mean())
        _RUNS.clear()
        _RUNS[key] = (g, runs, delta, base)
    return _RUNS[key]


# ----------------------------------------------------------------------------- studies
def studies(
    names: list[str],
    out,
    *,
    seeds: int = 3,
    quick: bool = False,
    nested: bool = True,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Run studies as tasks, each into ``out/NAME`` (into ``out`` itself for one study with ``nested=False``);
    returns each study's summary rows (results.row records) as JSON text."""
    from .studies import get_study

    for n in names:
        get_study(n)  # unknown names refused before any work
    if not nested and len(names) != 1:
        raise ConfigError("nested=False writes one study into the folder itself: give exactly one study")
    out = Path(out)
    tasks = [
        Task(
            "innerprobe.scale:study_task",
            {"name": n, "out": str(out / n if nested else out), "seeds": seeds, "quick": quick},
        )
        for n in names
    ]
    return run_tasks(tasks, executor=executor, workers=workers, address=address, progress=progress, label="studies")


def study_task(name: str, out: str, seeds: int, quick: bool) -> dict:
    """One study run into ``out``; its summary rows as JSON text."""
    import json

    from .studies import get_study

    res = get_study(name)(Path(out), seeds=seeds, quick=quick)
    rows = getattr(res, "rows", None) or (res.data.get("rows") if hasattr(res, "data") else None) or []
    return {"name": name, "rows": json.dumps(rows, sort_keys=True, default=str)}
