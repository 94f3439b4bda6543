"""Zoo transformer (hook sites, canonical sites) and the synthetic induction task."""

import math

import pytest
import torch

from innerprobe.core.hooks import HookSession, count_hooks
from innerprobe.core.sites import resolve
from innerprobe.errors import ConfigError
from innerprobe.zoo.induction import head_scores, sample_induction, train_induction_model
from innerprobe.zoo.transformer import build_transformer

SMALL = {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 12}


def test_hook_sites_shapes_and_per_head_output():
    torch.manual_seed(0)
    m = build_transformer({**SMALL, "ln": True, "d_mlp": 8})
    x = torch.randint(0, 11, (3, 10))
    names = [
        "blocks.1.attn.hook_q_input",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_z",
        "L1.z",
        "L0.mlp_in",
        "logits",
    ]
    with HookSession(m) as hs:
        caps = {n: hs.capture(n)[0] for n in names}
        out = hs.run(x)
    assert caps["blocks.1.attn.hook_q_input"].value.shape == (3, 10, 2, 16)
    assert caps["blocks.1.attn.hook_pattern"].value.shape == (3, 2, 10, 10)
    assert caps["blocks.1.attn.hook_z"].value.shape == (3, 10, 2, 4)
    assert caps["L1.z"].value.shape == (3, 10, 8)
    assert caps["logits"].value.shape == (3, 10, 11) and out.shape == (3, 10, 11)
    # per-head outputs sum (plus the o_proj bias) to the attention output
    attn = m.blocks[1].attn
    heads = attn.head_outputs(caps["blocks.1.attn.hook_z"].value)
    torch.testing.assert_close(heads.sum(2) + attn.o_proj.bias, attn.o_proj(caps["L1.z"].value), rtol=1e-5, atol=1e-5)
    assert count_hooks(m) == 0


def test_canonical_sites_and_head_selection():
    m = build_transformer(SMALL)
    (rs,) = resolve(m, "L1.z[heads=0]")
    assert rs.name == "blocks.1.attn.o_proj" and rs.site.port == "input"
    mask = rs.site.mask_like(torch.zeros(2, 5, 8))
    assert mask[..., :4].all() and not mask[..., 4:].any()
    (q,) = resolve(m, "L0.q[heads=1]")
    assert q.site.head_axis == 2
    assert "L0.mlp_in" not in m.canonical_sites()


def test_shortformer_positions_only_reach_q_and_k():
    torch.manual_seed(0)
    m = build_transformer({**SMALL, "pos": "shortformer"})
    x = torch.randint(0, 11, (2, 6))
    with HookSession(m) as hs:
        v = hs.capture("blocks.0.attn.hook_v_input")[0]
        q = hs.capture("blocks.0.attn.hook_q_input")[0]
        hs.run(x)
    emb = m.embed(x)
    torch.testing.assert_close(v.value[:, :, 0], emb)
    torch.testing.assert_close(q.value[:, :, 0], emb + m.pos_embed(x))


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="unknown transformer config"):
        build_transformer({"n_layer": 2})
    with pytest.raises(ConfigError, match="pos must be"):
        build_transformer({"pos": "rotary"})
    m = build_transformer(SMALL)
    with pytest.raises(ConfigError, match="integer tokens"):
        m(torch.randn(2, 5))
    with pytest.raises(ConfigError, match="exceeds n_ctx"):
        m(torch.zeros(1, 13, dtype=torch.long))


def test_induction_sampler_structure():
    g = torch.Generator().manual_seed(0)
    b = sample_induction(50, g, vocab=20, seq_len=30, seg_min=4, seg_max=8)
    for i in range(50):
        s1, s2, L = int(b.s1[i]), int(b.s2[i]), int(b.length[i])
        assert 4 <= L <= 8 and s1 + L <= s2 and s2 + L <= 30
        assert torch.equal(b.tokens[i, s1 : s1 + L], b.tokens[i, s2 : s2 + L])
        pred = b.predictable[i].nonzero().flatten().tolist()
        assert pred == list(range(s2, s2 + L - 1))  # targets s2+1 .. s2+L-1
    assert (b.predictable ^ b.unpredictable).all()
    c = sample_induction(50, g, structure=b, vocab=20, seq_len=30, seg_min=4, seg_max=8)
    assert torch.equal(c.s1, b.s1) and torch.equal(c.s2, b.s2) and not torch.equal(c.tokens, b.tokens)
    with pytest.raises(ConfigError):
        sample_induction(5, g, vocab=20, seq_len=10, seg_min=4, seg_max=8)


def test_train_induction_model_is_reproducible_and_restores_threads():
    threads = torch.get_num_threads()
    kw = dict(steps=3, batch=8, eval_size=16, log_every=2, d_model=16, d_head=4, n_heads=2, progress=False)
    m1, met1, curve, cfg = train_induction_model(0, **kw)
    m2, met2, _, _ = train_induction_model(0, **kw)
    assert torch.get_num_threads() == threads
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert met1["ln_vocab"] == pytest.approx(math.log(64)) and len(met1["induction_scores"]) == 2
    assert [c["step"] for c in curve] == [2, 3]
    rebuilt = build_transformer(cfg["model"])
    rebuilt.load_state_dict(m1.state_dict())
    with pytest.raises(ConfigError, match="unknown induction params"):
        train_induction_model(0, stepz=3)


def test_head_scores_find_a_hand_made_previous_token_pattern():
    torch.manual_seed(0)
    m = build_transformer({**SMALL, "n_ctx": 40, "vocab": 64})
    b = sample_induction(8, torch.Generator().manual_seed(1), vocab=64, seq_len=40)
    T = 40
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(0, T - 1)] = 1
    with HookSession(m) as hs:  # sessions nest: head_scores' capture sees this edit

        def put(v, rs):
            v = v.clone()
            v[:, 0] = prev
            return v

        hs.edit("blocks.0.attn.hook_pattern", put)
        s = head_scores(m, b)
    assert s["prev_token_scores"][0][0] == pytest.approx(1.0)
    assert s["prev_token_scores"][0][1] < 0.5 and s["induction_scores"][0][0] < 0.2
    assert set(s) == {"prev_token_scores", "induction_scores", "duplicate_scores"}
