"""The perturb / scan commands and the scan, on a tiny model from a file (no zoo training)."""
import json

import numpy as np
import pytest
import torch

from innerprobe import ConfigError, Result
from innerprobe.cli import main
from innerprobe.cli.perturb import parse_sigmas
from innerprobe.perturb.scan import robust_z

FACTORY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
'''


@pytest.fixture
def model_files(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    return tmp_path


def test_perturb_command_writes_results_plots_and_section(model_files, capsys):
    out = model_files / "out"
    rc = main(["perturb", "--model", f"{model_files}/net.py:make", "--data", f"{model_files}/x.npy", "--sigmas", "0.05:50:9",
               "--samples", "8", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "median escape noise" in text and "half-way" in text
    for f in ("apex.json", "apex.npz", "escape_noise.png", "sample_dependence.png", "class_histograms.png", "section.json"):
        assert (out / f).exists(), f
    res = Result.load(out / "apex.json")
    assert res.arrays["counts"].shape == (20, 9, 4) and (res.arrays["counts"].sum(-1) == 8).all()
    sec = json.loads((out / "section.json").read_text())
    assert {f["file"] for f in sec["figures"]} == {"escape_noise.png", "sample_dependence.png", "class_histograms.png"}
    # a second run resumes from the saved chunks and reports the same figures
    assert main(["perturb", "--model", f"{model_files}/net.py:make", "--data", f"{model_files}/x.npy", "--sigmas", "0.05:50:9",
                 "--samples", "8", "--out", str(out)]) == 0
    assert "resumed" in capsys.readouterr().out
    assert np.array_equal(Result.load(out / "apex.json").arrays["counts"], res.arrays["counts"])


def test_perturb_command_errors_are_one_line(model_files, capsys):
    base = ["perturb", "--model", f"{model_files}/net.py:make", "--data", f"{model_files}/x.npy", "--out", str(model_files / "o")]
    assert main(base + ["--sigmas", "1,0.5"]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert main(base + ["--sites", "fc9"]) == 2
    assert "no module named" in capsys.readouterr().err
    assert main(base + ["--samples", "0"]) == 2
    assert main(["perturb", "--model", f"{model_files}/nope.py:make", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_parse_sigmas():
    assert np.allclose(parse_sigmas("0.1:10:3"), [0.1, 1, 10])
    assert np.allclose(parse_sigmas("0.5, 1,2"), [0.5, 1, 2])
    with pytest.raises(ConfigError):
        parse_sigmas("a:b")


# the scan's planted-sink test moved to tests/test_scan.py (test_screen_stage_on_a_planted_sink_and_a_symmetric_model)


def test_robust_z():
    z = robust_z(np.array([0.1] * 9 + [0.5]))
    assert z[-1] > 10 and np.allclose(z[:-1], 0)
