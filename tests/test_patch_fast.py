"""The fast exact evaluator equals the reference two-version loop, memoised treeification and the
brute-force tree: random DAGs (several groups sizes, shapes, subsets), every transformer family,
per-example masks, chunking, memory budgets; it runs on the meta device (no hidden host copies)."""

import random
from dataclasses import astuple, dataclass

import pytest
import torch
from test_patch_paths import D, pair, random_dag

from innerprobe.core.graph import Edge, Graph, Group, Node, build_graph
from innerprobe.errors import ConfigError
from innerprobe.patch import fast
from innerprobe.patch.discovery import single_edge_effects
from innerprobe.patch.hypothesis import Hypothesis
from innerprobe.patch.path import (
    edge_mask,
    evaluate,
    evaluate_edges,
    evaluate_paths,
    evaluate_tree,
    position_edge_mask,
    prepare,
)
from innerprobe.zoo.transformer import build_transformer


def random_masks(graph, K, seed, fractional=False):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(K, len(graph.edges), generator=g) < 0.7).float()
    if fractional:
        m = torch.where(torch.rand(m.shape, generator=g) < 0.2, torch.rand(m.shape, generator=g), m)
    m[0] = 1
    return m


def single_edge_masks(graph):
    E = len(graph.edges)
    m = torch.ones(E, E)
    m[torch.arange(E), torch.arange(E)] = 0
    return m


def assert_fast_equals_reference(graph, runs, masks, atol=5e-6, **kw):
    ref = evaluate_edges(graph, runs, masks, method="reference")
    out = evaluate_edges(graph, runs, masks, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=atol)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_dag_fast_equals_tree_memo_and_reference(seed):
    graph = random_dag(seed, n_comp=4 + seed % 3)
    runs = prepare(graph, *pair())
    rnd = random.Random(seed)
    subsets = [frozenset(e for e in graph.edges if rnd.random() < p) for p in (0.3, 0.7, 0.9) for _ in range(2)]
    out = assert_fast_equals_reference(graph, runs, edge_mask(graph, subsets), chunk=1 + seed % 4)
    for k, E in enumerate(subsets):
        P = [p for p in graph.paths() if all(e in E for e in p)]
        torch.testing.assert_close(out[k], evaluate_tree(graph, runs, P), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[k], evaluate_paths(graph, runs, P), rtol=0, atol=1e-6)
    assert_fast_equals_reference(graph, runs, single_edge_masks(graph))
    assert_fast_equals_reference(graph, runs, random_masks(graph, 7, seed, fractional=True), chunk=3)


@pytest.mark.parametrize("seed", range(3))
def test_random_dag_per_example_masks(seed):
    graph = random_dag(seed)
    runs = prepare(graph, *pair(B=4))
    g = torch.Generator().manual_seed(seed)
    per = (torch.rand(6, 4, len(graph.edges), generator=g) < 0.6).float()
    assert_fast_equals_reference(graph, runs, per)
    assert_fast_equals_reference(graph, runs, per, chunk=2)


def wide_dag(seed: int, solo: bool = False) -> Graph:
    """Groups of 2-3 members with subset support, two activation shapes (3 and 2), nodes read by
    only some later slots (not a residual stream) and a node nobody reads. ``solo``: the same
    functions, one node per group (what the tree evaluator needs for members of unequal shapes)."""
    g = torch.Generator().manual_seed(seed)
    W = {k: torch.randn(3, 3, generator=g) for k in range(12)}
    P = torch.randn(3, 2, generator=g)
    Q = torch.randn(2, 3, generator=g)
    nodes = {n: Node(n, "input") for n in ("i0", "i1")}
    groups = [Group("inputs", "input", ("i0", "i1"), lambda x: [x[:, 0], x[:, 1]])]
    edges, calls = [], []

    def layer(name, members, slot_srcs, fn_of):
        for n, slots in members.items():
            nodes[n] = Node(n, "component", tuple(slots))
            for s in slots:
                edges.extend(Edge(u, n, s) for u in slot_srcs[(n, s)])
        names = tuple(members)

        def fn(vals, sub=None):
            sub = list(names) if sub is None else list(sub)
            calls.append((name, tuple(sub), next(iter(vals.values())).shape[0]))
            return [fn_of(n, vals) for n in sub]

        if solo:
            groups.extend(Group(n, "component", (n,), lambda vals, n=n: fn(vals, [n])) for n in names)
        else:
            groups.append(Group(name, "component", names, fn, subsets=True))

    layer(
        "L0",
        {"a0": ("q", "k"), "a1": ("q", "k"), "a2": ("q", "k")},
        {
            ("a0", "q"): ["i0", "i1"],
            ("a0", "k"): ["i1"],
            ("a1", "q"): ["i0"],
            ("a1", "k"): ["i0", "i1"],
            ("a2", "q"): ["i0", "i1"],
            ("a2", "k"): ["i1"],
        },
        lambda n, v: (
            torch.tanh(v[(n, "q")] @ W[0]) * torch.sigmoid(v[(n, "k")] @ W[1])
            if n != "a2"
            else torch.tanh(v[(n, "q")] @ P) * torch.sigmoid(v[(n, "k")] @ P)
        ),
    )
    layer(
        "L1",
        {"b0": ("q", "v"), "b1": ("q", "v"), "dead": ("q", "v")},
        {
            ("b0", "q"): ["i0", "a0", "a1"],
            ("b0", "v"): ["i0"],
            ("b1", "q"): ["a0", "i1"],
            ("b1", "v"): ["a2"],
            ("dead", "q"): ["a1"],
            ("dead", "v"): ["i1"],
        },
        lambda n, v: (
            torch.tanh(v[(n, "q")] @ W[2]) + (torch.tanh(v[(n, "v")] @ Q) if n == "b1" else v[(n, "v")] @ W[3])
        ),
    )
    nodes["out"] = Node("out", "output", ("in",))
    edges += [Edge(u, "out") for u in ("b0", "b1", "a1", "i0")]
    groups.append(Group("output", "output", ("out",), lambda vals: [vals[("out", "in")] * 2]))
    graph = Graph(f"wide{seed}", nodes, groups, edges, {("b0", "q"): torch.randn(3, generator=g) * 0.1})
    graph.calls = calls
    return graph


@pytest.mark.parametrize("seed", range(3))
def test_wide_dag_with_subsets_and_shapes(seed):
    graph = wide_dag(seed)
    x_r, x_c = pair()
    runs = prepare(graph, x_r, x_c)
    assert_fast_equals_reference(graph, runs, single_edge_masks(graph))
    assert_fast_equals_reference(graph, runs, random_masks(graph, 9, seed, fractional=True), chunk=4)
    solo = wide_dag(seed, solo=True)
    solo_runs = prepare(solo, x_r, x_c)
    rnd = random.Random(seed)
    for _ in range(3):
        E = frozenset(e for e in graph.edges if rnd.random() < 0.6)
        P = [p for p in solo.paths() if all(e in E for e in p)]
        torch.testing.assert_close(
            evaluate_edges(graph, runs, edge_mask(graph, [E]))[0],
            evaluate_tree(solo, solo_runs, P),
            rtol=1e-6,  # float32 rounding: outputs reach ~10, where one ulp is ~1e-6
            atol=1e-6,
        )


def test_only_changed_members_and_rows_are_computed():
    graph = wide_dag(0)
    runs = prepare(graph, *pair(B=5))
    graph.calls.clear()
    masks = torch.ones(2, len(graph.edges))
    masks[0, graph.edge_index[graph.edge("i1->a0:k")]] = 0
    masks[1, graph.edge_index[graph.edge("a0->b1:q")]] = 0
    evaluate_edges(graph, runs, masks)
    # row 0 changes a0 only in L0 (5 examples); L1 then recomputes b0 and b1 on both rows, never `dead`
    assert ("L0", ("a0",), 5) in graph.calls and not any(c[0] == "L0" and c[1] != ("a0",) for c in graph.calls)
    assert not any("dead" in c[1] for c in graph.calls)
    assert {c[2] for c in graph.calls if c[0] == "L1"} <= {5, 10}


@pytest.mark.parametrize("cfg", [{}, {"ln": True, "d_mlp": 8}, {"pos": "shortformer", "n_layers": 3}])
def test_zoo_transformer_fast_equals_reference_and_memo(cfg):
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, **cfg})
    graph = build_graph(model)
    g = torch.Generator().manual_seed(1)
    runs = prepare(graph, torch.randint(0, 11, (3, 6), generator=g), torch.randint(0, 11, (3, 6), generator=g))
    assert_fast_equals_reference(graph, runs, single_edge_masks(graph), atol=1e-5, chunk=7)
    assert_fast_equals_reference(graph, runs, random_masks(graph, 6, 0, fractional=True), atol=1e-5)
    h = Hypothesis.parse("edge embed -> a1.*:q; edge embed -> a1.*:v; edge a0.0 -> a1.*:k; edge a1.* -> out")
    r = h.resolve(graph, need_paths=True)
    torch.testing.assert_close(
        evaluate_edges(graph, runs, edge_mask(graph, [r.edges]))[0],
        evaluate_paths(graph, runs, r.paths),
        rtol=1e-5,
        atol=1e-5,
    )


def position_masks(graph, K, B, T, seed):
    """[K, B, T, E]: random weights (0, 1 or a fraction) on a few (example, position, edge) entries;
    row 0 unpatched, row 1 one edge patched at one position of every example."""
    g = torch.Generator().manual_seed(seed)
    m = torch.ones(K, B, T, len(graph.edges))
    hit = torch.rand(m.shape, generator=g) < 0.15
    w = torch.where(torch.rand(m.shape, generator=g) < 0.5, torch.zeros(m.shape), torch.rand(m.shape, generator=g))
    m = torch.where(hit, w, m)
    m[0] = 1
    m[1] = 1
    m[1, :, T - 1, graph.edge_index[graph.edge("a0.1->a1.0:q")]] = 0
    return m


@pytest.mark.parametrize("cfg", [{}, {"ln": True, "d_mlp": 8}, {"pos": "shortformer", "n_layers": 3}])
def test_position_masks_fast_equals_reference(cfg):
    """[K, B, T, E] masks on the fast path (not the fallback) equal the reference loop, in any chunks;
    a mask constant over positions equals the per-example mask; a hypothesis with @ END equals the
    compiled evaluator."""
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, **cfg})
    graph = build_graph(model)
    g = torch.Generator().manual_seed(1)
    runs = prepare(graph, torch.randint(0, 11, (3, 6), generator=g), torch.randint(0, 11, (3, 6), generator=g))
    masks = position_masks(graph, 6, 3, 6, 0)
    assert fast.supports_masks(graph, runs, masks) is None
    ref = evaluate_edges(graph, runs, masks, method="reference")
    for chunk in (None, 1, 4):
        torch.testing.assert_close(fast.fast_evaluate(graph, runs, masks, chunk=chunk), ref, rtol=1e-5, atol=1e-5)
    per_example = random_masks(graph, 4, 2, fractional=True)[:, None].expand(4, 3, -1)
    torch.testing.assert_close(
        fast.fast_evaluate(graph, runs, per_example[:, :, None].expand(4, 3, 6, -1)),
        fast.fast_evaluate(graph, runs, per_example),
        rtol=1e-5,
        atol=1e-5,
    )
    end = torch.tensor([5, 3, 2])
    h = Hypothesis.parse("all except edge a0.1 -> a1.0:q @ END; except edge embed -> a1.1:k @ 1")
    mask = position_edge_mask(graph, h, 3, 6, positions={"END": end})
    torch.testing.assert_close(
        fast.fast_evaluate(graph, runs, mask)[0], evaluate(graph, runs, h, positions={"END": end}), rtol=1e-5, atol=1e-5
    )


def test_position_masks_the_fast_path_does_not_take_fall_back_to_the_reference():
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8})
    graph = build_graph(model)
    runs = prepare(graph, torch.randint(0, 11, (3, 6)), torch.randint(0, 11, (3, 6)))
    short = position_masks(graph, 3, 3, 6, 1)[:, :, :4]  # 4 positions for 6-token senders
    assert "needs [B, T, ...] senders" in fast.supports_masks(graph, runs, short)
    with pytest.raises(ConfigError, match="senders"):
        fast.fast_evaluate(graph, runs, short)
    assert "2 to 4 axes" in fast.supports_masks(graph, runs, short[None])
    edges = [PosEdge(*astuple(graph.edges[0]))] + graph.edges[1:]
    pos_graph = Graph("pos", graph.nodes, graph.groups, edges, graph.const, graph.model)
    pos_runs = prepare(pos_graph, runs.x_r, runs.x_c, check=False)
    masks = position_masks(graph, 3, 3, 6, 2)
    assert fast.supports(pos_graph) is not None and fast.supports_masks(pos_graph, pos_runs, masks) is None
    torch.testing.assert_close(
        evaluate_edges(pos_graph, pos_runs, masks), evaluate_edges(pos_graph, pos_runs, masks, method="reference")
    )


def family_models():
    out = []
    try:
        import transformer_lens as tl

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
        out.append(pytest.param(lambda: tl.HookedTransformer(cfg), id="transformer-lens"))
    except ImportError:
        pass
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        out.append(
            pytest.param(
                lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=13, n_positions=8)),
                id="hf-gpt2",
            )
        )
        import transformers as tf

        small = dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            vocab_size=13,
            initializer_range=0.3,
        )
        out.append(
            pytest.param(lambda: tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=1, **small)), id="hf-llama-gqa")
        )
        out.append(pytest.param(lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**small)), id="hf-neox-parallel"))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("make", family_models())
def test_every_family_fast_equals_reference_and_memo(make):
    torch.manual_seed(0)
    model = make().eval()
    graph = build_graph(model)
    g = torch.Generator().manual_seed(2)
    runs = prepare(graph, torch.randint(0, 13, (2, 6), generator=g), torch.randint(0, 13, (2, 6), generator=g))
    assert_fast_equals_reference(graph, runs, single_edge_masks(graph), atol=1e-5, chunk=16)
    assert_fast_equals_reference(graph, runs, random_masks(graph, 4, 1, fractional=True), atol=1e-5)
    r = Hypothesis.parse("edge embed -> a1.*:v; edge a0.1 -> a1.*:k; edge a1.* -> out; edge m1 -> out").resolve(
        graph, need_paths=True
    )
    torch.testing.assert_close(
        evaluate_edges(graph, runs, edge_mask(graph, [r.edges]))[0],
        evaluate_paths(graph, runs, r.paths),
        rtol=1e-5,
        atol=1e-5,
    )


def test_budget_sets_chunks_and_leaves_results_unchanged():
    torch.manual_seed(0)
    model = build_transformer(
        {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, "d_mlp": 8}
    )
    graph = build_graph(model)
    runs = prepare(graph, torch.randint(0, 11, (3, 6)), torch.randint(0, 11, (3, 6)))
    small, big = fast.rows_for_budget(graph, runs, 200_000), fast.rows_for_budget(graph, runs, 2_000_000)
    assert 1 <= small < big
    masks = random_masks(graph, 12, 3)
    torch.testing.assert_close(
        evaluate_edges(graph, runs, masks, memory_budget="150KB"), evaluate_edges(graph, runs, masks), rtol=0, atol=1e-6
    )
    assert (
        fast.parse_bytes("2GiB") == 2 << 30
        and fast.parse_bytes("500MB") == 500 * 10**6
        and fast.parse_bytes(None) == 1 << 30
    )
    with pytest.raises(ConfigError, match="not a size"):
        fast.parse_bytes("lots")


def test_meta_device_runs_without_host_copies():
    """Every tensor op stays on the model's device: on `meta` any hidden .cpu()/.item() would raise."""
    torch.manual_seed(0)
    model = build_transformer(
        {"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, "ln": True, "d_mlp": 8}
    )
    model = model.to("meta")
    graph = build_graph(model, check=False)  # the build-time self-check reads numbers; meta has none
    x = torch.zeros(3, 6, dtype=torch.long, device="meta")
    runs = prepare(graph, x, x, check=False)
    masks = random_masks(graph, 5, 0, fractional=True)
    out = evaluate_edges(graph, runs, masks)
    assert out.device.type == "meta" and out.shape == (5, 3, 6, 11)
    per = masks[:, None].expand(5, 3, -1)  # the plan reads the masks (one copy to the host), never activations
    assert evaluate_edges(graph, runs, per, chunk=2).shape == (5, 3, 6, 11)


@dataclass(frozen=True, order=True)
class PosEdge(Edge):
    positions: tuple = (1,)


def test_position_restricted_edges_are_refused_by_name_and_fall_back():
    graph = random_dag(0)
    e0 = graph.edges[0]
    edges = [PosEdge(e0.src, e0.dst, e0.slot)] + graph.edges[1:]
    pos_graph = Graph("pos", graph.nodes, graph.groups, edges, graph.const)
    assert "position-restricted" in fast.supports(pos_graph)
    runs = prepare(pos_graph, *pair())
    masks = random_masks(pos_graph, 3, 0)
    with pytest.raises(ConfigError, match="position-restricted"):
        fast.fast_evaluate(pos_graph, runs, masks)
    torch.testing.assert_close(
        evaluate_edges(pos_graph, runs, masks), evaluate_edges(pos_graph, runs, masks, method="reference")
    )


def test_single_edge_effects_use_fast_path_and_match_reference():
    graph = random_dag(4, n_comp=6)
    runs = prepare(graph, *pair())
    metric = lambda out: out.sum(-1)
    base = metric(runs.clean["out"]).mean()
    ref = (
        torch.stack(
            [metric(o).mean() for o in evaluate_edges(graph, runs, single_edge_masks(graph), method="reference")]
        )
        - base
    )
    torch.testing.assert_close(single_edge_effects(graph, runs, metric), ref, rtol=0, atol=1e-5)
    assert D == 3


def subset_models():
    out = [
        pytest.param(
            lambda: build_transformer(
                {
                    "n_layers": 2,
                    "n_heads": 3,
                    "d_model": 12,
                    "d_head": 4,
                    "vocab": 13,
                    "n_ctx": 8,
                    "ln": True,
                    "d_mlp": 8,
                }
            ),
            id="zoo",
        )
    ]
    try:
        import transformer_lens as tl

        base = dict(
            n_layers=2,
            d_model=12,
            n_ctx=8,
            d_head=4,
            n_heads=3,
            d_vocab=13,
            d_mlp=16,
            act_fn="gelu",
            seed=0,
            device="cpu",
        )
        out.append(
            pytest.param(
                lambda: tl.HookedTransformer(tl.HookedTransformerConfig(normalization_type="LN", **base)), id="tl"
            )
        )
        out.append(
            pytest.param(
                lambda: tl.HookedTransformer(
                    tl.HookedTransformerConfig(
                        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, **base
                    )
                ),
                id="tl-rotary",
            )
        )
    except ImportError:
        pass
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        out.append(
            pytest.param(
                lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=3, n_embd=12, vocab_size=13, n_positions=8)),
                id="hf-gpt2",
            )
        )
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("make", subset_models())
def test_head_subsets_equal_the_full_group(make):
    """A head group asked for some members returns what the full group returns for them, also
    when every slot holds one shared residual (the fast evaluator's downstream case)."""
    torch.manual_seed(0)
    model = make().eval()
    graph = build_graph(model)
    x = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(4))
    runs = prepare(graph, x, x.roll(1, 1))
    for grp in graph.groups:
        if not grp.name.startswith("attn"):
            continue
        assert grp.subsets and grp.total is not None
        slots = {k: v + 0.1 * torch.randn_like(v) for k, v in runs.clean_slots.items() if k[0] in grp.nodes}
        whole = grp.fn(slots)
        for sub in ([grp.nodes[1]], [grp.nodes[2], grp.nodes[0]]):
            for got, n in zip(grp.fn(slots, sub), sub):
                torch.testing.assert_close(got, whole[grp.nodes.index(n)], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grp.total(slots), sum(whole), rtol=1e-5, atol=1e-5)
        r = next(iter(slots.values()))
        same = {k: r for k in slots}
        torch.testing.assert_close(grp.total(same), sum(grp.fn({k: r.clone() for k in slots})), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            grp.fn(same, [grp.nodes[1]])[0], grp.fn({k: r.clone() for k in slots})[1], rtol=1e-5, atol=1e-6
        )


def test_single_edge_effects_per_receiver_chunks_and_stacked_metric():
    """Chunks sized per receiving group (later groups: more rows), equal results; one metric call
    per chunk (stacked_metric) for a metric that takes the hypothesis axis equals one per row."""
    from innerprobe.patch.metrics import lm_loss

    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8})
    graph = build_graph(model)
    g = torch.Generator().manual_seed(1)
    x_r, x_c = (torch.randint(0, 11, (3, 6), generator=g) for _ in range(2))
    runs = prepare(graph, x_r, x_c)
    budget = 2_000_000
    rows = [fast.rows_for_budget(graph, runs, budget, receiver=i) for i in range(1, len(graph.groups))]
    assert rows == sorted(rows) and rows[-1] > rows[0] >= fast.rows_for_budget(graph, runs, budget)
    ref = evaluate_edges(graph, runs, single_edge_masks(graph), method="reference")
    mixing = lambda o: o[:, -1, 0] - o[:, -1, 0].mean() + o[:, 0, 0].mean()  # per [B, ...] only
    for metric, stacked in ((lm_loss(x_r), True), (lm_loss(x_r), False), (mixing, False)):
        want = torch.stack([metric(o).mean() for o in ref]) - metric(runs.clean["out"]).mean()
        for kw in ({"memory_budget": budget}, {"chunk": 3}):
            got = single_edge_effects(graph, runs, metric, stacked_metric=stacked, **kw)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
