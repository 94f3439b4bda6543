"""Exact path-patching evaluators (Goldowsky-Dill et al. 2023, arXiv 2304.05969, §2).

G_H(x_r, x_c) evaluates the treeified graph with every leaf whose path is in P fed x_r and every
other leaf fed x_c (docs/patching.md, "Hypotheses").

* :func:`evaluate_edges` - edge-set hypotheses by the *two-version* algorithm: each node needs its
  counterfactual value a(v; x_c) and its patched lineage a^H(v); a slot reads a^H(u) along edges
  in E and a(u; x_c) along the others. One cached counterfactual pass, then one pass for many
  hypotheses at once: each hypothesis is a row of an edge mask, batched along the batch axis.
* :func:`evaluate_paths` - arbitrary path sets by lazy treeification with memoisation: a tree
  copy of node v is keyed by its *signature*, the set of input -> v prefixes q with q.s in P.
  Copies with equal (v, signature) are computed once.
* :func:`evaluate_tree` - brute-force treeification (exponential; a test reference only).
* :func:`evaluate` - dispatch on a :class:`Hypothesis`: edge sets to the two-version algorithm,
  everything else (path patterns, complements, positions) to the compiled evaluator
  (:mod:`.compiled`), which never lists paths.

**Counterfactuals** (:func:`prepare`): an input x_c, or ``ablation="mean"`` (each node's mean value
over a reference set, per position by default) or ``ablation="zero"``. With an ablation the cache
A_c(v) is not a consistent run of the graph, so the meaning is fixed by the path semantics: a
treeified copy on no path of P takes A_c(v). For an edge set, :func:`evaluate` first drops the
edges whose sender no edge path from an input reaches (their copies are off P), which makes the
two-version result equal the path semantics (tested); :func:`evaluate_edges` applies a mask
literally. docs/patching.md, "Counterfactuals".

**Position-aware edge masks**: ``[K, B, T, E]`` (K hypotheses, B examples, T token positions, E
edges, in ``graph.edges`` order). Entry [k, b, t, e] is the weight of edge e = u -> v:s *at
position t* of example b: 1 = slot s of v reads a^H(u)[b, t], 0 = it reads the counterfactual
A_c(u)[b, t]. Residual edges are position-wise, so this restricts sender and receiver together.
:func:`position_edge_mask` builds one from a hypothesis; the fast evaluator and the reference
loop both take it (tests/test_patch_fast.py checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.graph import Graph
from ..core.hooks import preserved_state
from ..core.trees import logits_of
from ..errors import ConfigError, ModelError
from . import fast
from .compiled import evaluate_compiled, position_mask
from .hypothesis import Hypothesis, _edges_with_positions

ABLATIONS = ("input", "mean", "zero")


@dataclass
class Runs:
    """Cached plain run of the graph on x_r (clean) and the counterfactual cache A_c (``cf``): the
    run on x_c (``kind="input"``), or the mean / zero ablation values (``kind="mean" | "zero"``)."""

    x_r: object
    x_c: object
    clean: dict
    cf: dict
    inputs_r: dict
    inputs_c: dict
    clean_slots: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    kind: str = "input"


@torch.no_grad()
def prepare(
    graph: Graph,
    x_r,
    x_c=None,
    *,
    ablation: str = "input",
    reference=None,
    per_position: bool = True,
    check: bool = True,
) -> Runs:
    """Run the graph on x_r and build the counterfactual cache (module docstring, "Counterfactuals").

    ``ablation="input"`` (default): A_c = the run on ``x_c``. ``"mean"``: A_c(v) = mean of v over the
    ``reference`` inputs (default ``x_c`` if given, else ``x_r``), per position when ``per_position``
    (the reference then has x_r's length) else over examples and positions. ``"zero"``: A_c = 0.
    With ``check`` the graph's output on x_r must equal the model's own (1e-4), else ModelError.
    """
    if ablation not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}", hint=f"one of {', '.join(ABLATIONS)}")
    if ablation == "input":
        if x_c is None:
            raise ConfigError("prepare needs x_c, or ablation='mean' / 'zero'")
        _check_pair(x_r, x_c)
    slots: dict = {}
    with _model_state(graph):
        out_r, clean = _run(graph, x_r, slots)
        if check and graph.model is not None:
            _check_model(graph, x_r, out_r)
        if ablation == "input":
            cf = _run(graph, x_c)[1]
        elif ablation == "zero":
            cf = {n: torch.zeros_like(v) for n, v in clean.items()}
        else:
            cf = _means(
                graph, clean, reference if reference is not None else (x_c if x_c is not None else x_r), per_position
            )
    return Runs(
        x_r, x_c, clean, cf, {n: clean[n] for n in graph.inputs}, {n: cf[n] for n in graph.inputs}, slots, kind=ablation
    )


def _run(graph: Graph, x, slots: dict | None = None):
    try:
        return graph.forward(x, return_acts=True, slots_out=slots)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:  # torch's own shape/dtype errors
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(
            f"the model failed on {what}: {str(e).splitlines()[0]}",
            hint="pass the inputs the model takes (token ids as a long tensor [batch, pos] for transformers)",
        ) from e


def _check_model(graph: Graph, x, out: torch.Tensor) -> None:
    if out.device.type == "meta":  # shape-only runs (benchmarks): nothing to compare
        return
    ref = logits_of(graph.model(x))
    if not isinstance(ref, torch.Tensor) or ref.shape != out.shape:
        return
    diff = float((out.float() - ref.float()).abs().max())
    if not diff <= 1e-4 * max(1.0, float(ref.float().abs().max())):
        raise ModelError(
            f"graph {graph.name} differs from its model by {diff:.3g} on these inputs",
            hint="the graph does not model this input (padding? a longer context than the sliding window?); "
            "rebuild it or pass check=False knowingly",
        )


def _means(graph: Graph, clean: dict, reference, per_position: bool) -> dict:
    _, acts = _run(graph, reference)
    out = {}
    for n, v in clean.items():
        a = acts[n]
        per_pos = per_position and a.dim() >= 3
        if per_pos and a.shape[1] != v.shape[1]:
            raise ConfigError(
                f"per-position mean ablation needs reference inputs of length {v.shape[1]}, got {a.shape[1]}",
                hint="pass per_position=False to average over positions too",
            )
        m = a.mean(0) if (per_pos or a.dim() < 3) else a.mean((0, 1))
        out[n] = m.unsqueeze(0).expand_as(v) if m.dim() == v.dim() - 1 else m.view(1, 1, *m.shape).expand_as(v)
    return out


def _check_pair(x_r, x_c):
    if isinstance(x_r, torch.Tensor) and isinstance(x_c, torch.Tensor) and x_r.shape != x_c.shape:
        raise ConfigError(
            f"reference and counterfactual inputs differ in shape: {tuple(x_r.shape)} vs {tuple(x_c.shape)}",
            hint="path patching pairs each x_r with one x_c of the same shape",
        )


class _model_state:
    """Eval mode for the body, the model's flags restored after. A model already in eval mode is
    left alone: nothing would change, and walking every module twice per call is most of an
    evaluation's fixed cost on a small model (benchmarks/patch_bench.py, induction row)."""

    def __init__(self, graph):
        m = graph.model
        self.cm = preserved_state(m, eval=True) if m is not None and any(x.training for x in m.modules()) else None

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
                raise ConfigError(
                    f"hypothesis {h.name!r} is not an edge set", hint="evaluate it with evaluate_paths / evaluate()"
                )
            es = r.edges
        else:
            es = {graph.edge(e) for e in h}
        row = torch.zeros(len(graph.edges))
        for e in es:
            row[graph.edge_index[e]] = 1.0
        rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, len(graph.edges))


@torch.no_grad()
def evaluate_edges(
    graph: Graph, runs: Runs, masks: torch.Tensor, *, chunk: int | None = None, memory_budget=None, method: str = "fast"
) -> torch.Tensor:
    """Outputs of K edge-set hypotheses, stacked [K, B, ...] (two-version algorithm, §2.1).

    ``masks`` is [K, E] (1 = edge in E_imp; fractional values interpolate) or [K, B, E] for a
    mask per example. Rows run ``chunk`` at a time along the batch axis (default: as many as fit
    in ``memory_budget``, bytes or e.g. ``"2GiB"``, default 1 GiB). ``method="fast"`` is
    :func:`innerprobe.patch.fast.fast_evaluate` (docs/patching.md, "Fast evaluator");
    ``"reference"`` is the plain two-version loop below, which the fast one is tested equal to.
    ``[K, B, T, E]`` masks weigh each edge per example and position (module docstring); the fast
    evaluator takes them when every sender is a [B, T, ...] activation. Graphs with
    position-restricted edges and other masks the fast evaluator does not take
    (:func:`~innerprobe.patch.fast.supports`, :func:`~innerprobe.patch.fast.supports_masks`) run
    on the reference loop instead.
    """
    masks = torch.as_tensor(masks)
    masks = masks.float() if not masks.is_floating_point() else masks
    if masks.dim() == 1:
        masks = masks[None]
    E = len(graph.edges)
    if masks.shape[-1] != E:
        raise ConfigError(f"edge mask has {masks.shape[-1]} columns, graph {graph.name} has {E} edges")
    B = next(iter(runs.clean.values())).shape[0]
    if masks.dim() >= 3 and masks.shape[1] != B:
        raise ConfigError(f"per-example mask has {masks.shape[1]} rows for a batch of {B}")
    if method not in ("fast", "reference"):
        raise ConfigError(f"unknown evaluator {method!r}", hint="method='fast' or 'reference'")
    with _model_state(graph):
        if method == "fast" and (fast.supports(graph) or fast.supports_masks(graph, runs, masks)) is None:
            return fast.fast_evaluate(graph, runs, masks, chunk=chunk, memory_budget=memory_budget)
        masks = masks.to(torch.float32)
        K = masks.shape[0]
        chunk = chunk or K
        outs = [_two_version(graph, runs, masks[k0 : k0 + chunk], B) for k0 in range(0, K, chunk)]
    return torch.cat(outs, 0)


def _two_version(graph: Graph, runs: Runs, masks: torch.Tensor, B: int) -> torch.Tensor:
    K = masks.shape[0]
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
        changed = [
            n
            for n in g.nodes
            if any(
                dirty[graph.edges[i].src] or not bool((masks[..., i] == 1).all())
                for s in graph.nodes[n].slots
                for i in graph.incoming[(n, s)]
            )
        ]
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
                    w = masks[..., i]  # [K], [K, B] or [K, B, T] (position-aware masks, module docstring)
                    if bool((w == 1).all()):
                        continue
                    src = graph.edges[i].src
                    cf = runs.cf[src]
                    w = w.reshape(*w.shape, *([1] * (cf.dim() + 1 - w.dim())))
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
    """Brute-force treeification: every tree copy on P computed separately, every copy off P takes
    A_c. Exponential; the semantic reference of the tests."""
    P = frozenset(paths)
    count = [0]
    on_p = {p[i:] for p in P for i in range(len(p) + 1)}  # suffixes of paths in P (a copy with none is off P)

    def value(node: str, suffix: tuple):
        nd = graph.nodes[node]
        if nd.kind == "input":
            return runs.inputs_r[node] if suffix in P else runs.inputs_c[node]
        if suffix not in on_p:
            return runs.cf[node]  # every leaf counterfactual: A_c(node) (= the x_c run for input counterfactuals)
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


def evaluate(graph: Graph, runs: Runs, hypothesis: Hypothesis, *, positions: dict | None = None) -> torch.Tensor:
    """G_H for one hypothesis: the two-version algorithm when P is an edge set (after dropping edges
    no input reaches, under an ablation), else the compiled evaluator. ``positions`` binds named
    positions (``{"END": end_index}``, one index per example)."""
    r = hypothesis.resolve(graph)
    if r.edges is not None:
        E = r.edges if runs.kind == "input" else reachable_edges(graph, r.edges)
        if runs.kind != "input" and not any(e.dst == "out" for e in E):
            return runs.cf["out"]  # no path of P reaches the output: the root copy is off P
        return evaluate_edges(graph, runs, edge_mask(graph, [E]))[0]
    with _model_state(graph):
        return evaluate_compiled(graph, runs, r.compiled, positions=positions)


def reachable_edges(graph: Graph, edges) -> frozenset:
    """The edges of ``edges`` whose sender is an input or is reached from one along ``edges``."""
    edges = frozenset(edges)
    reached = set(graph.inputs)
    for n in graph.order:
        if any(
            graph.edges[i] in edges and graph.edges[i].src in reached
            for s in graph.nodes[n].slots
            for i in graph.incoming[(n, s)]
        ):
            reached.add(n)
    return frozenset(e for e in edges if e.src in reached)


def position_edge_mask(
    graph: Graph, hypothesis: Hypothesis, B: int, T: int, *, positions: dict | None = None
) -> torch.Tensor:
    """The ``[1, B, T, E]`` position-aware mask (module docstring) of a hypothesis made of ``all`` /
    ``edge`` / ``except edge`` lines, with or without positions."""
    kinds = {it[0] for it in hypothesis.items}
    if not kinds <= {"all", "none", "edge", "xedge"}:
        raise ConfigError(f"hypothesis {hypothesis.name!r} is not an edge set", hint="evaluate it with evaluate()")
    every = "all" in kinds or not kinds & {"none", "edge"}
    mask = torch.full((B, T, len(graph.edges)), 1.0 if every else 0.0)
    for it in [i for i in hypothesis.items if i[0] == "edge"] + [i for i in hypothesis.items if i[0] == "xedge"]:
        if it[0] in ("edge", "xedge"):  # includes first, then exclusions: P = I minus X
            for e, pos in _edges_with_positions(graph, it).items():
                where = torch.ones(B, T, dtype=torch.bool) if pos is None else position_mask(pos, B, T, positions)
                col = mask[:, :, graph.edge_index[e]]
                mask[:, :, graph.edge_index[e]] = torch.where(where, torch.tensor(float(it[0] == "edge")), col)
    return mask[None]


def avoid_node(graph: Graph, node: str) -> Hypothesis:
    """P = every path that does not pass through ``node`` (= activation patching of ``node``)."""
    graph.node(node)
    return Hypothesis.from_edges([e for e in graph.edges if node not in (e.src, e.dst)], name=f"avoid {node}")
