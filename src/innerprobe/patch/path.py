"""Exact path-patching evaluators (Goldowsky-Dill et al. 2023, arXiv 2304.05969, §2).

G_H(x_r, x_c) evaluates the treeified graph with every leaf whose path is in P fed x_r and every
other leaf fed x_c (§1.4 of the method notes).

* :func:`evaluate_edges` - edge-set hypotheses by the *two-version* algorithm: each node needs its
  counterfactual value a(v; x_c) and its patched lineage a^H(v); a slot reads a^H(u) along edges
  in E and a(u; x_c) along the others. One cached counterfactual pass, then one pass for many
  hypotheses at once: each hypothesis is a row of an edge mask, batched along the batch axis.
* :func:`evaluate_paths` - arbitrary path sets by lazy treeification with memoisation: a tree
  copy of node v is keyed by its *signature*, the set of input -> v prefixes q with q.s in P.
  Copies with equal (v, signature) are computed once.
* :func:`evaluate_tree` - brute-force treeification (exponential; a test reference only).
* :func:`evaluate` - dispatch on a :class:`Hypothesis`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.graph import Graph
from ..core.hooks import preserved_state
from ..errors import ConfigError, ModelError
from . import fast
from .hypothesis import Hypothesis


@dataclass
class Runs:
    """Cached plain runs of the graph on x_r (clean) and x_c (counterfactual)."""

    x_r: object
    x_c: object
    clean: dict
    cf: dict
    inputs_r: dict
    inputs_c: dict
    clean_slots: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


@torch.no_grad()
def prepare(graph: Graph, x_r, x_c) -> Runs:
    """Run the graph once on x_r and once on x_c and cache every node's value."""
    _check_pair(x_r, x_c)
    slots: dict = {}
    with _model_state(graph):
        try:
            out_r, clean = graph.forward(x_r, return_acts=True, slots_out=slots)
            out_c, cf = graph.forward(x_c, return_acts=True)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:  # torch's own shape/dtype errors
            what = f"a {x_r.dtype} tensor of shape {tuple(x_r.shape)}" if isinstance(x_r, torch.Tensor) else type(x_r).__name__
            raise ModelError(f"the model failed on {what}: {str(e).splitlines()[0]}",
                             hint="pass the inputs the model takes (token ids as a long tensor [batch, pos] for transformers)") from e
    return Runs(x_r, x_c, clean, cf, {n: clean[n] for n in graph.inputs}, {n: cf[n] for n in graph.inputs}, slots)


def _check_pair(x_r, x_c):
    if isinstance(x_r, torch.Tensor) and isinstance(x_c, torch.Tensor) and x_r.shape != x_c.shape:
        raise ConfigError(f"reference and counterfactual inputs differ in shape: {tuple(x_r.shape)} vs {tuple(x_c.shape)}",
                          hint="path patching pairs each x_r with one x_c of the same shape")


class _model_state:
    def __init__(self, graph):
        self.cm = preserved_state(graph.model, eval=True) if graph.model is not None else None

    def __enter__(self):
        if self.cm is not None:
            self.cm.__enter__()

    def __exit__(self, *exc):
        if self.cm is not None:
            return self.cm.__exit__(*exc)
        return False


def edge_mask(graph: Graph, hypotheses) -> torch.Tensor:
    """[K, E] float mask, one row per edge-set hypothesis (Hypothesis, or an iterable of edges)."""
    rows = []
    for h in hypotheses:
        if isinstance(h, Hypothesis):
            r = h.resolve(graph)
            if r.edges is None:
                raise ConfigError(f"hypothesis {h.name!r} is not an edge set", hint="evaluate it with evaluate_paths / evaluate()")
            es = r.edges
        else:
            es = {graph.edge(e) for e in h}
        row = torch.zeros(len(graph.edges))
        for e in es:
            row[graph.edge_index[e]] = 1.0
        rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, len(graph.edges))


@torch.no_grad()
def evaluate_edges(graph: Graph, runs: Runs, masks: torch.Tensor, *, chunk: int | None = None,
                   memory_budget=None, method: str = "fast") -> torch.Tensor:
    """Outputs of K edge-set hypotheses, stacked [K, B, ...] (two-version algorithm, §2.1).

    ``masks`` is [K, E] (1 = edge in E_imp; fractional values interpolate) or [K, B, E] for a
    mask per example. Rows run ``chunk`` at a time along the batch axis (default: as many as fit
    in ``memory_budget``, bytes or e.g. ``"2GiB"``, default 1 GiB). ``method="fast"`` is
    :func:`innerprobe.patch.fast.fast_evaluate` (docs/patching.md, "Fast evaluator");
    ``"reference"`` is the plain two-version loop below, which the fast one is tested equal to.
    The fast evaluator refuses graphs it does not handle (position-restricted edges) by name and
    the reference one runs instead.
    """
    masks = torch.as_tensor(masks)
    masks = masks.float() if not masks.is_floating_point() else masks
    if masks.dim() == 1:
        masks = masks[None]
    E = len(graph.edges)
    if masks.shape[-1] != E:
        raise ConfigError(f"edge mask has {masks.shape[-1]} columns, graph {graph.name} has {E} edges")
    B = next(iter(runs.clean.values())).shape[0]
    if masks.dim() == 3 and masks.shape[1] != B:
        raise ConfigError(f"per-example mask has {masks.shape[1]} rows for a batch of {B}")
    if method not in ("fast", "reference"):
        raise ConfigError(f"unknown evaluator {method!r}", hint="method='fast' or 'reference'")
    with _model_state(graph):
        if method == "fast" and fast.supports(graph) is None:
            return fast.fast_evaluate(graph, runs, masks, chunk=chunk, memory_budget=memory_budget)
        masks = masks.to(torch.float32)
        K = masks.shape[0]
        chunk = chunk or K
        outs = [_two_version(graph, runs, masks[k0:k0 + chunk], B) for k0 in range(0, K, chunk)]
    return torch.cat(outs, 0)


def _two_version(graph: Graph, runs: Runs, masks: torch.Tensor, B: int) -> torch.Tensor:
    K = masks.shape[0]
    per_example = masks.dim() == 3
    aH: dict = {}
    dirty: dict = {}

    def expand(t):  # [B, ...] -> [K, B, ...]
        return t.unsqueeze(0).expand(K, *t.shape)

    for g in graph.groups:
        if g.kind == "input":
            for n in g.nodes:
                aH[n] = expand(runs.clean[n])  # a^H(input) = its x_r value
                dirty[n] = False
            continue
        idx = [i for n in g.nodes for s in graph.nodes[n].slots for i in graph.incoming[(n, s)]]
        m = masks[..., idx]
        untouched = bool((m == 1).all()) and not any(dirty[graph.edges[i].src] for i in idx)
        if untouched:
            for n in g.nodes:
                aH[n] = expand(runs.clean[n])
                dirty[n] = False
            continue
        changed = [n for n in g.nodes if any(
            dirty[graph.edges[i].src] or not bool((masks[..., i] == 1).all())
            for s in graph.nodes[n].slots for i in graph.incoming[(n, s)])]
        compute = changed if g.subsets else list(g.nodes)
        slots = {}
        for n in compute:
            for s in graph.nodes[n].slots:
                # slot = clean slot + sum over changed sources (a^H(u) - a(u; x_r))
                #        + sum over edges (1 - w_e) (a(u; x_c) - a^H(u)), skipping terms that are zero
                val = runs.clean_slots[(n, s)] if (n, s) in runs.clean_slots else None
                if val is None:
                    val = graph.slot_value(n, s, [runs.clean[graph.edges[i].src] for i in graph.incoming[(n, s)]])
                val = expand(val)
                for i in graph.incoming[(n, s)]:
                    src = graph.edges[i].src
                    if dirty[src]:
                        val = val + (aH[src] - expand(runs.clean[src]))
                for i in graph.incoming[(n, s)]:
                    w = masks[:, :, i] if per_example else masks[:, i]
                    if bool((w == 1).all()):
                        continue
                    src = graph.edges[i].src
                    cf = runs.cf[src]
                    w = w.reshape(K, B, *([1] * (cf.dim() - 1))) if per_example else w.reshape(K, *([1] * cf.dim()))
                    val = val + (1 - w) * (cf - aH[src])
                slots[(n, s)] = val.reshape(K * B, *val.shape[2:])
        outs = graph.run_group(g, slots, compute)
        for n in g.nodes:
            aH[n] = expand(runs.clean[n])
            dirty[n] = False
        for n, o in zip(compute, outs):
            aH[n] = o.reshape(K, B, *o.shape[1:])
            dirty[n] = n in changed
    return aH["out"]


# ----------------------------------------------------------------------- arbitrary path sets
@torch.no_grad()
def evaluate_paths(graph: Graph, runs: Runs, paths) -> torch.Tensor:
    """G_H for an arbitrary path set (memoised signature treeification, §2.2). ``runs.stats``
    records how many distinct (node, signature) pairs were computed."""
    P = frozenset(paths)
    memo: dict = {}

    def value(node: str, sig: frozenset):
        key = (node, sig)
        if key in memo:
            return memo[key]
        nd = graph.nodes[node]
        if nd.kind == "input":
            v = runs.inputs_r[node] if () in sig else runs.inputs_c[node]
        elif not sig:
            v = runs.cf[node]
        else:
            slot_vals = {}
            for s in nd.slots:
                contrib = []
                for i in graph.incoming[(node, s)]:
                    e = graph.edges[i]
                    child = frozenset(p[:-1] for p in sig if p[-1] == e)
                    contrib.append(value(e.src, child))
                slot_vals[s] = graph.slot_value(node, s, contrib)
            v = graph.node_forward(node, slot_vals)
        memo[key] = v
        return v

    with _model_state(graph):
        out = value("out", P)
    runs.stats["memo_entries"] = len(memo)
    runs.stats["computed_nodes"] = sum(1 for (n, s) in memo if graph.nodes[n].kind != "input" and s)
    return out


@torch.no_grad()
def evaluate_tree(graph: Graph, runs: Runs, paths) -> torch.Tensor:
    """Brute-force treeification: every tree copy computed separately. Exponential; tests only."""
    P = frozenset(paths)
    count = [0]

    def value(node: str, suffix: tuple):
        nd = graph.nodes[node]
        if nd.kind == "input":
            return runs.inputs_r[node] if suffix in P else runs.inputs_c[node]
        count[0] += 1
        slot_vals = {}
        for s in nd.slots:
            contrib = [value(graph.edges[i].src, (graph.edges[i],) + suffix) for i in graph.incoming[(node, s)]]
            slot_vals[s] = graph.slot_value(node, s, contrib)
        return graph.node_forward(node, slot_vals)

    with _model_state(graph):
        out = value("out", ())
    runs.stats["tree_nodes"] = count[0]
    return out


def evaluate(graph: Graph, runs: Runs, hypothesis: Hypothesis) -> torch.Tensor:
    """G_H for one hypothesis: the two-version algorithm when P is an edge set, else memoised
    treeification."""
    r = hypothesis.resolve(graph)
    if r.edges is not None:
        return evaluate_edges(graph, runs, edge_mask(graph, [r.edges]))[0]
    return evaluate_paths(graph, runs, r.paths)


def avoid_node(graph: Graph, node: str) -> Hypothesis:
    """P = every path that does not pass through ``node`` (= activation patching of ``node``)."""
    graph.node(node)
    return Hypothesis.from_edges([e for e in graph.edges if node not in (e.src, e.dst)], name=f"avoid {node}")
