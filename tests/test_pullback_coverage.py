"""Honest coverage: every nonlinearity and pool is counted, gated or not; pool variants; selectors; bad input."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerprobe.core.hooks import count_hooks
from innerprobe.errors import ConfigError, InnerprobeError
from innerprobe.pullback import (
    ExcitationPullback,
    Gate,
    MaxPoolSurrogate,
    PullbackAscent,
    PullbackWarning,
    Rules,
    apply_rules,
    pullback_rules,
)


class Ungated(nn.Module):
    """Nonlinearities innerprobe has no rule for: each must be counted as seen and ungated."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.acts = nn.ModuleList([nn.ReLU6(), nn.LeakyReLU(), nn.Hardtanh(), nn.ELU(), nn.Tanh()])
        self.pool = nn.AdaptiveMaxPool2d(3)  # 8 -> 3: windows of unequal size
        self.fc = nn.Linear(36, 2)

    def forward(self, x):
        h = self.c(x)
        for a in self.acts:
            h = a(h)
        return self.fc(self.pool(h).flatten(1))


def test_ungated_nonlinearities_are_counted_and_warned():
    model = Ungated().double()
    ep = ExcitationPullback(model)
    with pytest.warns(PullbackWarning, match="gated no call"):
        ep.attribute(torch.rand(2, 1, 8, 8, dtype=torch.float64), 0)
    ops = ep.coverage.by_op()
    assert ops == {
        "hardtanh": (0, 2),
        "leaky_relu": (0, 1),
        "elu": (0, 1),
        "tanh": (0, 1),
        "adaptive_max_pool2d": (0, 1),
    }
    assert ep.coverage.fraction == 0.0 and "unequal size" in str(ep.coverage)


class Forms(nn.Module):
    """ReLU written six ways, a 1-D and an adaptive max-pool: all gated like nn.ReLU / nn.MaxPool2d."""

    def __init__(self, form):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.form = nn.Linear(6, 16), nn.Linear(8, 3), form

    def forward(self, x):
        z = self.l1(x)
        h = {
            "relu": lambda: torch.relu(z),
            "clamp": lambda: z.clamp(min=0),
            "torch.clamp": lambda: torch.clamp(z, min=0),
            "clamp_min": lambda: z.clamp_min(0),
            "threshold": lambda: F.threshold(z, 0.0, 0.0),
            "nn.Threshold": lambda: nn.Threshold(0.0, 0.0)(z),
        }[self.form]()
        h = F.max_pool1d(h.unsqueeze(1), 2).squeeze(1)
        return self.l2(h)


@pytest.mark.parametrize("form", ["clamp", "torch.clamp", "clamp_min", "threshold", "nn.Threshold"])
def test_relu_forms_gate_like_relu(form):
    x = torch.randn(5, 6, dtype=torch.float64)
    ref = ExcitationPullback(Forms("relu").double())
    a = ref.attribute(x, 1)
    ep = ExcitationPullback(Forms(form).double())
    assert torch.allclose(ep.attribute(x, 1), a, rtol=1e-12)
    assert ep.coverage.by_op() == ref.coverage.by_op() == {"relu": (1, 1), "max_pool1d": (1, 1)}


def soft_pool(x, k, s, p, T, detach, pad, dil=1, ceil=False):
    """Reference: the softmax-weighted pool over explicitly unfolded windows (autograd does the rest)."""
    out = F.max_pool2d(x, k, s, p, dil, ceil_mode=ceil)
    ho, wo = out.shape[-2:]
    xp = F.pad(x, (p, p, p, p), value=pad)
    eh, ew = (max(0, s * (n - 1) + dil * (k - 1) + 1 - m) for n, m in ((ho, xp.shape[-2]), (wo, xp.shape[-1])))
    xp = F.pad(xp, (0, ew, 0, eh), value=-math.inf)
    cols = F.unfold(xp, k, dilation=dil, stride=s)
    cols = cols.view(x.shape[0], x.shape[1], k * k, -1)[..., : ho * wo]
    w = torch.softmax(cols / T, dim=2)
    w = w.detach() if detach else w
    cols = torch.where(torch.isfinite(cols), cols, torch.zeros(()))
    return (w * cols).sum(2).view(*out.shape)


@pytest.mark.parametrize(
    "k,s,p,dil,ceil",
    [(3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 0, 1, True), (3, 1, 1, 2, False), (2, 2, 1, 1, False)],
)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("padding", ["-inf", "zero"])
def test_pool_surrogate_variants_match_reference(k, s, p, dil, ceil, detach, padding):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    pool = nn.MaxPool2d(k, s, p, dil, ceil_mode=ceil)
    gout = torch.randn_like(pool(x))
    ref = soft_pool(x, k, s, p, 0.3, detach, -math.inf if padding == "-inf" else 0.0, dil, ceil)
    (r,) = torch.autograd.grad(ref, x, gout)
    with apply_rules(pool, Rules([(nn.MaxPool2d, MaxPoolSurrogate(0.3, detach, padding))])) as ctx:
        y = pool(x)
        (g,) = torch.autograd.grad(y, x, gout)
    assert torch.equal(y, F.max_pool2d(x, k, s, p, dil, ceil_mode=ceil))
    assert ctx.coverage.gated == 1
    assert torch.allclose(g, r, rtol=1e-9, atol=1e-12)


def test_wide_value_range_falls_back_exactly():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float32) * 100  # a per-channel shift would underflow: the exact path runs
    x.requires_grad_(True)
    pool = nn.MaxPool2d(3, 2, 1)
    gout = torch.ones_like(pool(x))
    (r,) = torch.autograd.grad(soft_pool(x, 3, 2, 1, 0.3, True, -math.inf), x, gout)
    with apply_rules(pool, Rules([(nn.MaxPool2d, MaxPoolSurrogate(0.3, True))])):
        (g,) = torch.autograd.grad(pool(x), x, gout)
    assert torch.isfinite(g).all() and torch.allclose(g, r, rtol=1e-5, atol=1e-6)


def test_adaptive_and_return_indices_pools():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    (r,) = torch.autograd.grad(soft_pool(x, 2, 2, 0, 0.3, False, -math.inf), x, gout)
    for pool in (nn.AdaptiveMaxPool2d(4), nn.MaxPool2d(2, return_indices=True)):
        with apply_rules(pool, pullback_rules(0.3)) as ctx:
            y = pool(x)
            y = y[0] if isinstance(y, tuple) else y
            (g,) = torch.autograd.grad(y, x, gout)
        assert ctx.coverage.gated == 1 and torch.allclose(g, r, rtol=1e-10)


def test_site_selectors_in_rules_are_refused():
    with pytest.raises(ConfigError, match="whole modules"):
        Rules([("1:input[units=0:2]", Gate())])
    with pytest.raises(ConfigError, match="whole modules"):
        Rules([("1:output.0", Gate())])
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ep = ExcitationPullback(model, rules=Rules([("1", Gate("logistic", 0.5))]))
    ep.attribute(torch.randn(2, 3), 0)
    assert ep.coverage.gated == 1


def test_apply_does_not_import_attribution():
    src = Path(__file__).parents[1] / "src/innerprobe/pullback"
    for name in ("apply.py", "rules.py", "calls.py", "targets.py", "layers.py"):
        tree = ast.parse((src / name).read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "attribution" not in mods, name


def test_bad_inputs_are_innerprobe_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooks = count_hooks(model)
    for bad in (
        torch.randn(2, 3, dtype=torch.float64),
        torch.randn(2, 5),
        torch.empty(0, 3),
        torch.empty(2, 3, device="meta"),
        [[1.0, 2.0, 3.0]],
        torch.full((2, 3), math.nan),
    ):
        with pytest.raises(InnerprobeError):
            ExcitationPullback(model).attribute(bad, 0)
    with pytest.raises(InnerprobeError):
        PullbackAscent(model).attribute(torch.empty(0, 3), 0)
    with pytest.raises(ConfigError, match="unknown keyword"):
        ExcitationPullback(model).attribute(torch.randn(2, 3), 0, n_step=3)
    assert count_hooks(model) == hooks
