"""Edge attribution patching (EAP; Syed et al. 2023, arXiv 2310.10348) and EAP-IG
(Hanna et al. 2024, repository hannamw/EAP-IG).

First-order estimate of the change in a metric m when edge u -> v is patched to x_c:

    score(u -> v) = (a_u(x_c) - a_u(x_r)) . dm / d slot_v |_{x_r}

for every edge from one clean pass, one counterfactual pass and one backward pass. EAP-IG
("inputs" variant) averages the slot gradients over ``steps`` points on the straight line from
the counterfactual input-node values to the reference ones. Scores use the same sign as the
exact single-edge effect m(G with the edge patched) - m(G(x_r)).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core.graph import Graph
from .path import Runs, _model_state


def _slot_grads(graph: Graph, inputs: dict, metric: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """d mean(metric) / d slot value, for every (node, slot), with downstream effects included."""
    zeros, acts = {}, dict(inputs)
    for g in graph.groups:
        if g.kind == "input":
            continue
        slots = {}
        for n in g.nodes:
            for s in graph.nodes[n].slots:
                v = graph.slot_value(n, s, [acts[graph.edges[i].src] for i in graph.incoming[(n, s)]])
                z = torch.zeros_like(v, requires_grad=True)
                zeros[(n, s)] = z
                slots[(n, s)] = v + z
        acts.update(zip(g.nodes, graph.run_group(g, slots)))
    m = metric(acts["out"]).mean()
    keys = list(zeros)
    grads = torch.autograd.grad(m, [zeros[k] for k in keys], allow_unused=True)
    return {k: (torch.zeros_like(zeros[k]) if gr is None else gr) for k, gr in zip(keys, grads)}


def eap_scores(graph: Graph, runs: Runs, metric: Callable[[torch.Tensor], torch.Tensor], *, ig_steps: int = 0) -> torch.Tensor:
    """[E] estimated effect of patching each edge to x_c on mean(metric). ``ig_steps`` > 0 gives
    EAP-IG (gradients averaged at alpha = (k + 1/2) / steps between x_c and x_r input values)."""
    with _model_state(graph), torch.enable_grad():
        if ig_steps <= 0:
            grads = _slot_grads(graph, {n: runs.inputs_r[n] for n in graph.inputs}, metric)
        else:
            grads = None
            for k in range(ig_steps):
                a = (k + 0.5) / ig_steps
                inp = {n: runs.inputs_c[n] + a * (runs.inputs_r[n] - runs.inputs_c[n]) for n in graph.inputs}
                gk = _slot_grads(graph, inp, metric)
                grads = gk if grads is None else {key: grads[key] + gk[key] for key in grads}
            grads = {key: v / ig_steps for key, v in grads.items()}
    scores = torch.zeros(len(graph.edges))
    with torch.no_grad():
        for i, e in enumerate(graph.edges):
            diff = runs.cf[e.src] - runs.clean[e.src]
            scores[i] = (diff * grads[(e.dst, e.slot)].detach()).sum()
    return scores
