"""Reuse of clean intermediates on the fast path (issue 12; docs/patching.md, "Fast evaluator"):
a head whose query changed reuses the clean keys and values, one whose key changed the clean
queries and values, one whose value changed the clean pattern. The fast evaluator then equals the
reference two-version loop for q-only, k-only, v-only and mixed receivers, per-example and
per-position masks, in any chunks, on random zoo transformers and TransformerLens; the group's
``reuse`` equals its full function for every proper subset of changed slots."""

import itertools
import random

import pytest
import torch

from innerprobe.core.families.residual import HeadsGroup
from innerprobe.core.graph import build_graph
from innerprobe.patch import fast
from innerprobe.patch.path import evaluate_edges, prepare
from innerprobe.zoo.transformer import build_transformer

VOCAB, T, B = 13, 6, 3


def zoo_model(seed: int):
    rnd = random.Random(seed)
    cfg = {
        "n_layers": rnd.choice([2, 3]),
        "n_heads": rnd.choice([2, 3]),
        "d_model": 12,
        "d_head": 4,
        "vocab": VOCAB,
        "n_ctx": 8,
        "ln": rnd.random() < 0.5,
        "d_mlp": rnd.choice([0, 8]),
        "pos": rnd.choice(["standard", "shortformer"]),
    }
    torch.manual_seed(seed)
    return build_transformer(cfg)


def tl_model(norm: str = "LN", attn_only: bool = False):
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(
        n_layers=2,
        d_model=12,
        n_ctx=8,
        d_head=4,
        n_heads=3,
        d_vocab=VOCAB,
        d_mlp=None if attn_only else 16,
        attn_only=attn_only,
        act_fn="gelu",
        normalization_type=norm,
        use_split_qkv_input=True,
        seed=0,
        device="cpu",
    )
    return tl.HookedTransformer(cfg)


MODELS = [pytest.param(lambda s=s: zoo_model(s), id=f"zoo-{s}") for s in range(5)] + [
    pytest.param(lambda: tl_model("LN"), id="tl-ln"),
    pytest.param(lambda: tl_model("RMSPre", attn_only=True), id="tl-rmspre-attn-only"),
]


def setup(make, seed=1):
    model = make().eval()
    graph = build_graph(model)
    g = torch.Generator().manual_seed(seed)
    x_r, x_c = (torch.randint(0, VOCAB, (B, T), generator=g) for _ in range(2))
    return graph, prepare(graph, x_r, x_c)


def head_edges(graph, slot: str) -> list[int]:
    return [i for i, e in enumerate(graph.edges) if e.dst.startswith("a") and e.slot == slot]


def masks_for(graph, rows: list[list[int]]) -> torch.Tensor:
    m = torch.ones(len(rows), len(graph.edges))
    for k, idx in enumerate(rows):
        m[k, idx] = 0
    return m


def row_sets(graph, seed: int) -> dict:
    """Single-edge rows per slot kind, and mixed rows: q + v of one head, k + v of two heads of one
    layer, q of one head with an upstream edge, and a fraction on a q edge."""
    rnd = random.Random(seed)
    out = {s: [[i] for i in head_edges(graph, s)] for s in "qkv"}
    by_dst: dict = {}
    for i, e in enumerate(graph.edges):
        by_dst.setdefault((e.dst, e.slot), []).append(i)
    heads = sorted({e.dst for e in graph.edges if e.dst.startswith("a")})
    mixed = []
    for _ in range(6):
        h1, h2 = rnd.sample(heads, 2)
        mixed.append([rnd.choice(by_dst[(h1, "q")]), rnd.choice(by_dst[(h1, "v")])])
        mixed.append([rnd.choice(by_dst[(h1, "k")]), rnd.choice(by_dst[(h2, "v")])])
        mixed.append(rnd.sample(range(len(graph.edges)), 3))
    out["mixed"] = mixed
    return out


def check(graph, runs, masks, **kw):
    ref = evaluate_edges(graph, runs, masks, method="reference")
    got = fast.fast_evaluate(graph, runs, masks, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_reuse_equals_reference_for_q_k_v_and_mixed_receivers(make):
    graph, runs = setup(make)
    assert any(isinstance(g, HeadsGroup) and g.reuse is not None for g in graph.groups)
    for kind, rows in row_sets(graph, 0).items():
        masks = masks_for(graph, rows)
        if kind == "mixed":
            masks[::4] = torch.where(masks[::4] == 0, torch.tensor(0.3), masks[::4])  # fractions as well
        for chunk in (None, 1, 5):
            check(graph, runs, masks, chunk=chunk)


@pytest.mark.parametrize("make", MODELS[:3] + MODELS[-1:])
def test_reuse_equals_reference_per_example_and_per_position(make):
    graph, runs = setup(make)
    g = torch.Generator().manual_seed(3)
    for kind in "qkv":
        idx = head_edges(graph, kind)
        m = torch.ones(6, B, T, len(graph.edges))
        pick = torch.tensor(idx)[torch.randint(0, len(idx), (6, 2), generator=g)]
        for k in range(6):
            m[k, :, :, pick[k]] = (torch.rand(B, T, 2, generator=g) < 0.5).float()
        assert fast.supports_masks(graph, runs, m) is None
        check(graph, runs, m, chunk=4)
        check(graph, runs, m[:, :, 0], chunk=4)  # per example [K, B, E]


def test_reuse_calls_name_the_changed_slots_and_split_rows_of_one_head():
    """A chunk with a q row and a v row into one head calls reuse once per row with {q} and {v};
    the full head function of that layer is not called."""
    graph, runs = setup(lambda: zoo_model(0))
    L = max(g.nodes[0] for g in graph.groups if g.name.startswith("attn"))[1]
    grp = next(g for g in graph.groups if g.name == f"attn{L}")
    h = grp.nodes[0]
    q = next(i for i, e in enumerate(graph.edges) if (e.dst, e.slot) == (h, "q"))
    v = next(i for i, e in enumerate(graph.edges) if (e.dst, e.slot) == (h, "v"))
    masks = masks_for(graph, [[q], [v], [q, v]])
    ref = evaluate_edges(graph, runs, masks, method="reference")
    calls = []
    reuse, fn = grp.reuse, grp.fn
    grp.reuse = lambda parts, slots, members, changed, k: (
        calls.append((tuple(members), changed, k)) or reuse(parts, slots, members, changed, k)
    )
    grp.fn = lambda *a: calls.append("full") or fn(*a)
    try:
        got = fast.fast_evaluate(graph, runs, masks)
    finally:
        grp.reuse, grp.fn = reuse, fn
    assert ((h,), frozenset("q"), 1) in calls and ((h,), frozenset("v"), 1) in calls
    assert ((h,), frozenset("qv"), 1) in calls and "full" not in calls
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", MODELS[:2] + MODELS[-2:])
def test_group_reuse_equals_the_full_group_for_every_subset_of_changed_slots(make):
    graph, runs = setup(make)
    g = torch.Generator().manual_seed(5)
    for grp in graph.groups:
        if getattr(grp, "reuse", None) is None:
            continue
        clean = {(n, s): runs.clean_slots[(n, s)] for n in grp.nodes for s in graph.nodes[n].slots}
        parts = grp.parts(clean)
        k = 2
        for r in (1, 2):
            for changed in itertools.combinations("qkv", r):
                new = {key: torch.randn(k, *v.shape, generator=g) * 0.3 + v for key, v in clean.items()}
                for members in ([grp.nodes[-1]], list(grp.nodes[:2])):
                    full = {
                        key: (new[key] if key[1] in changed else v.expand(k, *v.shape)).reshape(k * B, *v.shape[1:])
                        for key, v in clean.items()
                    }
                    want = grp.fn(full, members)
                    slots = {(n, s): full[(n, s)] for n in members for s in changed}
                    got = grp.reuse(parts, slots, members, frozenset(changed), k)
                    for a, b in zip(got, want):
                        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_families_without_stages_keep_the_plain_head_function():
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(
        n_layers=2,
        d_model=12,
        n_ctx=8,
        d_head=4,
        n_heads=3,
        d_vocab=VOCAB,
        d_mlp=16,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=4,
        seed=0,
        device="cpu",
    )
    graph, runs = setup(lambda: tl.HookedTransformer(cfg))
    assert all(getattr(g, "reuse", None) is None for g in graph.groups)
    check(graph, runs, masks_for(graph, row_sets(graph, 1)["mixed"]), chunk=3)
