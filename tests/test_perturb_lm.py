"""APEX on language models (issue 11.1), non-finite logits (14.1) and sweep-folder checks (14.11)."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe.errors import ConfigError, DataError, ModelError
from innerprobe.perturb import NONFINITE, Engine, Readout, apex, escape_early_exit

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def tokens(n=5, t=8, vocab=97, seed=0):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def test_sigma_zero_reproduces_the_clean_next_token_prediction_bitwise(gpt2):
    x = tokens()
    eng = Engine(gpt2, x, samples=4)
    assert [str(r) for r in eng.rsites] == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]  # HF gelu_new modules
    counts, scores = eng.counts([0.0, 3.0], keep_logits=True)
    with torch.no_grad():
        ref = gpt2(x).logits[:, -1]
    assert torch.equal(scores[:, 0], ref[:, None].expand(-1, 4, -1))  # every pass at sigma 0, bitwise
    assert (counts[np.arange(5), 0, eng.y0.numpy()] == 4).all()
    assert torch.equal(eng.y0_token, ref.argmax(-1)) and x.dtype == torch.long  # token ids stay integer
    assert not torch.equal(scores[:, 1], scores[:, 0])


def test_input_site_is_the_token_embedding_and_residual_preset(gpt2):
    x = tokens()
    assert [str(r) for r in Engine(gpt2, x, samples=2, sites=[":input"]).rsites] == ["transformer.wte"]
    assert [str(r) for r in Engine(gpt2, x, samples=2, sites="residual").rsites] == [
        "transformer.h.0:output.0",
        "transformer.h.1:output.0",
    ]


def test_per_input_positions_and_candidates_match_a_manual_gather(gpt2):
    x = tokens(6, 10)
    pos = torch.tensor([3, 9, -1, 0, 5, 7])
    cand = torch.randint(0, 97, (6, 3), generator=torch.Generator().manual_seed(1))
    eng = Engine(gpt2, x, samples=3, position=pos, tokens=cand)
    _, scores = eng.counts([0.0], keep_logits=True)
    with torch.no_grad():
        full = gpt2(x).logits
    manual = full[torch.arange(6), pos % 10].gather(1, cand)
    assert torch.allclose(scores[:, 0, 0], manual, atol=1e-5) and eng.C == 3
    shared = Engine(gpt2, x, samples=3, tokens=[5, 7])
    assert shared.C == 2 and torch.equal(shared.y0_token, full[:, -1][:, [5, 7]].argmax(-1))
    with pytest.raises(ConfigError, match="out of range"):
        Engine(gpt2, x, samples=2, position=10)
    with pytest.raises(ConfigError, match="token ids must lie"):
        Engine(gpt2, x, samples=2, tokens=[1, 500])
    with pytest.raises(ConfigError, match="entries for 6 inputs"):
        Readout(position=[1, 2]).positions(10, 6)


def test_vocabulary_readout_counts_only_seen_tokens_and_escape_readouts_work(gpt2):
    x = tokens(4)
    res = apex(gpt2, x, np.geomspace(0.1, 30, 6), samples=8)
    cls, counts = res.arrays["classes"], res.arrays["counts"]
    assert counts.shape[2] == len(cls) < 97 or counts.shape[2] == 97
    assert (counts.sum(-1) == 8).all() and (np.diff(cls[cls >= 0]) > 0).all()
    assert (cls[res.arrays["y0"]] == res.arrays["y0_class"]).all()
    assert res.data["large_noise_argmax_class"] in cls.tolist() and res.data["readout"]["position"] == 7
    esc = escape_early_exit(gpt2, x, np.geomspace(0.1, 30, 6), samples=8)
    assert np.allclose(esc.sigma, res.arrays["escape_sigma"])


def test_float_inputs_to_a_token_model_get_a_hint_about_token_ids(gpt2):
    with pytest.raises(ModelError, match="integer token ids"):
        Engine(gpt2, tokens().float(), samples=2)


@pytest.mark.slow
def test_llama_default_sites_and_bitwise_sigma_zero():
    x = tokens()
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    eng = Engine(llama, x, samples=2)
    assert [str(r) for r in eng.rsites] == ["model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"]
    _, scores = eng.counts([0.0], keep_logits=True)
    with torch.no_grad():
        assert torch.equal(scores[:, 0, 0], llama(x).logits[:, -1])


def test_transformer_lens_default_sites_are_hook_post_and_match_the_functional_gelu():
    x = tokens()
    tl = pytest.importorskip("transformer_lens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = tl.HookedTransformer(
            tl.HookedTransformerConfig(
                n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=97, act_fn="gelu", d_mlp=64
            )
        ).eval()
    assert [r.name for r in Engine(tm, x, samples=2).rsites] == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    # TL's GELU is functional: the call site and hook_post are the same place, so with the same seed the counts agree
    a = Engine(tm, x, samples=8, sites=["blocks.0.mlp.hook_post"]).counts([0.5, 2.0])
    b = Engine(tm, x, samples=8, sites=["blocks.0.mlp/gelu#0"]).counts([0.5, 2.0])
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- non-finite logits (14.1)
def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_non_finite_noisy_logits_are_their_own_outcome_never_class_0():
    m, x = mlp(), torch.randn(6, 4)
    with torch.no_grad():
        m[2].weight.mul_(100)  # sigma * logit weights overflow float32 at the top of the grid
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = apex(m, x, np.geomspace(1e30, 1e38, 5), samples=8)
    cls = res.arrays["classes"]
    assert cls[-1] == NONFINITE and res.data["nonfinite_passes"] > 0
    assert res.data["large_noise_argmax_is_nonfinite"] and res.data["large_noise_argmax_class"] == NONFINITE
    assert res.tables["sigma"][-1]["nonfinite_share"] == 1.0 and (res.arrays["counts"].sum(-1) == 8).all()


@pytest.mark.parametrize("where", ["weights", "inputs"])
def test_nan_weights_or_inputs_are_refused_not_reported_as_class_0(where):
    m, x = mlp(), torch.randn(4, 4)
    if where == "weights":
        with torch.no_grad():
            m[0].weight[0, 0] = float("nan")
    else:
        x[2, 1] = float("nan")
    with pytest.raises(ModelError, match="not finite"):
        apex(m, x, [0.1, 1.0], samples=4)


# ----------------------------------------------------------------------------- sweep folder (14.11)
def test_truncated_manifest_and_wrong_shape_chunk_are_refused(tmp_path):
    m, x = mlp(), torch.randn(5, 4)
    sig = np.geomspace(0.1, 3, 4)
    ref = apex(m, x, sig, samples=4, out=tmp_path, sigma_chunk=2)
    sweep = tmp_path / "sweep"
    assert not [p for p in sweep.iterdir() if "tmp" in p.name]  # atomic writes leave no temporary files
    chunk = sweep / "counts_0001.npz"
    good = dict(np.load(chunk))
    np.savez(chunk, counts=good["counts"][:3], classes=good["classes"])
    with pytest.raises(DataError, match="counts_0001.npz has counts of shape"):
        apex(m, x, sig, samples=4, out=tmp_path, sigma_chunk=2)
    np.savez(chunk, **good)
    assert np.array_equal(
        apex(m, x, sig, samples=4, out=tmp_path, sigma_chunk=2).arrays["counts"], ref.arrays["counts"]
    )
    text = (sweep / "manifest.json").read_text()
    (sweep / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="unreadable") as e:
        apex(m, x, sig, samples=4, out=tmp_path, sigma_chunk=2)
    assert "\n" not in e.value.message
    (sweep / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="not an object"):
        apex(m, x, sig, samples=4, out=tmp_path, sigma_chunk=2)
