"""The perturb / scan commands and the scan, on a tiny model from a file (no zoo training)."""

import json

import numpy as np
import pytest
import torch

from innerprobe import ConfigError, Result
from innerprobe.cli import main
from innerprobe.cli.perturb import parse_sigmas
from innerprobe.perturb.scan import robust_z

FACTORY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
"""


@pytest.fixture
def model_files(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    return tmp_path


def test_perturb_command_writes_results_plots_and_section(model_files, capsys):
    out = model_files / "out"
    rc = main(
        [
            "perturb",
            "--model",
            f"{model_files}/net.py:make",
            "--data",
            f"{model_files}/x.npy",
            "--sigmas",
            "0.05:50:9",
            "--samples",
            "8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "median escape noise" in text and "half-way" in text
    for f in (
        "apex.json",
        "apex.npz",
        "escape_noise.png",
        "sample_dependence.png",
        "class_histograms.png",
        "section.json",
    ):
        assert (out / f).exists(), f
    res = Result.load(out / "apex.json")
    assert res.arrays["counts"].shape == (20, 9, 4) and (res.arrays["counts"].sum(-1) == 8).all()
    sec = json.loads((out / "section.json").read_text())
    assert {f["file"] for f in sec["figures"]} == {"escape_noise.png", "sample_dependence.png", "class_histograms.png"}
    # a second run resumes from the saved chunks and reports the same figures
    assert (
        main(
            [
                "perturb",
                "--model",
                f"{model_files}/net.py:make",
                "--data",
                f"{model_files}/x.npy",
                "--sigmas",
                "0.05:50:9",
                "--samples",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "resumed" in capsys.readouterr().out
    assert np.array_equal(Result.load(out / "apex.json").arrays["counts"], res.arrays["counts"])


def test_perturb_command_errors_are_one_line(model_files, capsys):
    base = [
        "perturb",
        "--model",
        f"{model_files}/net.py:make",
        "--data",
        f"{model_files}/x.npy",
        "--out",
        str(model_files / "o"),
    ]
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


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    small = dict(vocab_size=97, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=2, **small)
    ).save_pretrained(d / "gpt2")
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
            **small,
        )
    ).save_pretrained(d / "llama")
    torch.save(torch.randint(0, 97, (6, 8), generator=torch.Generator().manual_seed(0)), d / "tokens.pt")
    torch.save(torch.randn(6, 8), d / "floats.pt")
    np.save(d / "pos.npy", np.array([3, 7, 2, 5, 1, 6]))
    return d


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_perturb_runs_on_a_local_hf_language_model_with_token_ids(lm_folders, arch, capsys):
    out = lm_folders / f"out_{arch}"
    rc = main(
        [
            "perturb",
            "--model",
            str(lm_folders / arch),
            "--data",
            str(lm_folders / "tokens.pt"),
            "--sigmas",
            "0.1:10:4",
            "--samples",
            "8",
            "--out",
            str(out),
            "--position",
            str(lm_folders / "pos.npy"),
            "--tokens",
            "5,17",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "2 candidate tokens" in text
    res = Result.load(out / "apex.json")
    assert res.data["readout"]["position"] == [3, 7, 2, 5, 1, 6] and res.arrays["counts"].shape == (6, 4, 2)
    assert (
        main(
            [
                "perturb",
                "--model",
                str(lm_folders / arch),
                "--data",
                str(lm_folders / "tokens.pt"),
                "--sigmas",
                "0.1:10:3",
                "--samples",
                "4",
                "--out",
                str(lm_folders / f"vocab_{arch}"),
            ]
        )
        == 0
    )
    assert "whole vocabulary" in capsys.readouterr().out


def test_perturb_on_a_language_model_refuses_wrong_input_kinds_in_one_line(lm_folders, capsys):
    base = [
        "perturb",
        "--model",
        str(lm_folders / "gpt2"),
        "--sigmas",
        "0.1:10:3",
        "--samples",
        "4",
        "--out",
        str(lm_folders / "bad"),
    ]
    for extra, words in (
        [["--data", str(lm_folders / "floats.pt")], "integer token ids"],
        [["--data", str(lm_folders / "tokens.pt"), "--position", "40"], "out of range"],
        [["--data", str(lm_folders / "tokens.pt"), "--tokens", "5,x"], "cannot read --tokens"],
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if "Loading weights" not in ln]  # transformers' own progress bar
        assert words in err and "Traceback" not in err and len(lines) <= 2
