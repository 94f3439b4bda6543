"""Exact single-edge sweeps and automatic circuit discovery.

* :func:`single_edge_effects` - the exact effect of patching each edge alone (every other edge
  kept), all edges batched through the two-version evaluator.
* :func:`acdc` - ACDC-style greedy pruning (Conmy et al. 2023, arXiv 2304.14997): visit receivers
  in reverse topological order and drop each incoming edge whose removal raises the metric by
  less than ``tau``.
* :func:`top_k` - keep the k edges with the largest |score| (EAP / EAP-IG circuits).
* :func:`prune_dangling` - drop edges that lie on no complete input -> output path.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core.graph import Edge, Graph
from ..progress import track
from .path import Runs, evaluate_edges


def mean_metric(out: torch.Tensor, metric: Callable) -> torch.Tensor:
    """[K] mean over examples of a per-example metric applied to stacked outputs [K, B, ...]."""
    with torch.no_grad():
        return torch.stack([metric(o).mean() for o in out])


def single_edge_effects(graph: Graph, runs: Runs, metric: Callable, *, chunk: int = 8, progress: bool = False) -> torch.Tensor:
    """[E] mean metric with edge e patched to x_c minus the mean metric on x_r (exact)."""
    E = len(graph.edges)
    with torch.no_grad():
        base = metric(runs.clean["out"]).mean()
    effects = torch.zeros(E)
    # chunk edges by receiving node (in topological order), so each chunk reuses the clean run
    # up to that node's group and recomputes only that node there
    pos = {n: k for k, n in enumerate(graph.order)}
    by_group: dict = {}
    for i, e in enumerate(graph.edges):
        by_group.setdefault(pos[e.dst], []).append(i)
    batches = [idx[s:s + chunk] for _, idx in sorted(by_group.items()) for s in range(0, len(idx), chunk)]
    for idx in track(batches, "single-edge effects", enable=None if progress else False):
        masks = torch.ones(len(idx), E)
        masks[torch.arange(len(idx)), torch.tensor(idx)] = 0
        effects[idx] = mean_metric(evaluate_edges(graph, runs, masks), metric) - base
    return effects


def acdc(graph: Graph, runs: Runs, metric: Callable, tau: float, *, progress: bool = False) -> tuple[frozenset, list[dict]]:
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
    return {"found": len(found), "reference": len(reference), "shared": tp,
            "precision": tp / len(found) if found else float("nan"), "recall": tp / len(reference) if reference else float("nan"),
            "missing": sorted(str(e) for e in reference - found), "extra": sorted(str(e) for e in found - reference)}
