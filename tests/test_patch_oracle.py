"""Cross-library oracle: TransformerLens activation patching on a HookedTransformer from a config."""

import pytest
import torch

tl = pytest.importorskip("transformer_lens")

from innerprobe.core.graph import build_graph  # noqa: E402
from innerprobe.core.hooks import count_hooks  # noqa: E402
from innerprobe.patch.activation import patch_run  # noqa: E402
from innerprobe.patch.hypothesis import Hypothesis  # noqa: E402
from innerprobe.patch.path import avoid_node, evaluate, prepare  # noqa: E402

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def hooked():
    cfg = tl.HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=2,
        d_vocab=13,
        d_mlp=20,
        act_fn="gelu",
        normalization_type="LN",
        use_split_qkv_input=True,
        seed=0,
        device="cpu",
    )
    model = tl.HookedTransformer(cfg)
    model.eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 13, (3, 6), generator=g)
    corrupted = torch.randint(0, 13, (3, 6), generator=g)
    return model, clean, corrupted


def metric_for(clean):
    def metric(logits):
        return logits[:, -1].log_softmax(-1).gather(1, clean[:, -1:]).mean()

    return metric


def test_head_out_by_pos_matches_transformer_lens(hooked):
    from transformer_lens import patching

    model, clean, corrupted = hooked
    metric = metric_for(clean)
    _, cache = model.run_with_cache(clean)
    theirs = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)  # [layer, pos, head]
    n_hooks = count_hooks(model)
    ours = torch.zeros_like(theirs)
    for l in range(2):
        for p in range(clean.shape[1]):
            for h in range(2):
                # TransformerLens patches clean into the corrupted run: base = corrupted, source = clean
                ours[l, p, h] = metric(patch_run(model, f"L{l}.z[heads={h};pos={p}]", corrupted, clean))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert count_hooks(model) == n_hooks


def test_tl_graph_reproduces_model_and_node_patching(hooked):
    from transformer_lens import patching

    model, clean, corrupted = hooked
    graph = build_graph(model)
    torch.testing.assert_close(graph.forward(clean), model(clean), rtol=1e-4, atol=1e-5)
    metric = metric_for(clean)
    _, cache = model.run_with_cache(clean)
    theirs = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)  # [layer, head]
    runs = prepare(graph, corrupted, clean)  # x_r = corrupted base, x_c = clean source
    for l in range(2):
        for h in range(2):
            out = evaluate(graph, runs, avoid_node(graph, f"a{l}.{h}"))
            torch.testing.assert_close(metric(out), theirs[l, h], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.none()), model(clean), rtol=1e-4, atol=1e-5)
