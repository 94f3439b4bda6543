"""Model families built from small configs (no downloads): every graph equals its model, the all / none
hypotheses reproduce the reference / counterfactual runs, unsupported options are refused by name."""

import pytest
import torch

from innerprobe.core.families import build_graph, canonical_sites, detect
from innerprobe.errors import ModelError
from innerprobe.patch import Hypothesis, evaluate, prepare

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.oracle

V, D, L, H = 40, 32, 2, 4
INIT = 0.3  # HF's default 0.02 makes every effect ~1e-3: scaled so that patching moves logits by O(1)


def hf(cls, cfg_cls, **kw):
    torch.manual_seed(0)
    return cls(cfg_cls(vocab_size=V, initializer_range=INIT, **kw)).eval()


def llama(kv=2, **kw):
    return hf(
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=kv,
        max_position_embeddings=32,
        **kw,
    )


def gpt2(**kw):
    return hf(
        transformers.GPT2LMHeadModel, transformers.GPT2Config, n_embd=D, n_layer=L, n_head=H, n_positions=16, **kw
    )


def neox(**kw):
    return hf(
        transformers.GPTNeoXForCausalLM,
        transformers.GPTNeoXConfig,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        max_position_embeddings=32,
        **kw,
    )


def mistral():
    return hf(
        transformers.MistralForCausalLM,
        transformers.MistralConfig,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        max_position_embeddings=32,
        sliding_window=3,
    )


def qwen2():
    return hf(
        transformers.Qwen2ForCausalLM,
        transformers.Qwen2Config,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )


def qwen3():
    return hf(
        transformers.Qwen3ForCausalLM,
        transformers.Qwen3Config,
        hidden_size=D,
        intermediate_size=2 * D,
        head_dim=D // H,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )


def tl(**kw):
    tl_mod = pytest.importorskip("transformer_lens")
    torch.manual_seed(0)
    cfg = dict(
        n_layers=L,
        n_heads=H,
        d_model=D,
        d_head=D // H,
        d_mlp=2 * D,
        d_vocab=V,
        n_ctx=16,
        act_fn="gelu",
        initializer_range=INIT,
    )
    return tl_mod.HookedTransformer(tl_mod.HookedTransformerConfig(**{**cfg, **kw})).eval()


def logits(out):
    return out.logits if hasattr(out, "logits") else out


MODELS = {
    "hf-gpt2": gpt2,
    "llama-gqa": llama,
    "llama-mha-bias": lambda: llama(kv=H, attention_bias=True, mlp_bias=True),
    "mistral-window3": mistral,
    "qwen2-mqa": qwen2,
    "qwen3-qk-norm": qwen3,
    "neox-parallel": lambda: neox(rotary_pct=0.25),
    "neox-sequential": lambda: neox(use_parallel_residual=False),
    "tl": tl,
    "tl-split-qkv": lambda: tl(use_split_qkv_input=True),
    "tl-parallel_attn_mlp": lambda: tl(parallel_attn_mlp=True),
    "tl-shortformer": lambda: tl(positional_embedding_type="shortformer"),
    "tl-normalization_type=None": lambda: tl(normalization_type=None),
    "tl-rms-rotary": lambda: tl(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4),
    "tl-attn-only": lambda: tl(attn_only=True),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_equals_model_and_all_none_reproduce_runs(name):
    model = MODELS[name]()
    graph = build_graph(model)  # raises if graph forward != model(x) on a probe
    g = torch.Generator().manual_seed(1)
    x_r, x_c = torch.randint(0, V, (3, 7), generator=g), torch.randint(0, V, (3, 7), generator=g)
    with torch.no_grad():
        ref, cf = logits(model(x_r)), logits(model(x_c))
    assert (ref - cf).abs().max() > 0.3, "random weights must give O(1) effects"
    torch.testing.assert_close(graph.forward(x_r), ref, atol=1e-4, rtol=1e-4)
    runs = prepare(graph, x_r, x_c)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.all()), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.none()), cf, atol=1e-4, rtol=1e-4)
    assert graph.node("L1.z[heads=2]").name == "a1.2" and graph.node("logits").name == "out"


def test_tl_normalization_before_and_after_is_refused_by_name():
    model = tl(use_normalization_before_and_after=True, normalization_type="RMS")
    with pytest.raises(ModelError, match="use_normalization_before_and_after"):
        build_graph(model)


def test_tl_grouped_query_attention_is_refused_by_name():
    with pytest.raises(ModelError, match="n_key_value_heads"):
        build_graph(tl(n_key_value_heads=2))


def test_a_wrong_graph_is_an_error_naming_the_options(monkeypatch):
    model = llama()
    from innerprobe.core.families import llama as fam

    monkeypatch.setattr(fam, "_window", lambda cfg, l: 2)  # pretend the builder mis-models the mask
    with pytest.raises(ModelError, match="differs from the model's own forward.*num_key_value_heads"):
        build_graph(model)


def test_detection_is_one_registry():
    assert detect(llama()).name == "llama" and detect(qwen2()).name == "llama"
    assert detect(neox()).name == "gpt-neox" and detect(gpt2()).name == "hf-gpt2"
    sites = canonical_sites(llama())
    assert sites["L0.k"].n_heads == 2 and sites["L0.q"].n_heads == H and "pos_embed" not in sites
