"""Graph builders: each reproduces its model's forward pass; fx graphs for CNNs with skips."""

import pytest
import torch
from torch import nn

from innerprobe.core.graph import build_graph, fx_graph
from innerprobe.errors import ConfigError, ModelError
from innerprobe.patch.hypothesis import Hypothesis
from innerprobe.patch.path import evaluate, evaluate_paths, evaluate_tree, prepare


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(self.relu(self.conv1(x))) + x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = ResBlock(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def test_fx_graph_resnet_paths_through_block_vs_skip():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    graph = fx_graph(model)
    x_r, x_c = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(graph.forward(x_r), model(x_r))
    assert len(graph.paths()) == 2  # through the block, through the skip
    runs = prepare(graph, x_r, x_c)
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.all()), model(x_r))
    torch.testing.assert_close(evaluate(graph, runs, Hypothesis.none()), model(x_c))
    skip_only = Hypothesis.parse("input -> stem -> add:in1 -> ...")
    block_only = Hypothesis.parse("input -> stem -> block.conv1 -> ...")
    for h in (skip_only, block_only):
        r = h.resolve(graph, need_paths=True)
        assert len(r.paths) == 1
        torch.testing.assert_close(evaluate(graph, runs, h), evaluate_tree(graph, runs, r.paths))
    assert "add" in graph.summary()


def test_fx_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ModelError, match="cannot trace Branchy"):
        fx_graph(Branchy())


def test_hf_gpt2_graph_reproduces_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=17, n_positions=8, attn_implementation="eager"
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 17, (2, 6))
    graph = build_graph(model)
    assert len(graph.nodes) == 2 + 2 * 2 + 2 + 1
    with torch.no_grad():
        torch.testing.assert_close(graph.forward(x), model(x).logits, rtol=1e-4, atol=1e-5)
        runs = prepare(graph, x, torch.randint(0, 17, (2, 6)))
        h = Hypothesis.parse("edge embed -> a1.*:v; edge a1.* -> out; edge embed -> out")
        r = h.resolve(graph, need_paths=True)
        torch.testing.assert_close(evaluate(graph, runs, h), evaluate_paths(graph, runs, r.paths), rtol=1e-5, atol=1e-5)


def test_unknown_graph_kind_and_edge_errors():
    from innerprobe.zoo.transformer import build_transformer

    model = build_transformer({"n_layers": 1, "n_heads": 2, "d_model": 8, "d_head": 4, "vocab": 5, "n_ctx": 4})
    with pytest.raises(ConfigError, match="unknown model family"):
        build_graph(model, kind="onnx")
    graph = build_graph(model)
    assert str(graph.edge("a0.1->out")) == "a0.1->out"
    with pytest.raises(ConfigError, match="no slot"):
        graph.edge("embed->a0.1:z")
    with pytest.raises(ConfigError, match="no node"):
        graph.edge("embed->a3.1:q")


def test_fx_graph_names_reserved_and_reused_modules_uniquely():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.lin = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            return self.out(self.act(self.lin(self.act(x))))

    torch.manual_seed(0)
    model = Net()
    graph = fx_graph(model)
    assert {"act", "act#1", "out#1", "out"} <= set(graph.nodes)
    assert all(e.src != e.dst for e in graph.edges)
    x = torch.randn(4, 3)
    torch.testing.assert_close(graph.forward(x), model(x))
