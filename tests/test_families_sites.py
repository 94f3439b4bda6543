"""Canonical sites on a GQA Llama and on TransformerBridges: every site resolves and is reached; per-head
ablations through a site equal the same ablation written by hand with hooks; a position-aware IOI-style
path patch on a Llama graph equals an independent two-pass hook implementation (both conventions)."""

import pytest
import torch

from innerprobe import HookSession, resolve
from innerprobe.core.families import build_graph, canonical_sites
from innerprobe.patch import Hypothesis, evaluate, prepare

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.oracle

V, D, H, KV = 40, 32, 4, 2
DH = D // H


def llama(layers=2):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=layers,
        num_attention_heads=H,
        num_key_value_heads=KV,
        max_position_embeddings=32,
        initializer_range=0.3,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def tokens(seed, shape=(3, 7)):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def capture_all(model, x):
    out = {}
    for name in canonical_sites(model):
        (rs,) = resolve(model, name)
        with HookSession(model) as hs:
            (cap,) = hs.capture(rs)
            hs.run(x)
        out[name] = cap.value
    return out


def test_every_canonical_site_on_a_gqa_llama():
    model = llama()
    vals = capture_all(model, tokens(1))
    assert vals["L1.q"].shape == (3, 7, H * DH) and vals["L1.k"].shape == (3, 7, KV * DH)
    assert vals["L1.pattern"].shape == (3, H, 7, 7) and vals["L0.mlp_post"].shape == (3, 7, 2 * D)
    torch.testing.assert_close(vals["L0.resid_post"], vals["L1.resid_pre"])
    torch.testing.assert_close(vals["L0.resid_mid"], vals["L0.resid_pre"] + vals["L0.attn_out"])
    x = tokens(1)
    torch.testing.assert_close(vals["L1.pattern"], model(x, output_attentions=True).attentions[1])
    outs = []
    for site in ("L1.pattern[heads=1]", "L1.z[heads=1]"):  # a zero pattern is a zero head output
        with HookSession(model) as hs:
            hs.edit(site, lambda v, rs: torch.zeros_like(v))
            outs.append(hs.run(x).logits)
    torch.testing.assert_close(outs[0], outs[1])
    assert (outs[0] - model(x).logits).abs().max() > 1e-2


def zero_cols(lo, hi):
    def fn(t):
        t = t.clone()
        t[..., lo:hi] = 0
        return t

    return fn


@pytest.mark.parametrize(
    "site,module,port,lo,hi",
    [
        ("L1.z[heads=3]", "model.layers.1.self_attn.o_proj", "input", 3 * DH, 4 * DH),
        ("L1.q[heads=2]", "model.layers.1.self_attn.q_proj", "output", 2 * DH, 3 * DH),
        ("L0.k[heads=1]", "model.layers.0.self_attn.k_proj", "output", DH, 2 * DH),  # K/V heads index their own heads
        ("L1.v[heads=0]", "model.layers.1.self_attn.v_proj", "output", 0, DH),
    ],
)
def test_llama_per_head_ablation_equals_hand_hooks(site, module, port, lo, hi):
    model = llama()
    x = tokens(2)
    with HookSession(model) as hs:
        hs.edit(site, lambda v, rs: torch.zeros_like(v))
        by_site = hs.run(x).logits
    mod = dict(model.named_modules())[module]
    f = zero_cols(lo, hi)
    h = (
        mod.register_forward_pre_hook(lambda m, a: (f(a[0]),) + a[1:])
        if port == "input"
        else mod.register_forward_hook(lambda m, a, o: f(o))
    )
    try:
        with torch.no_grad():
            by_hand = model(x).logits
    finally:
        h.remove()
    torch.testing.assert_close(by_site, by_hand)
    assert (by_site - model(x).logits).abs().max() > 1e-2


def test_gqa_kv_receiver_is_per_query_head_and_the_kv_site_names_its_group():
    model = llama()
    graph = build_graph(model)
    assert graph.receivers("L1.k[heads=1]") == [("a1.2", "k"), ("a1.3", "k")]
    x_r, x_c = tokens(3), tokens(4)
    runs = prepare(graph, x_r, x_c)
    # patching every edge into both query heads' k slots = patching the shared K/V head 1 input
    group = evaluate(graph, runs, Hypothesis.parse("all except edge * -> L1.k[heads=1]"))
    with HookSession(model) as hs:
        (kc,) = hs.capture("L1.k")
        hs.run(x_c)
    with HookSession(model) as hs:
        hs.edit("L1.k[heads=1]", lambda v, rs: kc.value)
        by_hooks = hs.run(x_r).logits
    torch.testing.assert_close(group, by_hooks, atol=1e-5, rtol=1e-5)
    one = evaluate(graph, runs, Hypothesis.parse("all except edge * -> a1.2:k"))
    assert (one - group).abs().max() > 1e-3  # one query head's keys only: a different, smaller patch


def ioi_by_hand(model, sender, receiver, end, x_r, x_c, recompute_mlps):
    """Wang et al. 2022's two passes with raw torch hooks on the Hugging Face modules."""
    layers = model.model.layers
    (ls, hs_), (lr, hr) = sender, receiver

    def record(x):
        z, mlp = {}, {}
        hooks = [
            layers[i].self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: z.__setitem__(i, a[0].clone()))
            for i in range(len(layers))
        ]
        hooks += [
            layers[i].mlp.register_forward_hook(lambda m, a, o, i=i: mlp.__setitem__(i, o.clone()))
            for i in range(len(layers))
        ]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        return z, mlp

    z_c, _ = record(x_c)
    z_r, mlp_r = record(x_r)

    def freeze_z(i):
        def pre(m, a):
            z = z_r[i].clone()
            if i == ls:
                z[..., hs_ * DH : (hs_ + 1) * DH] = z_c[i][..., hs_ * DH : (hs_ + 1) * DH]
            return (z,)

        return pre

    hooks = [layers[i].self_attn.o_proj.register_forward_pre_hook(freeze_z(i)) for i in range(lr)]
    if not recompute_mlps:
        hooks += [layers[i].mlp.register_forward_hook(lambda m, a, o, i=i: mlp_r[i]) for i in range(lr)]
    q = {}
    hooks.append(layers[lr].self_attn.q_proj.register_forward_hook(lambda m, a, o: q.__setitem__("q", o.clone())))
    with torch.no_grad():
        model(x_r)
    for h in hooks:
        h.remove()
    rows = torch.arange(x_r.shape[0])

    def put_q(m, a, o):
        o = o.clone()
        o[rows, end, hr * DH : (hr + 1) * DH] = q["q"][rows, end, hr * DH : (hr + 1) * DH]
        return o

    h = layers[lr].self_attn.q_proj.register_forward_hook(put_q)
    try:
        with torch.no_grad():
            return model(x_r).logits
    finally:
        h.remove()


@pytest.mark.parametrize("convention", ["freeze", "recompute-mlps"])
def test_position_aware_ioi_path_patch_on_llama_equals_hand_hooks(convention):
    model = llama(layers=3)
    graph = build_graph(model)
    x_r, x_c = tokens(5), tokens(6)
    end = torch.tensor([6, 4, 5])  # each prompt's END position
    runs = prepare(graph, x_r, x_c)
    h = Hypothesis.sender_receiver("L0.z[heads=1]", "L2.q[heads=2]", positions="END", convention=convention)
    got = evaluate(graph, runs, h, positions={"END": end})
    want = ioi_by_hand(model, (0, 1), (2, 2), end, x_r, x_c, recompute_mlps=convention != "freeze")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - runs.clean["out"]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def bridges():
    tl = pytest.importorskip("transformer_lens.model_bridge")
    tokenizers = pytest.importorskip("tokenizers")
    import tempfile

    vocab = {f"t{i}": i for i in range(V)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="t0", eos_token="t0", unk_token="t0", pad_token="t0"
    )
    path = tempfile.mkdtemp()
    fast.save_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)  # local: no download
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=2,
            n_head=H,
            n_embd=D,
            vocab_size=V,
            n_positions=16,
            initializer_range=0.3,
            attn_implementation="eager",
        )
    ).eval()
    return {
        "gpt2": tl.TransformerBridge.boot_transformers("gpt2", hf_model=gpt2, tokenizer=tokenizer),
        "llama": tl.TransformerBridge.boot_transformers(
            "meta-llama/Llama-3.2-1B", hf_model=llama(), tokenizer=tokenizer
        ),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bridge_sites_tl_names_graph_and_per_head_ablation(bridges, arch):
    br = bridges[arch]
    x_r, x_c = tokens(7), tokens(8)
    vals = capture_all(br, x_r)
    assert {"embed", "logits", "L1.z", "L1.q", "L1.k", "L1.v", "L1.pattern", "L1.mlp_post", "L1.resid_mid"} <= set(vals)
    (rs,) = resolve(br, "blocks.1.attn.hook_z[heads=1]")
    assert str(rs) == "L1.z[heads=1]"  # a TL hook name prints under its canonical name
    with HookSession(br) as hs:
        hs.edit("blocks.1.attn.hook_z[heads=1]", lambda v, rs: torch.zeros_like(v))
        by_site = hs.run(x_r)

    def zero_head(z, hook):  # TransformerLens's own hook API: z arrives as [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, 1] = 0
        return z

    by_tl = br.run_with_hooks(x_r, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(by_site, by_tl)
    assert (by_site - br(x_r)).abs().max() > 1e-2
    graph = build_graph(br)
    runs = prepare(graph, x_r, x_c)
    with torch.no_grad():
        torch.testing.assert_close(evaluate(graph, runs, Hypothesis.none()), br(x_c), atol=1e-4, rtol=1e-4)
