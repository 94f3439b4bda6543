"""patch.workflow: the edge report and proportion CI shared by ``innerprobe patch`` and the path-patching studies."""

import json

import numpy as np
import pytest
import torch

from innerprobe.core.graph import build_graph
from innerprobe.patch import discovery, eap_scores, lm_loss, prepare
from innerprobe.patch.metrics import bootstrap_proportion
from innerprobe.patch.workflow import edge_report, proportion_ci
from innerprobe.zoo.transformer import build_transformer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 12, "n_ctx": 10})
    g = torch.Generator().manual_seed(1)
    x_r, x_c = torch.randint(0, 12, (6, 10), generator=g), torch.randint(0, 12, (6, 10), generator=g)
    graph = build_graph(model)
    return graph, prepare(graph, x_r, x_c), lm_loss(x_r)


def test_edge_report_is_the_exact_sweep_and_eap_side_by_side(setup):
    graph, runs, loss = setup
    rep = edge_report(graph, runs, loss, ig_steps=2)
    assert torch.allclose(rep.exact, discovery.single_edge_effects(graph, runs, loss))
    assert torch.allclose(rep.eap_ig, eap_scores(graph, runs, loss, ig_steps=2))
    from scipy.stats import spearmanr

    corr = rep.correlations()
    assert corr[0]["slot"] == "all" and corr[0]["n"] == len(graph.edges)
    assert corr[0]["eap"] == pytest.approx(spearmanr(rep.exact, rep.eap)[0])
    assert {c["slot"] for c in corr[1:]} <= {"q", "k", "v", "out"}
    t = rep.table()
    assert len(t) == len(graph.edges) and abs(t[int(rep.order()[0])]["exact"]) == rep.exact.abs().max().item()
    json.dumps(t)
    assert edge_report(graph, runs, loss, estimates=False).eap is None


def test_proportion_ci_matches_the_ratio_of_means_and_its_bootstrap():
    rng = np.random.default_rng(0)
    ue0 = rng.gamma(2.0, 1.0, 200)
    ue = 0.3 * ue0 + rng.normal(0, 0.2, 200)
    c = proportion_ci(ue, ue0, n_boot=2000, seed=0)
    assert c.estimate == pytest.approx((ue0.mean() - ue.mean()) / ue0.mean())
    est, lo, hi = bootstrap_proportion(ue, ue0, n_boot=2000, seed=1)  # an independent implementation
    assert c.lo == pytest.approx(lo, abs=0.02) and c.hi == pytest.approx(hi, abs=0.02) and c.n == 200
