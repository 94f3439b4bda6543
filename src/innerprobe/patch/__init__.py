"""Path patching (Goldowsky-Dill, MacLeod, Sato, Arora 2023, arXiv 2304.05969).

    from innerprobe.core.graph import build_graph
    from innerprobe.patch import Hypothesis, prepare, evaluate
    graph = build_graph(model)                  # any registered family (docs/sites.md), checked vs the model
    runs = prepare(graph, x_r, x_c)             # cached reference and counterfactual runs
    out = evaluate(graph, runs, Hypothesis.parse("edge embed -> a1.*:q"))

Evaluators (:mod:`.path`): the two-version edge-set evaluator (batched per-example masks), the
memoised treeified evaluator for listed path sets; compiled hypotheses (:mod:`.compiled`: path
patterns, complements, positions, without listing paths); mean / zero ablation via ``prepare``. Gradient approximations (:mod:`.eap`):
EAP and EAP-IG. Node patching (:mod:`.activation`). Metrics and bootstrap CIs (:mod:`.metrics`).
Discovery (:mod:`.discovery`): exact single-edge effects, ACDC-style pruning, ACDC++ (EAP-IG
prune + exact verification), top-k. The exact edge-set evaluator runs on :mod:`.fast`.
"""

from .activation import ablate_run, patch_run, sweep
from .compiled import evaluate_compiled
from .discovery import acdc, acdc_pp, single_edge_effects, top_k
from .eap import eap_scores
from .hypothesis import Hypothesis
from .metrics import bootstrap_proportion, kl_div, lm_loss, logit_diff, proportion, signed_loss
from .path import Runs, edge_mask, evaluate, evaluate_edges, evaluate_paths, position_edge_mask, prepare

__all__ = [
    "Hypothesis",
    "Runs",
    "ablate_run",
    "acdc",
    "acdc_pp",
    "bootstrap_proportion",
    "eap_scores",
    "edge_mask",
    "evaluate",
    "evaluate_edges",
    "evaluate_compiled",
    "evaluate_paths",
    "kl_div",
    "lm_loss",
    "logit_diff",
    "patch_run",
    "position_edge_mask",
    "prepare",
    "proportion",
    "signed_loss",
    "single_edge_effects",
    "sweep",
    "top_k",
]
