"""Pullbacks on language models: HF GPT-2 / Llama and TransformerLens from configs (random weights), integer tokens."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from innerprobe.core.hooks import count_hooks
from innerprobe.errors import ConfigError, InnerprobeError, ModelError
from innerprobe.pullback import (
    AttentionSurrogate,
    ExcitationPullback,
    Gradient,
    IntegratedGradients,
    LogitDiff,
    PullbackWarning,
    Rules,
    TokenTarget,
)

transformers = pytest.importorskip("transformers")


def gpt2(act="gelu_new", seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        vocab_size=40,
        n_positions=12,
        activation_function=act,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def llama(act="silu", seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_size=16,
        intermediate_size=32,
        vocab_size=40,
        max_position_embeddings=12,
        hidden_act=act,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg).double().eval()


TOKENS = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(0))


def state(model):
    return ([p.detach().clone() for p in model.parameters()], [m.training for m in model.modules()], count_hooks(model))


def same_state(model, before):
    params, modes, hooks = before
    return (
        all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
        and modes == [m.training for m in model.modules()]
        and count_hooks(model) == hooks
    )


@pytest.mark.parametrize("make", [lambda: gpt2("relu"), lambda: llama("relu")], ids=["gpt2", "llama"])
def test_small_T_equals_gradient_on_lm(make):
    """ReLU MLPs: the pullback at T -> 0 is the plain gradient of the same target (IO - S logit difference)."""
    model = make()
    target = LogitDiff([3, 5, 7], [4, 6, 8])
    g = Gradient(model).attribute(TOKENS, target=target)
    ep = ExcitationPullback(model, 1e-9)
    p = ep.attribute(TOKENS, target=target)
    assert g.shape == (3, 6, 16) and TOKENS.dtype == torch.long
    assert ep.coverage.by_op()["relu"] == (2, 2)
    assert torch.allclose(p, g, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(ExcitationPullback(model, 0.3).attribute(TOKENS, target=target), g, rtol=1e-3)


@pytest.mark.parametrize("make,op", [(gpt2, "gelu"), (llama, "silu")], ids=["gpt2-gelu_new", "llama-swiglu"])
def test_coverage_on_lms(make, op):
    model = make()
    ep = ExcitationPullback(model)
    ep.attribute(TOKENS, target=(-1, 5))
    assert ep.coverage.by_op()[op] == (2, 2)  # gelu_new is a hand-written module, SiLU a functional call
    assert 0 < ep.coverage.fraction < 1  # norms and attention seen, not gated by default
    succ = ExcitationPullback(model, preset="successor", functional=True)
    succ.attribute(TOKENS, target=(-1, 5))
    assert succ.coverage.fraction == 1.0 and succ.coverage.seen == ep.coverage.seen
    assert "attention" in str(succ.coverage) or "sdpa" in str(succ.coverage)


def test_gpt2_gelu_variants_are_gated():
    for act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "gelu"):
        ep = ExcitationPullback(gpt2(act))
        ep.attribute(TOKENS[:1], target=3)
        assert ep.coverage.by_op()["gelu"] == (2, 2), act


def test_hand_written_gelu_module_gate_matches_formula():
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), NewGELUActivation(), nn.Linear(7, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    got = ExcitationPullback(model).attribute(x, 1)
    with torch.no_grad():
        z = model[0](x)
        ref = (model[2].weight[1] * torch.special.ndtr(z / 1.0)) @ model[0].weight
    assert torch.allclose(got, ref, rtol=1e-12)
    assert torch.equal(torch.cat([model(x)]), model(x))


def test_token_relevance_reductions():
    model = gpt2()
    ep = ExcitationPullback(model)
    A = ep.attribute(TOKENS, target=TokenTarget([3, 4, 5], position=[-1, -2, 3]))
    emb = model.transformer.wte(TOKENS).detach()
    assert torch.allclose(
        ep.attribute(TOKENS, target=TokenTarget([3, 4, 5], [-1, -2, 3]), reduce="dot"), (A * emb).sum(-1)
    )
    assert torch.allclose(
        ep.attribute(TOKENS, target=TokenTarget([3, 4, 5], [-1, -2, 3]), reduce="norm"), A.norm(dim=-1)
    )
    assert torch.equal(ep.layer_values, emb)
    ig, delta = IntegratedGradients(model, steps=64).attribute(
        TOKENS, target=3, baselines=0, return_convergence_delta=True, reduce="sum"
    )
    assert ig.shape == (3, 6) and delta.abs().max() < 1e-2 * ig.abs().sum(1).max()


def test_chunked_tokens_and_per_input_targets():
    model = llama()
    target = LogitDiff([3, 5, 7], [4, 6, 8], position=[-1, -1, 2])
    full = ExcitationPullback(model).attribute(TOKENS, target=target)
    chunked = ExcitationPullback(model, chunk_size=2).attribute(TOKENS, target=target)
    assert torch.allclose(full, chunked, rtol=1e-10, atol=1e-13)


def test_norm_and_attention_surrogates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    got = ExcitationPullback(model, norm="detach").attribute(x, 2)
    with torch.no_grad():
        z = model[0](x)
        inv = torch.rsqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-5)
        ref = (model[2].weight[2] * model[1].weight * inv) @ model[0].weight
    assert torch.allclose(got, ref, rtol=1e-10)
    # LlamaRMSNorm is hand-written: its mean square is detached inside the module
    m = llama("relu")
    hard = Gradient(m).attribute(TOKENS, target=3)
    det = ExcitationPullback(m, 1e-9, norm="detach")
    soft = det.attribute(TOKENS, target=3)
    assert det.coverage.by_op()["norm_module"] == (5, 5) and not torch.allclose(hard, soft, rtol=1e-3)
    # attention at T = 1 changes nothing; T = 2 does
    g2 = gpt2("relu")
    base = Gradient(g2).attribute(TOKENS, target=3)
    one = Gradient(g2, rules=Rules([], functional={"sdpa": AttentionSurrogate(1.0)})).attribute(TOKENS, target=3)
    two = Gradient(g2, rules=Rules([], functional={"sdpa": AttentionSurrogate(2.0)})).attribute(TOKENS, target=3)
    assert torch.allclose(one, base, rtol=1e-10, atol=1e-13) and not torch.allclose(two, base, rtol=1e-3)


def test_transformer_lens_functional_gelu_new():
    tl = pytest.importorskip("transformer_lens")
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=8,
        d_head=8,
        n_heads=2,
        d_vocab=20,
        act_fn="gelu_new",
        d_mlp=32,
        dtype=torch.float64,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tl.HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    ep = ExcitationPullback(model, preset="successor", functional=True)
    r = ep.attribute(tokens, target=3, reduce="dot")
    assert r.shape == (2, 6)
    assert ep.coverage.by_op()["gelu"] == (2, 2) and ep.coverage.fraction == 1.0
    before = Gradient(model).attribute(tokens, target=3)
    assert not torch.allclose(ExcitationPullback(model).attribute(tokens, target=3), before, rtol=1e-3)


class Checkpointed(nn.Module):
    def __init__(self, reentrant):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.r, self.b, self.reentrant = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), reentrant

    def forward(self, x):
        return self.b(cp.checkpoint(lambda u: self.r(self.a(u)), x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_is_refused(reentrant):
    model = Checkpointed(reentrant).eval()
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelError, match="checkpoint"):
            ExcitationPullback(model).attribute(torch.randn(2, 4), 0)
    assert same_state(model, before)


def test_train_mode_warns_and_model_restored():
    model = gpt2()
    model.train()
    before = state(model)
    with pytest.warns(PullbackWarning, match="train mode"):
        a = ExcitationPullback(model).attribute(TOKENS, target=3)
    assert same_state(model, before)
    model.eval()
    assert torch.equal(a, ExcitationPullback(model).attribute(TOKENS, target=3))  # dropout was off


@pytest.mark.parametrize(
    "bad,kind",
    [
        (dict(target=40), ConfigError),
        (dict(target=(9, 1)), ConfigError),
        (dict(target=LogitDiff([1, 2], 3)), ConfigError),
        (dict(target=1.5), ConfigError),
        (dict(target=3, reduce="mean"), ConfigError),
    ],
)
def test_bad_lm_calls_are_innerprobe_errors_and_leave_model(bad, kind):
    model = gpt2()
    before = state(model)
    with pytest.raises(kind):
        ExcitationPullback(model).attribute(TOKENS, **bad)
    assert same_state(model, before)
    with pytest.raises(InnerprobeError):
        ExcitationPullback(model).attribute(TOKENS.float(), target=3)  # float "tokens" are not embeddings
    assert same_state(model, before)


def test_functional_softmax_outside_attention_is_ignored():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 3)

        def forward(self, x):
            return F.softmax(self.l(x), -1)

    with pytest.warns(PullbackWarning, match="gated no call"):
        ep = ExcitationPullback(Head().double())
        ep.attribute(torch.randn(2, 4, dtype=torch.float64), 0)
    assert ep.coverage.seen == 0
