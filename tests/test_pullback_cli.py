"""``innerprobe pullback`` on a tiny file.py:factory model (no zoo training)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from innerprobe.cli import main

FACTORY = """
import torch
from torch import nn
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((3, 1, 8, 8)).astype("float32"), y=np.array([1, 2, 3]))
    return tmp_path


def test_cli_writes_grids_arrays_and_section(setup):
    out = setup / "out"
    assert main(["pullback", "--model", f"{setup}/net.py:make", "--inputs", str(setup / "x.npz"), "--target", "label", "-T", "0.5", "--out", str(out)]) == 0
    assert (out / "pullback_grid.png").stat().st_size > 1000
    z = np.load(out / "attributions.npz")
    assert z["pullback"].shape == (3, 1, 8, 8) and z["targets"].tolist() == [1, 2, 3] and "ascent_delta" in z.files
    assert not np.allclose(z["pullback"], z["gradient"])
    sec = json.loads((out / "section.json").read_text())
    assert sec["figures"][0]["file"] == "pullback_grid.png"
    summ = json.loads((out / "summary.json").read_text())
    assert summ["data"]["coverage"]["gated"] == summ["data"]["coverage"]["seen"] == 2


def test_cli_all_targets_grid(setup):
    out = setup / "all"
    assert main(["pullback", "-m", f"{setup}/net.py:make", "--inputs", str(setup / "x.npz"), "-t", "all", "-o", str(out)]) == 0
    assert np.load(out / "attributions.npz")["pullback"].shape == (3, 10, 1, 8, 8)
    assert (out / "gradient_grid.png").exists()


@pytest.mark.parametrize("args,msg", [(["-t", "12"], "outside 0..9"), (["-t", "1,2"], "for 3 inputs"), (["-T", "0"], "positive"),
                                      (["--gate", "soft"], "unknown gate"), (["-t", "x"], "cannot read --target")])
def test_cli_bad_input_is_one_line_error(setup, capsys, args, msg):
    rc = main(["pullback", "-m", f"{setup}/net.py:make", "--inputs", str(setup / "x.npz"), "-o", str(setup / "bad"), *args])
    assert rc == 2
    assert msg in capsys.readouterr().err
