"""Metrics: hand-derived answers on linear toys, slow references, chunk independence, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe.pullback import Gradient, GuidedBackprop
from innerprobe.pullback import metrics as M


class Linear2(nn.Module):
    """logits = [w.x, 0] on [N, 1, 4, 4] images."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.w = nn.Parameter(torch.randn(16))

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([z, torch.zeros_like(z)], 1)


@pytest.fixture
def lin():
    return Linear2()


@pytest.fixture
def x():
    torch.manual_seed(2)
    return torch.rand(8, 1, 4, 4)


def slow_deletion(model, x, attr, t, steps, insert=False, seed=0):
    order = M._ranking(attr, seed)
    out = []
    for i in range(x.shape[0]):
        ps = []
        for k in range(steps + 1):
            keep = torch.zeros(16, dtype=torch.bool)
            keep[order[i, : round(16 * k / steps)]] = True
            xi = x[i].flatten().clone()
            xi = torch.where(keep, xi, torch.zeros(())) if insert else torch.where(keep, torch.zeros(()), xi)
            with torch.no_grad():
                ps.append(model(xi.view(1, 1, 4, 4)).softmax(-1)[0, t].item())
        out.append(np.trapezoid(ps, dx=1 / steps))
    return torch.tensor(out, dtype=torch.float32)


def test_deletion_insertion_match_slow_reference_and_chunks(lin, x):
    a = x * lin.w.detach().view(1, 1, 4, 4)
    for insert, fn in ((False, M.deletion_auc), (True, M.insertion_auc)):
        ref = slow_deletion(lin, x, a, 0, 8, insert)
        assert torch.allclose(fn(lin, x, a, 0, steps=8), ref, atol=1e-5)
        assert torch.allclose(fn(lin, x, a, 0, steps=8, chunk_size=5), ref, atol=1e-5)


def test_exact_attribution_beats_reversed(lin, x):
    a = x * lin.w.detach().view(1, 1, 4, 4)
    assert (M.deletion_auc(lin, x, a, 0) < M.deletion_auc(lin, x, -a, 0)).all()
    assert (M.insertion_auc(lin, x, a, 0) > M.insertion_auc(lin, x, -a, 0)).all()


def test_infidelity_zero_for_exact_and_scale_invariant(lin, x):
    g = Gradient(lin).attribute(x, 0)
    inf = M.infidelity(lin, x, g, 0)
    assert inf.max() < 1e-8
    rnd = torch.randn_like(x)
    r1 = M.infidelity(lin, x, rnd, 0)
    assert (r1 > 1e-3).all()
    assert torch.allclose(M.infidelity(lin, x, 3.0 * rnd, 0), r1, rtol=1e-4)
    assert torch.allclose(M.infidelity(lin, x, rnd, 0, chunk_size=7), r1)


def test_faithfulness_correlation(lin, x):
    g = Gradient(lin).attribute(x, 0)
    fc = M.faithfulness_correlation(lin, x, g * x, 0)
    assert torch.allclose(fc, torch.ones_like(fc), atol=1e-5)
    assert (M.faithfulness_correlation(lin, x, -g * x, 0) < -0.99).all()
    assert torch.allclose(M.faithfulness_correlation(lin, x, g * x, 0, chunk_size=3), fc)


def test_localisation_by_hand():
    attr = torch.zeros(2, 1, 3, 3)
    attr[0, 0, 0, 0], attr[0, 0, 2, 2], attr[0, 0, 1, 1] = 3.0, 1.0, -5.0
    attr[1, 0, 2, 2] = 2.0
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[:, 0, :2] = True  # 2 pixels
    out = M.localisation(attr, mask)
    assert out["relevance_mass"].tolist() == pytest.approx([0.75, 0.0])
    assert out["rank_accuracy"].tolist() == pytest.approx([0.0 + 0.5, 0.0])  # top-2 |A| of image 0: (1,1) and (0,0)
    assert out["pointing_game"].tolist() == [1.0, 0.0]
    focus = M.mosaic_focus(attr, torch.ones_like(attr), mask)
    assert focus.tolist() == pytest.approx([0.75, 0.0])


def test_cascading_randomisation_leaves_model_and_drops():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(10, 1, 4, 4)
    rows = M.cascading_randomisation(model, x, 0, lambda m, xx, t: Gradient(m).attribute(xx, t))
    assert [r["layer"] for r in rows] == ["5", "3", "1"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())
    assert rows[-1]["spearman"] < 0.9


def test_random_logit_guided_is_class_insensitive():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), *[m for _ in range(4) for m in (nn.LazyLinear(32), nn.ReLU())], nn.Linear(32, 10)
    ).eval()
    x = torch.rand(16, 1, 4, 4)
    model(x)
    sim_gb = M.random_logit(lambda xx, t: GuidedBackprop(model).attribute(xx, t), x, 0, 10)
    sim_g = M.random_logit(lambda xx, t: Gradient(model).attribute(xx, t), x, 0, 10)
    assert sim_gb.mean() > sim_g.mean()


def test_paired_bootstrap():
    a = np.random.default_rng(0).normal(size=(3, 50))
    r = M.paired_bootstrap(a + 0.5, a)
    assert r["mean"] == pytest.approx(0.5) and r["lo"] == pytest.approx(0.5) and r["hi"] == pytest.approx(0.5)
    b = np.random.default_rng(1).normal(size=(3, 200))
    r2 = M.paired_bootstrap(b + 1.0, np.zeros_like(b))
    assert r2["lo"] > 0.5 and r2["hi"] < 1.5 and r2["lo"] < r2["mean"] < r2["hi"]
    r3 = M.paired_bootstrap(b, np.zeros_like(b))
    assert r3["lo"] < 0 < r3["hi"]
    c = b.copy()
    c[0, :5] = np.nan
    assert np.isfinite(M.paired_bootstrap(c, np.zeros_like(c))["mean"])
