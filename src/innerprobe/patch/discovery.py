"""Exact single-edge sweeps and automatic circuit discovery.

* :func:`single_edge_effects` - the exact effect of patching each edge alone (every other edge
  kept), all edges batched through the two-version evaluator.
* :func:`acdc` - ACDC-style greedy pruning (Conmy et al. 2023, arXiv 2304.14997): visit receivers
  in reverse topological order and drop each incoming edge whose removal raises the metric by
  less than ``tau``.
* :func:`acdc_pp` - ACDC++ (Syed et al. 2023, arXiv 2310.10348, §5): prune with EAP-IG scores
  first, then verify the rest with exact patching, within a time and memory budget.
* :func:`top_k` - keep the k edges with the largest |score| (EAP / EAP-IG circuits).
* :func:`prune_dangling` - drop edges that lie on no complete input -> output path.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..core.graph import Graph
from ..progress import track
from . import fast
from .eap import eap_scores
from .path import Runs, evaluate_edges


def mean_metric(out: torch.Tensor, metric: Callable, *, stacked: bool = False) -> torch.Tensor:
    """[K] mean over examples of a per-example metric applied to stacked outputs [K, B, ...].
    ``stacked``: the metric takes the hypothesis axis itself (``metric(out)`` -> [K, B], as the
    metrics of :mod:`innerprobe.patch.metrics` do), one call instead of K."""
    with torch.no_grad():
        if stacked:
            return metric(out).mean(1)
        return torch.stack([metric(o).mean() for o in out])


def single_edge_effects(
    graph: Graph,
    runs: Runs,
    metric: Callable,
    *,
    chunk: int | None = None,
    memory_budget=None,
    progress: bool = False,
    stacked_metric: bool = False,
) -> torch.Tensor:
    """[E] mean metric with edge e patched to x_c minus the mean metric on x_r (exact).

    Edges go in chunks of mask rows, in topological order of their receivers, one receiving group
    at a time (``chunk`` rows, or as many as fit in ``memory_budget`` for that group: see
    :func:`innerprobe.patch.fast.rows_for_budget` with ``receiver``, so edges into late layers
    go in larger chunks), so a chunk reuses the clean run up to its receivers and recomputes only
    what they change. ``stacked_metric=True`` says the metric takes the hypothesis axis itself
    (outputs [K, B, ...] -> [K, B], as :func:`innerprobe.patch.metrics.lm_loss` and ``label_loss``
    do): one call per chunk instead of one per row (not detected: a metric that mixes examples
    could pass any check on some rows and differ on others)."""
    E = len(graph.edges)
    with torch.no_grad():
        base = metric(runs.clean["out"]).mean()
    effects = torch.zeros(E)
    pos = {n: k for k, n in enumerate(graph.order)}
    gindex = {n: i for i, g in enumerate(graph.groups) for n in g.nodes}
    order = sorted(range(E), key=lambda i: pos[graph.edges[i].dst])
    budget = fast.parse_bytes(memory_budget, runs.clean["out"].device)
    by_group: dict = {}
    for i in order:
        by_group.setdefault(gindex[graph.edges[i].dst], []).append(i)
    batches = []
    for gi, idx in by_group.items():
        step = chunk or fast.rows_for_budget(graph, runs, budget, receiver=gi)
        batches += [idx[s : s + step] for s in range(0, len(idx), step)]
    for idx in track(batches, "single-edge effects", enable=None if progress else False):
        masks = torch.ones(len(idx), E)
        masks[torch.arange(len(idx)), torch.tensor(idx)] = 0
        out = evaluate_edges(graph, runs, masks, chunk=len(idx))
        effects[idx] = (mean_metric(out, metric, stacked=stacked_metric) - base).cpu()
    return effects


def acdc(
    graph: Graph, runs: Runs, metric: Callable, tau: float, *, progress: bool = False
) -> tuple[frozenset, list[dict]]:
    """Greedy edge pruning; returns (kept edges without dangling ones, log of every decision)."""
    mask = torch.ones(len(graph.edges))
    current = float(mean_metric(evaluate_edges(graph, runs, mask[None]), metric)[0])
    log = []
    order = [(n, s) for n in reversed(graph.order) for s in graph.nodes[n].slots]
    trials = [i for key in order for i in sorted(graph.incoming[key], key=lambda i: str(graph.edges[i]))]
    for i in track(trials, "ACDC pruning", enable=None if progress else False):
        trial = mask.clone()
        trial[i] = 0
        val = float(mean_metric(evaluate_edges(graph, runs, trial[None]), metric)[0])
        removed = val - current < tau
        log.append({"edge": str(graph.edges[i]), "metric_before": current, "metric_after": val, "removed": removed})
        if removed:
            mask, current = trial, val
    kept = frozenset(graph.edges[i] for i in range(len(graph.edges)) if mask[i] > 0)
    return prune_dangling(graph, kept), log


def acdc_pp(
    graph: Graph,
    runs: Runs,
    metric: Callable,
    tau: float,
    *,
    ig_steps: int = 5,
    prune_tau: float | None = None,
    batch: int | None = None,
    time_budget_s: float | None = None,
    memory_budget=None,
    progress: bool = False,
) -> tuple[frozenset, dict]:
    """ACDC++: EAP-IG prunes, exact patching verifies (docs/patching.md, "Discovery").

    1. EAP-IG (``ig_steps``) scores every edge; the edges with |score| < ``prune_tau`` (default
       ``tau``) are removed together, and the exact metric of what is left is recorded.
    2. The remaining edges, weakest |score| first, are tried exactly, ``batch`` at a time (default:
       as many rows as ``memory_budget`` allows): each trial removes one edge from the current
       circuit; those that raise the metric by less than ``tau`` are removed, then the combined
       removal is evaluated exactly and, if it raises the metric by ``tau`` or more, the batch is
       redone one edge at a time (plain ACDC).
    3. When ``time_budget_s`` runs out, untried edges are kept (never dropped unverified).

    Returns (kept edges without dangling ones, report) with the report holding every metric value
    measured, how many edges each stage removed and how many stayed unverified."""
    t0 = time.perf_counter()
    E = len(graph.edges)
    scores = eap_scores(graph, runs, metric, ig_steps=ig_steps, memory_budget=memory_budget)
    mask = torch.ones(E)
    full = _metric_of(graph, runs, metric, mask[None], memory_budget)[0]
    cut = scores.abs() < (tau if prune_tau is None else prune_tau)
    mask[cut] = 0
    current = _metric_of(graph, runs, metric, mask[None], memory_budget)[0]
    report = {
        "metric_full": full,
        "metric_after_eap_prune": current,
        "eap_removed": int(cut.sum()),
        "exact_removed": 0,
        "unverified": 0,
        "redone_batches": 0,
        "tau": tau,
        "ig_steps": ig_steps,
    }
    todo = [int(i) for i in torch.argsort(scores.abs()) if mask[int(i)] > 0]
    step = batch or fast.rows_for_budget(graph, runs, fast.parse_bytes(memory_budget, runs.clean["out"].device))
    done = 0
    for b0 in track(range(0, len(todo), step), "ACDC++ exact verification", enable=None if progress else False):
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        mask, current = _verify_batch(
            graph, runs, metric, mask, current, todo[b0 : b0 + step], tau, memory_budget, report
        )
        done = b0 + step
    report["unverified"] = max(0, len(todo) - done)
    report["metric_final"] = current
    report["seconds"] = time.perf_counter() - t0
    kept = frozenset(graph.edges[i] for i in range(E) if mask[i] > 0)
    return prune_dangling(graph, kept), report


def _metric_of(graph, runs, metric, masks, memory_budget) -> list[float]:
    return [float(v) for v in mean_metric(evaluate_edges(graph, runs, masks, memory_budget=memory_budget), metric)]


def _verify_batch(graph, runs, metric, mask, current, idx, tau, memory_budget, report):
    trials = mask.repeat(len(idx), 1)
    trials[torch.arange(len(idx)), torch.tensor(idx)] = 0
    vals = _metric_of(graph, runs, metric, trials, memory_budget)
    drop = [i for i, v in zip(idx, vals) if v - current < tau]
    if not drop:
        return mask, current
    new = mask.clone()
    new[drop] = 0
    val = _metric_of(graph, runs, metric, new[None], memory_budget)[0]
    if val - current < tau:
        report["exact_removed"] += len(drop)
        return new, val
    report["redone_batches"] += 1
    for i in drop:  # sequential ACDC within the batch
        trial = mask.clone()
        trial[i] = 0
        v = _metric_of(graph, runs, metric, trial[None], memory_budget)[0]
        if v - current < tau:
            mask, current = trial, v
            report["exact_removed"] += 1
    return mask, current


def top_k(graph: Graph, scores: torch.Tensor, k: int) -> frozenset:
    idx = torch.argsort(scores.abs(), descending=True)[:k]
    return frozenset(graph.edges[int(i)] for i in idx)


def prune_dangling(graph: Graph, edges) -> frozenset:
    """Keep only edges on some complete input -> output path made of ``edges``."""
    edges = set(edges)
    fwd = set(graph.inputs)
    for n in graph.order:  # topological
        if any(e.src in fwd for e in edges if e.dst == n):
            fwd.add(n)
    bwd = {"out"}
    for n in reversed(graph.order):
        if any(e.dst in bwd for e in edges if e.src == n):
            bwd.add(n)
    return frozenset(e for e in edges if e.src in fwd and e.dst in bwd)


def compare(found, reference) -> dict:
    """Edge-level precision / recall of a found circuit against a reference edge set."""
    found, reference = set(found), set(reference)
    tp = len(found & reference)
    return {
        "found": len(found),
        "reference": len(reference),
        "shared": tp,
        "precision": tp / len(found) if found else float("nan"),
        "recall": tp / len(reference) if reference else float("nan"),
        "missing": sorted(str(e) for e in reference - found),
        "extra": sorted(str(e) for e in found - reference),
    }
