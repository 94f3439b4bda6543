"""Exact path-patching evaluators: brute-force tree = memoised signatures = two-version algorithm."""

import itertools
import random

import pytest
import torch

from innerprobe.core.graph import Edge, Graph, Group, Node, build_graph
from innerprobe.core.hooks import count_hooks
from innerprobe.errors import ConfigError
from innerprobe.patch.hypothesis import Hypothesis
from innerprobe.patch.path import (
    avoid_node,
    edge_mask,
    evaluate,
    evaluate_edges,
    evaluate_paths,
    evaluate_tree,
    prepare,
)
from innerprobe.zoo.transformer import build_transformer

D = 3


def random_dag(seed: int, n_comp: int = 4, linear: bool = False) -> Graph:
    """Inputs i0, i1; components c0..c{n-1} with 1-2 slots of nonlinear functions; output out."""
    g = torch.Generator().manual_seed(seed)
    rnd = random.Random(seed)
    nodes = {"i0": Node("i0", "input"), "i1": Node("i1", "input")}
    groups = [Group("inputs", "input", ("i0", "i1"), lambda x: [x[:, 0], x[:, 1]])]
    edges, const, prev = [], {}, ["i0", "i1"]
    for c in range(n_comp):
        name = f"c{c}"
        slots = ("a", "b")[: rnd.randint(1, 2)]
        nodes[name] = Node(name, "component", slots)
        for s in slots:
            srcs = rnd.sample(prev, rnd.randint(1, min(3, len(prev))))
            edges += [Edge(u, name, s) for u in srcs]
            const[(name, s)] = torch.randn(D, generator=g) * 0.1
        W = {s: torch.randn(D, D, generator=g) for s in slots}

        def fn(vals, name=name, slots=slots, W=W):
            if linear:
                return [sum(vals[(name, s)] @ W[s] for s in slots)]
            h = torch.tanh(vals[(name, slots[0])] @ W[slots[0]])
            if len(slots) == 2:
                h = h * torch.sigmoid(vals[(name, "b")] @ W["b"])
            return [h]

        groups.append(Group(name, "component", (name,), fn))
        prev.append(name)
    nodes["out"] = Node("out", "output", ("in",))
    srcs = rnd.sample(prev, rnd.randint(2, min(4, len(prev))))
    edges += [Edge(u, "out") for u in srcs]
    groups.append(Group("output", "output", ("out",), lambda vals: [vals[("out", "in")]]))
    return Graph(f"dag{seed}", nodes, groups, edges, const)


def pair(B=5):
    return torch.randn(B, 2, D), torch.randn(B, 2, D)


@pytest.mark.parametrize("seed", range(6))
def test_random_dag_three_evaluators_agree_on_edge_sets(seed):
    graph = random_dag(seed)
    runs = prepare(graph, *pair())
    rnd = random.Random(seed)
    subsets = [frozenset(e for e in graph.edges if rnd.random() < p) for p in (0.3, 0.6, 0.8, 0.9) for _ in range(3)]
    fast = evaluate_edges(graph, runs, edge_mask(graph, subsets))
    for k, E in enumerate(subsets):
        P = [p for p in graph.paths() if all(e in E for e in p)]
        tree = evaluate_tree(graph, runs, P)
        memo = evaluate_paths(graph, runs, P)
        torch.testing.assert_close(memo, tree, rtol=0, atol=1e-6)
        torch.testing.assert_close(fast[k], tree, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_random_dag_memo_equals_tree_for_arbitrary_path_sets(seed):
    graph = random_dag(seed, n_comp=5)
    runs = prepare(graph, *pair())
    paths = graph.paths()
    rnd = random.Random(100 + seed)
    for _ in range(4):
        P = [p for p in paths if rnd.random() < 0.5]
        torch.testing.assert_close(evaluate_paths(graph, runs, P), evaluate_tree(graph, runs, P), rtol=0, atol=1e-6)
    # memoisation computes fewer node copies than the tree has
    evaluate_paths(graph, runs, paths[: len(paths) // 2])
    evaluate_tree(graph, runs, paths[: len(paths) // 2])
    assert runs.stats["computed_nodes"] <= runs.stats["tree_nodes"]


@pytest.mark.parametrize("seed", range(3))
def test_extremes_all_gives_reference_none_gives_counterfactual(seed):
    graph = random_dag(seed)
    x_r, x_c = pair()
    runs = prepare(graph, x_r, x_c)
    ref, cf = graph.forward(x_r), graph.forward(x_c)
    assert not torch.allclose(ref, cf)
    for fn in (evaluate_tree, evaluate_paths):
        torch.testing.assert_close(fn(graph, runs, graph.paths()), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(fn(graph, runs, []), cf, rtol=0, atol=1e-6)
    out = evaluate_edges(graph, runs, torch.stack([torch.ones(len(graph.edges)), torch.zeros(len(graph.edges))]))
    torch.testing.assert_close(out[0], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], cf, rtol=0, atol=1e-6)


def test_clean_equals_counterfactual_gives_zero_effect():
    graph = random_dag(1)
    x = torch.randn(4, 2, D)
    runs = prepare(graph, x, x.clone())
    ref = graph.forward(x)
    rnd = random.Random(0)
    for _ in range(3):
        P = [p for p in graph.paths() if rnd.random() < 0.5]
        torch.testing.assert_close(evaluate_paths(graph, runs, P), ref, rtol=0, atol=1e-6)
    masks = (torch.rand(5, len(graph.edges)) < 0.5).float()
    torch.testing.assert_close(evaluate_edges(graph, runs, masks), ref.expand(5, *ref.shape), rtol=0, atol=1e-6)


def test_linear_toy_edge_effects_into_output_sum_to_total():
    graph = random_dag(3, linear=True)
    x_r, x_c = pair()
    runs = prepare(graph, x_r, x_c)
    total = graph.forward(x_r) - graph.forward(x_c)
    into_out = [i for i, e in enumerate(graph.edges) if e.dst == "out"]
    masks = torch.ones(len(into_out), len(graph.edges))
    for k, i in enumerate(into_out):
        masks[k, i] = 0
    effects = graph.forward(x_r) - evaluate_edges(graph, runs, masks)
    torch.testing.assert_close(effects.sum(0), total, rtol=1e-5, atol=1e-5)


def test_per_example_masks_and_chunking_match_single_runs():
    graph = random_dag(2)
    x_r, x_c = pair(B=4)
    runs = prepare(graph, x_r, x_c)
    masks = (torch.rand(6, len(graph.edges)) < 0.6).float()
    full = evaluate_edges(graph, runs, masks)
    torch.testing.assert_close(evaluate_edges(graph, runs, masks, chunk=4), full, rtol=0, atol=1e-6)
    per = masks[:, None, :].expand(6, 4, -1).clone()
    per[:, 2] = masks.flip(0)  # example 2 gets the rows in reverse order
    out = evaluate_edges(graph, runs, per)
    torch.testing.assert_close(out[:, [0, 1, 3]], full[:, [0, 1, 3]], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 2], full.flip(0)[:, 2], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- transformer
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8})
    g = torch.Generator().manual_seed(1)
    x_r = torch.randint(0, 11, (3, 6), generator=g)
    x_c = torch.randint(0, 11, (3, 6), generator=g)
    return model, x_r, x_c


@pytest.mark.parametrize("cfg", [{}, {"ln": True, "d_mlp": 8}, {"pos": "shortformer"}])
def test_transformer_graph_reproduces_model(cfg):
    torch.manual_seed(0)
    model = build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, **cfg})
    x = torch.randint(0, 11, (3, 6))
    graph = build_graph(model)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-5, atol=1e-5)


def test_transformer_tree_memo_edges_agree(tiny):
    model, x_r, x_c = tiny
    graph = build_graph(model)
    runs = prepare(graph, x_r, x_c)
    hyps = [
        Hypothesis.parse(
            "edge embed -> a1.*:q; edge embed -> a1.*:v; edge embed -> a0.0:v; edge a0.0 -> a1.*:k; edge a1.* -> out"
        ),
        Hypothesis.parse("edge embed -> *; edge pos -> *; edge a0.1 -> *; edge a1.0 -> out"),
    ]
    for h in hyps:
        r = h.resolve(graph, need_paths=True)
        fast = evaluate_edges(graph, runs, edge_mask(graph, [r.edges]))[0]
        torch.testing.assert_close(evaluate_paths(graph, runs, r.paths), fast, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(evaluate_tree(graph, runs, r.paths), fast, rtol=1e-5, atol=1e-5)
    # a path set that is not an edge set: V of a1.0 only through the direct path, K only via a0.0
    h = Hypothesis.parse("embed -> a1.0:v -> out; embed -> a0.0:v -> a1.0:k -> out; embed -> a0.0 -> out")
    r = h.resolve(graph)
    assert r.edges is None
    torch.testing.assert_close(evaluate(graph, runs, h), evaluate_tree(graph, runs, r.paths), rtol=1e-5, atol=1e-5)


def test_transformer_extremes(tiny):
    model, x_r, x_c = tiny
    graph = build_graph(model)
    runs = prepare(graph, x_r, x_c)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.all()), model(x_r), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.none()), model(x_c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluate_paths(graph, runs, graph.paths()), model(x_r), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluate_paths(graph, runs, []), model(x_c), rtol=1e-5, atol=1e-5)


def test_node_patching_equals_avoiding_paths(tiny):
    from innerprobe.patch.activation import patch_run

    model, x_r, x_c = tiny
    graph = build_graph(model)
    runs = prepare(graph, x_r, x_c)
    for l, h in itertools.product(range(2), range(2)):
        hook = patch_run(model, f"L{l}.z[heads={h}]", x_r, x_c)
        torch.testing.assert_close(evaluate(graph, runs, avoid_node(graph, f"a{l}.{h}")), hook, rtol=1e-5, atol=1e-5)
        r = avoid_node(graph, f"a{l}.{h}").resolve(graph, need_paths=True)
        torch.testing.assert_close(evaluate_paths(graph, runs, r.paths), hook, rtol=1e-5, atol=1e-5)


def test_model_left_untouched(tiny):
    model, x_r, x_c = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    graph = build_graph(model)
    runs = prepare(graph, x_r, x_c)
    evaluate_edges(graph, runs, torch.ones(2, len(graph.edges)))
    evaluate_paths(graph, runs, graph.paths()[:10])
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert count_hooks(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model.eval()


# --------------------------------------------------------------------------- hypotheses
def test_hypothesis_errors_are_clear(tiny):
    model, _, _ = tiny
    graph = build_graph(model)
    with pytest.raises(ConfigError, match="unknown node 'a7.0'"):
        Hypothesis.parse("embed -> a7.0:v -> out").resolve(graph)
    with pytest.raises(ConfigError, match="no edge from 'a1.0:v' to 'a0.1:k'"):
        Hypothesis.parse("embed -> a1.0:v -> a0.1:k -> out").resolve(graph)
    with pytest.raises(ConfigError, match="does not end at 'out'"):
        Hypothesis.parse("embed -> a1.0:v").resolve(graph)
    with pytest.raises(ConfigError, match="no slot 'x'"):
        Hypothesis.parse("embed -> a1.0:x -> out").resolve(graph)
    with pytest.raises(ConfigError, match="empty hypothesis"):
        Hypothesis.parse("  # nothing\n")
    with pytest.raises(ConfigError, match="at least two nodes"):
        Hypothesis.parse("embed")
    with pytest.raises(ConfigError, match="matches no edge"):
        Hypothesis.parse("edge a1.0 -> a0.1:k").resolve(graph)


def test_hypothesis_wildcards_and_ellipsis(tiny):
    model, _, _ = tiny
    graph = build_graph(model)
    through = Hypothesis.parse("... -> a1.0 -> ...").resolve(graph)
    assert through.paths and all(any(e.dst == "a1.0" or e.src == "a1.0" for e in p) for p in through.paths)
    n_total = len(graph.paths())
    assert 0 < len(through.paths) < n_total
    assert len(Hypothesis.parse("... -> out").resolve(graph).paths) == n_total
    assert Hypothesis.parse("... -> out").resolve(graph).edges is not None  # all paths: an edge set
    text = Hypothesis.parse("edge embed -> a1.*:v; edge a1.* -> out")
    assert Hypothesis.parse(text.to_text()).resolve(graph).edges == text.resolve(graph).edges


@pytest.mark.parametrize(
    "sender,receiver,slot",
    [(("0", "1"), ("1", "0"), "k"), (("0", "0"), ("1", "1"), "v"), (("0", "1"), ("1", "1"), "q")],
)
def test_freeze_algorithm_equals_its_path_set(tiny, sender, receiver, slot):
    from innerprobe.patch.activation import freeze_patch

    model, x_r, x_c = tiny
    graph = build_graph(model)
    runs = prepare(graph, x_r, x_c)
    (sl, sh), (rl, rh) = sender, receiver
    out = freeze_patch(model, [f"L{sl}.z[heads={sh}]"], [f"L{rl}.{slot}[heads={rh}]"], ["L0.z", "L1.z"], x_r, x_c)
    removed = graph.edge(f"a{sl}.{sh}->a{rl}.{rh}:{slot}")
    hyp = Hypothesis.from_edges([e for e in graph.edges if e != removed])
    torch.testing.assert_close(evaluate(graph, runs, hyp), out, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, model(x_r), atol=1e-4)
    assert count_hooks(model) == 0


def test_activation_sweep_over_heads_and_positions(tiny):
    from innerprobe.patch.activation import head_sites, patch_run, sweep

    model, x_r, x_c = tiny
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 0].mean()  # noqa: E731
    sites = head_sites(model, positions=2)
    assert sites[0] == "L0.z[heads=0;pos=0]" and len(sites) == 2 * 2 * 2
    rows = sweep(model, sites, x_r, x_c, metric)
    assert rows[0]["metric"] == pytest.approx(float(metric(model(x_r))))
    assert rows[1]["metric"] == pytest.approx(float(metric(model(x_c))))
    for r, s in zip(rows[2:], sites):
        assert r["metric"] == pytest.approx(float(metric(patch_run(model, s, x_r, x_c))), abs=1e-6)
    # at least one head-position patch changes the metric
    assert any(abs(r["metric"] - rows[0]["metric"]) > 1e-4 for r in rows[2:])
    with pytest.raises(Exception, match="heads"):
        patch_run(model, "blocks.0.attn.hook_z[heads=7]", x_r, x_c)


def test_errors_leave_the_model_clean(tiny):
    from innerprobe.patch.activation import patch_run

    model, x_r, x_c = tiny
    model.train()
    mine = model.blocks[0].register_forward_hook(lambda *a: None)  # a user's own hook survives
    with pytest.raises(ConfigError, match="same shape"):
        patch_run(model, "L0.z[heads=1]", x_r, x_c[:, :4])
    with pytest.raises(ConfigError, match="differ in shape"):
        prepare(build_graph(model), x_r, x_c[:2])
    with pytest.raises(ConfigError, match="does not exist"):
        Hypothesis.load("missing_hypothesis.txt")
    assert count_hooks(model) == 1 and model.training
    mine.remove()
    model.eval()
