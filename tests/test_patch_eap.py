"""EAP / EAP-IG against exact single-edge effects; discovery helpers; metrics."""

import numpy as np
import pytest
import torch
from test_patch_paths import D, random_dag

from innerprobe.core.graph import build_graph
from innerprobe.errors import ConfigError
from innerprobe.patch import discovery as disc
from innerprobe.patch.eap import eap_scores
from innerprobe.patch.metrics import bootstrap_proportion, kl_div, lm_loss, proportion
from innerprobe.patch.path import prepare
from innerprobe.zoo.transformer import build_transformer


def test_eap_is_exact_in_a_linear_graph_with_a_linear_metric():
    graph = random_dag(4, linear=True)
    runs = prepare(graph, torch.randn(5, 2, D), torch.randn(5, 2, D))
    metric = lambda out: out.sum(-1)  # noqa: E731
    exact = disc.single_edge_effects(graph, runs, metric, chunk=3)
    torch.testing.assert_close(eap_scores(graph, runs, metric), exact, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eap_scores(graph, runs, metric, ig_steps=3), exact, rtol=1e-4, atol=1e-5)


def test_acdc_keeps_everything_at_negative_tau_and_nothing_at_huge_tau():
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8})
    graph = build_graph(model)
    runs = prepare(graph, torch.randint(0, 11, (4, 6)), torch.randint(0, 11, (4, 6)))
    loss = lm_loss(runs.x_r)
    kept, log = disc.acdc(graph, runs, loss, tau=-1e9)
    assert kept == frozenset(graph.edges) and not any(r["removed"] for r in log)
    kept, log = disc.acdc(graph, runs, loss, tau=1e9)
    assert kept == frozenset() and all(r["removed"] for r in log)
    assert len(log) == len(graph.edges)


def test_prune_dangling_and_compare():
    torch.manual_seed(0)
    graph = build_graph(
        build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 8, "d_head": 4, "vocab": 5, "n_ctx": 4})
    )
    es = {graph.edge("embed->a0.0:v"), graph.edge("a0.0->a1.1:k"), graph.edge("a1.1->out"), graph.edge("a0.1->a1.0:q")}
    kept = disc.prune_dangling(graph, es)
    assert graph.edge("a0.1->a1.0:q") not in kept and len(kept) == 3
    c = disc.compare(kept, es)
    assert c["precision"] == 1.0 and c["recall"] == 0.75


def test_proportion_is_a_ratio_of_means_with_bootstrap_ci():
    ue0 = np.array([1.0, 3.0, 2.0, 2.0])
    ue = np.array([0.5, 0.0, 1.5, 0.0])
    assert proportion(ue, ue0) == pytest.approx((2.0 - 0.5) / 2.0)
    assert proportion(ue, ue0) != pytest.approx(np.mean(1 - ue / ue0))
    est, lo, hi = bootstrap_proportion(ue, ue0, n_boot=200)
    assert lo <= est <= hi
    assert proportion(ue0, ue0) == 0.0 and proportion(np.zeros(4), ue0) == 1.0
    with pytest.raises(ConfigError, match="no effect"):
        proportion(ue, np.zeros(4))


def test_kl_and_loss_shapes():
    logits = torch.randn(2, 3, 5, 7)  # [K, B, T, V]
    tokens = torch.randint(0, 7, (3, 5))
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 2:] = True
    assert lm_loss(tokens, mask)(logits).shape == (2, 3)
    kl = kl_div(mask)(logits[0], logits)
    assert kl.shape == (2, 3) and torch.allclose(kl[0], torch.zeros(3), atol=1e-6) and (kl[1] > 0).all()


def test_eap_converges_to_exact_as_the_counterfactual_approaches_the_reference():
    from innerprobe.patch.path import Runs

    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 12, "n_ctx": 20})
    graph = build_graph(model)
    xr, xc = torch.randint(0, 12, (6, 20)), torch.randint(0, 12, (6, 20))
    r = prepare(graph, xr, xc)
    loss = lm_loss(xr)
    errs = []
    for eps in (1.0, 0.01):
        inc = {n: r.inputs_r[n] + eps * (r.inputs_c[n] - r.inputs_r[n]) for n in graph.inputs}
        with torch.no_grad():
            _, cf = graph.forward(None, inputs=inc, return_acts=True)
        rr = Runs(xr, xc, r.clean, cf, r.inputs_r, inc)
        exact, eap = disc.single_edge_effects(graph, rr, loss), eap_scores(graph, rr, loss)
        errs.append(float((exact - eap).abs().max() / exact.abs().max()))
    assert errs[1] < 0.05 < errs[0]


def _tiny_runs():
    torch.manual_seed(0)
    model = build_transformer(
        {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, "ln": True, "d_mlp": 8}
    )
    graph = build_graph(model)
    g = torch.Generator().manual_seed(3)
    runs = prepare(graph, torch.randint(0, 11, (4, 6), generator=g), torch.randint(0, 11, (4, 6), generator=g))
    return model, graph, runs


def test_eap_ig_steps_per_pass_change_nothing_and_no_parameter_grads():
    from innerprobe.patch.eap import steps_per_pass

    model, graph, runs = _tiny_runs()
    loss = lm_loss(runs.x_r)
    assert steps_per_pass(graph, runs, 1) == 1 and steps_per_pass(graph, runs, 1 << 30) >= 4
    one = eap_scores(graph, runs, loss, ig_steps=4, memory_budget=1)
    many = eap_scores(graph, runs, loss, ig_steps=4, memory_budget="1GiB")
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError, match="ig_steps"):
        eap_scores(graph, runs, loss, ig_steps=-1)


def test_acdc_pp_extremes_budget_and_verified_metric():
    from innerprobe.patch.path import evaluate_edges

    _, graph, runs = _tiny_runs()
    loss = lm_loss(runs.x_r)
    kept, rep = disc.acdc_pp(graph, runs, loss, tau=-1e9, ig_steps=2)
    assert kept == frozenset(graph.edges) and rep["eap_removed"] == 0 and rep["exact_removed"] == 0
    kept, rep = disc.acdc_pp(graph, runs, loss, tau=1e9, ig_steps=2)
    assert kept == frozenset() and rep["eap_removed"] == len(graph.edges)
    # no time: EAP pruning only, every other edge kept unverified
    kept, rep = disc.acdc_pp(graph, runs, loss, tau=0.01, prune_tau=1e-4, ig_steps=2, time_budget_s=0.0)
    assert rep["unverified"] == len(graph.edges) - rep["eap_removed"] and rep["exact_removed"] == 0
    kept, rep = disc.acdc_pp(graph, runs, loss, tau=0.01, prune_tau=1e-4, ig_steps=2, batch=5)
    assert rep["unverified"] == 0 and 0 < len(kept) < len(graph.edges)
    # the reported final metric is the exact metric of the circuit before dangling edges are cut
    mask = torch.ones(len(graph.edges))
    assert rep["metric_final"] - rep["metric_after_eap_prune"] < 0.01 * max(1, rep["exact_removed"]) + 1e-6
    full = float(loss(evaluate_edges(graph, runs, mask[None])[0]).mean())
    assert rep["metric_full"] == pytest.approx(full, abs=1e-6)
