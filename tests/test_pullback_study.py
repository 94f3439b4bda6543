"""Study helpers (no training by default): planted stamps, mosaics, plots; the quick study is slow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from innerprobe.studies.pullback_plots import image_grid
from innerprobe.zoo.localisation import STAMPS, canvases, mosaics, planted


def test_planted_stamps_decide_label_and_mask():
    x = torch.rand(20, 1, 8, 8)
    for positions in ("corners", "random"):
        xs, y, m = planted(x, 0, positions)
        assert m.sum((1, 2)).eq(9).all()
        for i in range(20):
            block = xs[i, 0][m[i]].view(3, 3)
            assert torch.equal(block, STAMPS[y[i]])
            assert torch.allclose(xs[i, 0][~m[i]], 0.5 * x[i, 0][~m[i]])
        if positions == "corners":
            tops = {tuple(torch.nonzero(m[i])[0].tolist()) for i in range(20)}
            assert tops <= {(0, 0), (0, 5), (5, 0), (5, 5)}


def test_mosaics_and_canvases():
    x = torch.rand(50, 1, 8, 8)
    y = torch.arange(50) % 10
    mos, t, m = mosaics(x, y, 12, 0)
    assert mos.shape == (12, 1, 16, 16) and m.sum((1, 2)).eq(128).all()
    c, yc = canvases(x, y, 0, copies=2)
    assert c.shape == (100, 1, 16, 16) and torch.equal(yc[:50], y)
    assert torch.allclose(c.flatten(1).sum(1), x.repeat(2, 1, 1, 1).flatten(1).sum(1))


def test_image_grid(tmp_path):
    p = image_grid(
        [
            [
                ("input", np.random.rand(1, 8, 8)),
                ("map", np.random.randn(8, 8)),
                ("delta", np.random.randn(1, 8, 8)),
                None,
            ]
        ],
        tmp_path / "g.png",
        col_labels=["a", "b", "c", "d"],
        row_labels=["r"],
        title="t",
    )
    assert p.stat().st_size > 500


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    from innerprobe.studies.pullback_digits import run

    res = run(tmp_path, quick=True)
    sec = json.loads((tmp_path / "section.json").read_text())
    assert {f["file"] for f in sec["figures"]} <= {p.name for p in tmp_path.glob("*.png")}
    assert "verdict" in res.data and res.tables["paired"]
    assert (tmp_path / "summary.json").exists()
