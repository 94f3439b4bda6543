"""Side by side with captum: the same calls, with captum's keywords, give the same attributions."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from innerprobe.pullback import (
    ExcitationPullback,
    Gradient,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    SmoothGrad,
    apply_rules,
    pullback_rules,
)

captum = pytest.importorskip("captum.attr")


class TwoInput(nn.Module):
    """A model with an additional forward argument (a per-input scale)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 4)

    def forward(self, x, scale=None):
        h = torch.relu(self.a(x))
        return self.b(h if scale is None else h * scale)


@pytest.fixture
def model():
    return TwoInput().double().eval()


X = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
SCALE = torch.rand(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5


IG_RTOL = 1e-6  # captum multiplies float64 gradients by float32 step sizes (torch.tensor(step_sizes).float())


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left"])
def test_integrated_gradients_same_call(model, method):
    kw = dict(
        baselines=0.1,
        target=[0, 1, 2, 3, 0],
        n_steps=12,
        method=method,
        internal_batch_size=7,
        return_convergence_delta=True,
        additional_forward_args=(SCALE,),
    )
    ours, d_ours = IntegratedGradients(model).attribute(X, **kw)
    theirs, d_theirs = quiet(captum.IntegratedGradients(model).attribute, X, **kw)
    if (
        method == "riemann_trapezoid"
    ):  # captum's trapezoid weights are 1/n with halved ends (sum (n-1)/n); ours sum to 1
        ours, d_ours = ours * (11 / 12), None
    assert torch.allclose(ours, theirs, rtol=IG_RTOL, atol=1e-9)
    if d_ours is not None:
        assert torch.allclose(d_ours, d_theirs.to(d_ours.dtype), rtol=IG_RTOL, atol=1e-7)


def test_saliency_and_input_x_gradient_same_call(model):
    kw = dict(target=2, additional_forward_args=(SCALE,))
    assert torch.allclose(
        Gradient(model).attribute(X, abs=False, **kw), quiet(captum.Saliency(model).attribute, X, abs=False, **kw)
    )
    assert torch.allclose(
        Gradient(model).attribute(X, abs=True, **kw), quiet(captum.Saliency(model).attribute, X, **kw)
    )
    assert torch.allclose(
        InputXGradient(model).attribute(X, **kw), quiet(captum.InputXGradient(model).attribute, X, **kw)
    )


def test_layer_methods_same_call(model):
    kw = dict(target=1, additional_forward_args=(SCALE,))
    for ours, theirs in (
        (LayerGradientXActivation(model, model.a), captum.LayerGradientXActivation(model, model.a)),
        (
            LayerGradientXActivation(model, "a", multiply_by_inputs=False),
            captum.LayerGradientXActivation(model, model.a, multiply_by_inputs=False),
        ),
    ):
        assert torch.allclose(ours.attribute(X, **kw), quiet(theirs.attribute, X, **kw), rtol=1e-10)
    ig = dict(kw, baselines=torch.zeros_like(X), n_steps=10, method="riemann_right", return_convergence_delta=True)
    a, d = LayerIntegratedGradients(model, model.a).attribute(X, **ig)
    b, e = quiet(captum.LayerIntegratedGradients(model, model.a).attribute, X, **ig)
    assert torch.allclose(a, b, rtol=IG_RTOL, atol=1e-9) and torch.allclose(d, e.to(d.dtype), rtol=IG_RTOL, atol=1e-7)
    # captum's attribute_to_layer_input: the input of model.b
    ours = InputXGradient(model, layer=model.b, attribute_to_layer_input=True).attribute(X, **kw)
    theirs = quiet(captum.LayerGradientXActivation(model, model.b).attribute, X, attribute_to_layer_input=True, **kw)
    assert torch.allclose(ours, theirs, rtol=1e-10)


def test_pullback_at_a_layer_is_captum_in_pullback_mode(model):
    """A layer pullback = captum's layer gradient computed inside innerprobe's rules (the successor's PullbackWrapper idea)."""
    ours = ExcitationPullback(model, layer="a").attribute(X, target=3, additional_forward_args=(SCALE,))
    with apply_rules(model, pullback_rules(0.3)):
        theirs = quiet(
            captum.LayerGradientXActivation(model, model.a, multiply_by_inputs=False).attribute,
            X,
            target=3,
            additional_forward_args=(SCALE,),
        )
    assert torch.allclose(ours, theirs, rtol=1e-10)
    assert not torch.allclose(ours, Gradient(model, layer="a").attribute(X, target=3, additional_forward_args=(SCALE,)))


def test_language_model_layer_integrated_gradients():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=30, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    lm = transformers.GPT2LMHeadModel(cfg).double().eval()
    tokens = torch.randint(1, 30, (2, 5), generator=torch.Generator().manual_seed(3))
    base = torch.zeros_like(tokens)
    ours = IntegratedGradients(lm).attribute(tokens, target=[4, 9], baselines=base, n_steps=8, method="gausslegendre")
    theirs = quiet(
        captum.LayerIntegratedGradients(lambda ids: lm(ids).logits[:, -1], lm.transformer.wte).attribute,
        tokens,
        baselines=base,
        target=[4, 9],
        n_steps=8,
        method="gausslegendre",
    )
    assert tokens.dtype == torch.long and ours.shape == (2, 5, 16)
    assert torch.allclose(ours, theirs, rtol=IG_RTOL, atol=1e-9)


def test_noise_tunnel_keywords_accepted(model):
    sg = SmoothGrad(model, seed=0)
    a = sg.attribute(X, target=1, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, additional_forward_args=(SCALE,))
    assert torch.allclose(a, Gradient(model).attribute(X, target=1, additional_forward_args=(SCALE,)))
    assert sg.attribute(X, target=1, nt_samples=3, stdevs=0.2).shape == X.shape
