"""Canonical transformer sites agree across Hugging Face GPT-2 and TransformerLens (built from configs,
with converted weights), and head selection acts on the right head in both."""

import pytest
import torch

from innerprobe import HookSession, SiteError, resolve
from innerprobe.core.families import canonical_sites

transformers = pytest.importorskip("transformers")
tl_mod = pytest.importorskip("transformer_lens")
pytestmark = pytest.mark.oracle

H, D, L, V = 4, 32, 2, 50


@pytest.fixture(scope="module")
def pair():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(
            n_layer=L,
            n_head=H,
            n_embd=D,
            vocab_size=V,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
    ).eval()
    cfg = HookedTransformerConfig(
        n_layers=L,
        n_heads=H,
        d_model=D,
        d_head=D // H,
        d_mlp=4 * D,
        d_vocab=V,
        n_ctx=16,
        act_fn="gelu_new",
        normalization_type="LN",
        default_prepend_bos=False,
    )
    tl = HookedTransformer(cfg)
    tl.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return hf, tl.eval()


def as_heads(site_value, name):
    return (
        site_value.reshape(*site_value.shape[:2], H, -1)
        if site_value.dim() == 3 and name.endswith((".z", ".q", ".k", ".v"))
        else site_value
    )


@pytest.mark.parametrize(
    "name",
    [
        "L0.z",
        "L1.z",
        "L0.q",
        "L1.v",
        "L0.attn_out",
        "L1.mlp_out",
        "L0.mlp_in",
        "L1.resid_pre",
        "L1.resid_post",
        "logits",
        "embed",
    ],
)
def test_canonical_sites_match_between_hf_and_tl(pair, name):
    hf, tl = pair
    x = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    vals = []
    for model in (hf, tl):
        (rs,) = resolve(model, name)
        with HookSession(model) as hs:
            (cap,) = hs.capture(rs)
            hs.run(x)
        v = cap.value
        mask = rs.site.mask_like(v) if rs.site.chunk else None
        if mask is not None:  # HF q/k/v: take the chunk
            v = v[mask.expand_as(v)].reshape(*v.shape[:-1], -1)
        vals.append(as_heads(v, name))
    torch.testing.assert_close(vals[0], vals[1], atol=1e-4, rtol=1e-4)


def test_zeroing_one_head_agrees(pair):
    hf, tl = pair
    x = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(2))
    outs = []
    for model in (hf, tl):
        with HookSession(model) as hs:
            hs.edit("L1.z[heads=2]", lambda v, rs: torch.zeros_like(v))
            out = hs.run(x)
        outs.append(out.logits if hasattr(out, "logits") else out)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    clean = hf(x).logits
    assert not torch.allclose(outs[0], clean)


def test_split_qkv_inputs_in_transformer_lens():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1,
        n_heads=2,
        d_model=8,
        d_head=4,
        d_vocab=11,
        n_ctx=6,
        act_fn="relu",
        attn_only=True,
        use_split_qkv_input=True,
    )
    tl = HookedTransformer(cfg).eval()
    sites = canonical_sites(tl)
    assert sites["L0.q"].module == "blocks.0.hook_q_input" and sites["L0.q"].head_axis == 2
    (rs,) = resolve(tl, "L0.k[heads=1]")
    x = torch.randint(0, 11, (1, 5))
    with HookSession(tl) as hs:
        (cap,) = hs.capture(rs)
        hs.run(x)
    assert cap.value.shape == (1, 5, 2, 8)
    with pytest.raises(SiteError) as e:
        resolve(tl, "L3.z")
    assert "L0.z" in str(e.value)
