"""Circuit figures stay legible: 2-D layouts of bounded size, legends that fit the model family (docs/patching.md)."""

from __future__ import annotations

import pytest
from PIL import Image
from torch import nn

from innerprobe.core.graph import build_graph
from innerprobe.patch import plots
from innerprobe.zoo.transformer import build_transformer


def _legend(monkeypatch):
    seen = []
    real = plots._save

    def spy(fig, path):
        leg = fig.axes[0].get_legend()
        seen.extend([] if leg is None else [t.get_text() for t in leg.get_texts()])
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def test_long_chain_is_wrapped_in_two_dimensions_within_the_size_bound(tmp_path, monkeypatch):
    layers = [m for _ in range(30) for m in (nn.Linear(8, 8), nn.ReLU())]
    g = build_graph(nn.Sequential(*layers).eval())
    legend = _legend(monkeypatch)
    path = plots.draw_circuit(g, {e: 1.0 for e in g.edges}, tmp_path / "c.png")
    w, h = Image.open(path).size
    assert w <= plots.MAX_SIZE[0] * 120 and h <= plots.MAX_SIZE[1] * 120
    pos = plots.layout(g)
    assert len({round(x, 3) for x, _ in pos.values()}) > 3 and len({y for _, y in pos.values()}) > 3
    assert legend == ["into the next node"]  # no Q/K/V legend on a network without attention


@pytest.mark.parametrize("n_layers", [2, 12])
def test_transformer_rows_per_layer_and_qkv_legend(tmp_path, monkeypatch, n_layers):
    tf = build_transformer(
        {"n_layers": n_layers, "n_heads": 4, "d_model": 16, "d_head": 4, "vocab": 11, "n_ctx": 8, "d_mlp": 8}
    ).eval()
    g = build_graph(tf)
    legend = _legend(monkeypatch)
    path = plots.draw_circuit(g, {e: 1.0 for e in g.edges[:40]}, tmp_path / "t.png")
    w, h = Image.open(path).size
    assert h <= plots.MAX_SIZE[1] * 120
    assert legend == ["into a query", "into a key", "into a value", "into an MLP or the output"]
    assert len({y for _, y in plots.layout(g).values()}) == n_layers + 2
