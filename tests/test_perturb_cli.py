"""The perturb / scan commands and the scan, on a tiny model from a file (no zoo training)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe.cli import main
from innerprobe.perturb import backdoor_scan
from innerprobe.cli.perturb import parse_sigmas
from innerprobe.perturb.scan import robust_z
from innerprobe import ConfigError, Result

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


def test_scan_names_a_planted_bias_and_not_a_symmetric_model():
    torch.manual_seed(0)
    x = torch.rand(16, 6)
    # a "trigger detector": a first-layer unit wired strongly to class 2 only
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        m[2].weight.mul_(0.1)
        m[4].weight.mul_(0.1)
        m[2].weight[0].fill_(0.0)
        m[2].weight[0, 0] = 5.0
        m[4].weight[:, 0] = 0.0
        m[4].weight[2, 0] = 5.0
        m[2].bias.zero_()
        m[4].bias.zero_()
    res = backdoor_scan(m, x, method="histogram", samples=16)
    assert res.data["suspect"] == 2 and res.data["score"] > 3.5
    # a model whose large-noise histogram is balanced by symmetry: nothing named
    sym = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 5))
    with torch.no_grad():
        sym[2].weight.copy_(torch.eye(10))
        sym[4].weight.copy_(torch.kron(torch.eye(5), torch.ones(1, 2)))
        sym[4].bias.zero_()
    assert backdoor_scan(sym, x, method="histogram", samples=32).data["suspect"] is None


def test_robust_z():
    z = robust_z(np.array([0.1] * 9 + [0.5]))
    assert z[-1] > 10 and np.allclose(z[:-1], 0)
