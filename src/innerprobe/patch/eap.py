"""Edge attribution patching (EAP; Syed et al. 2023, arXiv 2310.10348) and EAP-IG
(Hanna et al. 2024, "Have faith in faithfulness", repository hannamw/EAP-IG).

First-order estimate of the change in a metric m when edge u -> v is patched to x_c:

    score(u -> v:s) = (a_u(x_c) - a_u(x_r)) . dm / d slot_{v,s} |_{x_r}

for every edge from the cached clean and counterfactual runs and one backward pass. EAP-IG
("inputs" variant) averages the slot gradients over ``steps`` points alpha = (k + 1/2) / steps on
the straight line from the counterfactual input-node values to the reference ones. Scores use the
same sign as the exact single-edge effect m(G with the edge patched) - m(G(x_r)).

Memory (docs/patching.md, "Gradient approximations"): the slot gradients are never stored.
Each slot's gradient is consumed by a tensor hook the moment backward produces it (one product
with the cached table of a_u(x_c) - a_u(x_r) gives the scores of all its incoming edges), slots
that read the same sources share one forward value, and gradients are taken with respect to the
inputs only (no parameter gradients, nothing written to ``.grad``). So the peak is the graph's
own forward + backward. EAP-IG runs as many interpolation steps per pass, stacked on the batch
axis, as ``memory_budget`` allows (default 1 GiB; at least one).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.graph import Graph
from ..errors import ConfigError
from . import fast
from .path import Runs, _model_state


def eap_scores(
    graph: Graph, runs: Runs, metric: Callable[[torch.Tensor], torch.Tensor], *, ig_steps: int = 0, memory_budget=None
) -> torch.Tensor:
    """[E] estimated effect of patching each edge to x_c on mean(metric). ``ig_steps`` > 0 gives
    EAP-IG; ``memory_budget`` (bytes or e.g. ``"2GiB"``) sets how many IG steps share a pass."""
    if ig_steps < 0:
        raise ConfigError(f"ig_steps must be >= 0, got {ig_steps}", hint="0 for EAP, e.g. 5-20 for EAP-IG")
    tabs = fast._cached(fast._TABLES, runs, lambda: fast._Tables(graph, runs))
    out0 = runs.clean["out"]
    scores = torch.zeros(len(graph.edges), device=out0.device, dtype=torch.float32)
    with _model_state(graph), torch.enable_grad():
        if ig_steps == 0:
            _accumulate(graph, tabs, [{n: runs.inputs_r[n] for n in graph.inputs}], metric, scores, 1.0)
        else:
            per_pass = steps_per_pass(graph, runs, fast.parse_bytes(memory_budget))
            alphas = [(k + 0.5) / ig_steps for k in range(ig_steps)]
            for s0 in range(0, ig_steps, per_pass):
                pts = [
                    {n: runs.inputs_c[n] + a * (runs.inputs_r[n] - runs.inputs_c[n]) for n in graph.inputs}
                    for a in alphas[s0 : s0 + per_pass]
                ]
                _accumulate(graph, tabs, pts, metric, scores, 1.0 / ig_steps)
    return scores.cpu()


def steps_per_pass(graph: Graph, runs: Runs, budget: int) -> int:
    """Interpolation steps per backward pass within ``budget`` bytes: a step keeps about four
    copies of every slot value and node output for backward."""
    per_slot = sum(runs.clean[graph.edges[idx[0]].src].numel() for idx in graph.incoming.values() if idx)
    per_node = sum(v.numel() for v in runs.clean.values())
    item = runs.clean["out"].element_size()
    return max(1, int(budget // max(1, 4 * item * (per_slot + per_node))))


def _accumulate(graph: Graph, tabs, points: list, metric: Callable, scores: torch.Tensor, weight: float) -> None:
    """Add weight * (diff . grad) for every edge, the gradient at each input point in ``points``
    (stacked along the batch axis: one forward, one backward)."""
    S = len(points)
    B = next(iter(points[0].values())).shape[0]
    leaves = {n: torch.cat([p[n] for p in points]).detach().requires_grad_(True) for n in graph.inputs}
    acts: dict = dict(leaves)
    for g in graph.groups:
        if g.kind == "input":
            continue
        shared: dict = {}
        slots = {}
        for n in g.nodes:
            for s in graph.nodes[n].slots:
                key = (frozenset(graph.edges[i].src for i in graph.incoming[(n, s)]), id(graph.const.get((n, s))))
                if key not in shared:
                    shared[key] = graph.slot_value(n, s, [acts[graph.edges[i].src] for i in graph.incoming[(n, s)]])
                v = shared[key].view_as(shared[key])  # its own autograd node: the hook sees this slot's gradient only
                v.register_hook(_scorer(graph, tabs, n, s, S, B, scores, weight))
                slots[(n, s)] = v
        acts.update(zip(g.nodes, graph.run_group(g, slots)))
    out = acts["out"]
    m = sum(metric(out[k * B : (k + 1) * B]).mean() for k in range(S))
    torch.autograd.grad(m, list(leaves.values()), allow_unused=True)


def _scorer(graph: Graph, tabs, n: str, s: str, S: int, B: int, scores: torch.Tensor, weight: float):
    idx = graph.incoming[(n, s)]

    def hook(grad):
        with torch.no_grad():
            g = grad.reshape(S, B, -1).sum(0).reshape(-1)  # the table holds one copy of the B examples
            tab = tabs.table(graph.edges[idx[0]].src)[0]
            rows = [tabs.table(graph.edges[i].src)[1] for i in idx]
            lo, hi = min(rows), max(rows) + 1
            dots = tab[lo:hi].reshape(hi - lo, -1) @ g.to(tab.dtype)
            scores[idx] += weight * dots[[r - lo for r in rows]].to(scores.dtype)
        return None

    return hook
