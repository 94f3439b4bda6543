"""Hypotheses over sites, positions, complements and path patterns; mean / zero ablation. Every compiled
evaluation is checked against the listed-path evaluators (memoised and brute-force treeification)."""

import pytest
import torch

from innerprobe.core.graph import build_graph
from innerprobe.errors import ConfigError
from innerprobe.patch import Hypothesis, evaluate, evaluate_paths, prepare
from innerprobe.patch.compiled import evaluate_compiled
from innerprobe.patch.path import avoid_node, evaluate_edges, evaluate_tree, position_edge_mask
from innerprobe.zoo.transformer import build_transformer

TEXTS = [
    "all",
    "none",
    "edge embed -> a1.*:q",
    "embed -> ... -> a1.1 -> out",
    "... -> a0.1 -> ...m* -> a1.0:q -> ...",
    "all except edge a0.1 -> a1.0:q",
    "except path ... -> a0.0 -> ...",
    "edge embed -> a0.*; edge a0.* -> out; embed -> m0 -> out",
    "edge embed -> a0.*; edge a0.* -> out; edge pos -> a0.*; edge a1.* -> out",
]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_transformer(
        {
            "n_layers": 2,
            "n_heads": 2,
            "d_model": 16,
            "d_head": 8,
            "vocab": 11,
            "n_ctx": 6,
            "ln": True,
            "d_mlp": 16,
            "init_std": 1.0,
        }
    )
    graph = build_graph(model)
    g = torch.Generator().manual_seed(3)
    return model, graph, torch.randint(0, 11, (3, 5), generator=g), torch.randint(0, 11, (3, 5), generator=g)


@pytest.mark.parametrize("ablation", ["input", "mean", "zero"])
@pytest.mark.parametrize("text", TEXTS)
def test_compiled_equals_listed_paths_and_brute_force(setup, text, ablation):
    model, graph, x_r, x_c = setup
    runs = prepare(graph, x_r, x_c, ablation=ablation)
    h = Hypothesis.parse(text)
    r = h.resolve(graph, need_paths=True)
    ref = evaluate_tree(graph, runs, r.paths)
    torch.testing.assert_close(evaluate_paths(graph, runs, r.paths), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(evaluate_compiled(graph, runs, r.compiled), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(evaluate(graph, runs, h), ref, atol=1e-5, rtol=1e-5)


def test_site_names_are_aliases_of_graph_names(setup):
    """Issue 8: `edge embed -> L1.z[heads=0]:q` evaluates identically to the short-name edge."""
    model, graph, x_r, x_c = setup
    runs = prepare(graph, x_r, x_c)
    a = evaluate(graph, runs, Hypothesis.parse("edge embed -> L1.z[heads=0]:q"))
    b = evaluate(graph, runs, Hypothesis.parse("edge embed -> a1.0:q"))
    c = evaluate(graph, runs, Hypothesis.parse("edge embed -> L1.q[heads=0]"))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert Hypothesis.parse("edge embed -> L1.z[heads=0]:q").resolve(graph).edges == {graph.edge("embed->a1.0:q")}
    assert graph.node("L0.mlp_out").name == "m0" and graph.receivers("L1.mlp_in") == [("m1", "in")]
    with pytest.raises(ConfigError, match="unknown node"):
        Hypothesis.parse("edge embed -> L7.z[heads=0]:q").resolve(graph)


def test_positions_absolute_negative_named_and_per_example(setup):
    model, graph, x_r, x_c = setup
    runs = prepare(graph, x_r, x_c)
    end = torch.tensor([4, 3, 2])
    h = Hypothesis.parse("all except edge a0.1 -> a1.0:q @ END")
    got = evaluate(graph, runs, h, positions={"END": end})
    mask = position_edge_mask(graph, h, 3, 5, positions={"END": end})
    torch.testing.assert_close(got, evaluate_edges(graph, runs, mask, method="reference")[0], atol=1e-6, rtol=1e-6)
    # -1 == 4 == the site's own pos selector; per example END=4 everywhere is the same
    outs = [
        evaluate(graph, runs, Hypothesis.parse(t), positions={"END": 4})
        for t in (
            "all except edge a0.1 -> a1.0:q @ -1",
            "all except edge a0.1 -> a1.0:q @ 4",
            "all except edge a0.1 -> L1.q[heads=0;pos=-1]",
            "all except edge a0.1 -> a1.0:q @ END",
        )
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-6, rtol=1e-6)
    # causal attention: restricting the receiver's query at the last position leaves earlier logits clean
    clean = evaluate(graph, runs, Hypothesis.all())
    torch.testing.assert_close(outs[0][:, :-1], clean[:, :-1])
    assert (outs[0][:, -1] - clean[:, -1]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="not bound"):
        evaluate(graph, runs, h)


def test_mean_and_zero_node_ablation_equal_site_ablation(setup):
    model, graph, x_r, x_c = setup
    from innerprobe.patch.activation import ablate_run

    for kind in ("mean", "zero"):
        runs = prepare(graph, x_r, ablation=kind, reference=x_c)
        for node, site in (("a1.0", "L1.z[heads=0]"), ("m0", "L0.mlp_out")):
            by_graph = evaluate(graph, runs, avoid_node(graph, node))
            by_hooks = ablate_run(model, site, x_r, kind=kind, reference=x_c)
            torch.testing.assert_close(by_graph, by_hooks, atol=1e-5, rtol=1e-5)


def test_30k_edge_graph_path_patterns_without_listing_paths():
    model = build_transformer(
        {"n_layers": 12, "n_heads": 12, "d_model": 12, "d_head": 2, "vocab": 7, "n_ctx": 4, "d_mlp": 8}
    )
    graph = build_graph(model)
    assert len(graph.edges) > 30_000
    x_r, x_c = torch.randint(0, 7, (1, 3)), torch.randint(0, 7, (1, 3))
    runs = prepare(graph, x_r, x_c)
    h = Hypothesis.parse("all except edge a5.3 -> a9.6:q")
    assert h.resolve(graph).edges is not None and len(h.resolve(graph).edges) == len(graph.edges) - 1
    pattern = Hypothesis.parse("... -> a5.3 -> ...m* -> a9.6:q -> ...")
    assert pattern.resolve(graph).paths is None  # too many to list; compiled instead
    out = evaluate(graph, runs, pattern)
    assert out.shape == (1, 3, 7) and runs.stats["compiled_copies"] < 5 * len(graph.nodes)


def test_resolve_takes_graph_short_names_as_sites(setup):
    """Issue 8: one vocabulary. resolve(model, 'a0.1') is L0.z[heads=1]; a node patch by either name agrees."""
    from innerprobe import resolve
    from innerprobe.patch import patch_run

    model, graph, x_r, x_c = setup
    (a,), (b,) = resolve(model, "a0.1"), resolve(model, "L0.z[heads=1]")
    assert a.site == b.site and str(a) == str(b) == "L0.z[heads=1]"
    assert str(resolve(model, "m1")[0]) == "L1.mlp_out" and str(resolve(model, "out")[0]) == "logits"
    torch.testing.assert_close(patch_run(model, "a0.1", x_r, x_c), patch_run(model, "L0.z[heads=1]", x_r, x_c))
    runs = prepare(graph, x_r, x_c)
    torch.testing.assert_close(
        evaluate(graph, runs, avoid_node(graph, graph.node("L0.z[heads=1]").name)),
        patch_run(model, "a0.1", x_r, x_c),
        atol=1e-5,
        rtol=1e-5,
    )
