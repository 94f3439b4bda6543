"""Path patching (Goldowsky-Dill, MacLeod, Sato, Arora 2023, arXiv 2304.05969).

    from innerprobe.core.graph import build_graph
    from innerprobe.patch import Hypothesis, prepare, evaluate
    graph = build_graph(model)                  # zoo transformer, TransformerLens, HF GPT-2, torch.fx
    runs = prepare(graph, x_r, x_c)             # cached reference and counterfactual runs
    out = evaluate(graph, runs, Hypothesis.parse("edge embed -> a1.*:q"))

Evaluators (:mod:`.path`): the two-version edge-set evaluator (batched per-example masks), the
memoised treeified evaluator for arbitrary path sets. Gradient approximations (:mod:`.eap`):
EAP and EAP-IG. Node patching (:mod:`.activation`). Metrics and bootstrap CIs (:mod:`.metrics`).
Discovery (:mod:`.discovery`): exact single-edge effects, ACDC-style pruning, top-k.
"""
from .activation import patch_run, sweep
from .discovery import acdc, single_edge_effects, top_k
from .eap import eap_scores
from .hypothesis import Hypothesis
from .metrics import bootstrap_proportion, kl_div, lm_loss, logit_diff, proportion, signed_loss
from .path import Runs, edge_mask, evaluate, evaluate_edges, evaluate_paths, prepare

__all__ = ["Hypothesis", "Runs", "acdc", "bootstrap_proportion", "eap_scores", "edge_mask", "evaluate", "evaluate_edges",
           "evaluate_paths", "kl_div", "lm_loss", "logit_diff", "patch_run", "prepare", "proportion", "signed_loss",
           "single_edge_effects", "sweep", "top_k"]
