"""``innerprobe pullback`` on a tiny file.py:factory model and on local HF GPT-2 / Llama folders (no zoo training)."""

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
    np.savez(
        tmp_path / "x.npz", x=np.random.default_rng(0).random((3, 1, 8, 8)).astype("float32"), y=np.array([1, 2, 3])
    )
    return tmp_path


def test_cli_writes_grids_arrays_and_section(setup):
    out = setup / "out"
    assert (
        main(
            [
                "pullback",
                "--model",
                f"{setup}/net.py:make",
                "--data",
                str(setup / "x.npz"),
                "--target",
                "label",
                "-T",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
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
    assert (
        main(["pullback", "-m", f"{setup}/net.py:make", "--data", str(setup / "x.npz"), "-t", "all", "-o", str(out)])
        == 0
    )
    assert np.load(out / "attributions.npz")["pullback"].shape == (3, 10, 1, 8, 8)
    assert (out / "gradient_grid.png").exists()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["-t", "12"], "outside 0..9"),
        (["-t", "1,2"], "for 3 inputs"),
        (["-T", "0"], "positive"),
        (["--gate", "soft"], "unknown gate"),
        (["-t", "x"], "cannot read --target"),
    ],
)
def test_cli_bad_input_is_one_line_error(setup, capsys, args, msg):
    rc = main(
        ["pullback", "-m", f"{setup}/net.py:make", "--data", str(setup / "x.npz"), "-o", str(setup / "bad"), *args]
    )
    assert rc == 2
    assert msg in capsys.readouterr().err


# ----------------------------------------------------------------------------- language models
@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=1, n_head=2, n_embd=16, vocab_size=30, n_positions=8, bos_token_id=0, eos_token_id=0
        )
    )
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            hidden_size=16,
            intermediate_size=32,
            vocab_size=30,
            max_position_embeddings=8,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    for name, m in (("gpt2", gpt2), ("llama", llama)):
        m.save_pretrained(root / name)
    torch.save(torch.randint(1, 30, (3, 6), generator=torch.Generator().manual_seed(0)), root / "tokens.pt")
    torch.save(torch.rand(3, 6), root / "floats.pt")
    return root


@pytest.mark.parametrize("name,target", [("gpt2", "5-7"), ("llama", "pred"), ("llama", "4,5,6")])
def test_cli_language_model_token_attributions(hf_folders, name, target, capsys):
    out = hf_folders / f"out-{name}-{target}"
    rc = main(
        [
            "pullback",
            "--model",
            str(hf_folders / name),
            "--data",
            str(hf_folders / "tokens.pt"),
            "--target",
            target,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    z = np.load(out / "attributions.npz")
    assert (
        z["tokens"].dtype.kind == "i"
        and z["pullback_relevance"].shape == (3, 6)
        and z["pullback_map"].shape == (3, 6, 16)
    )
    cov = json.loads((out / "summary.json").read_text())["data"]["coverage"]
    assert (
        cov["gated"] > 0 and cov["gated"] == cov["seen"]
    )  # successor preset: every GELU/SiLU, norm and attention call
    assert "coverage" in capsys.readouterr().out and (out / "token_relevance.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--data", "floats.pt"], "language model"),
        (["--target", "99"], "outside 0..29"),
        (["--target", "a-b"], "cannot read --target"),
        (["--target", "1,2"], "for 3 inputs"),
    ],
)
def test_cli_language_model_bad_input_is_one_line_error(hf_folders, capsys, args, msg):
    base = {"--data": str(hf_folders / "tokens.pt"), "--target": "4"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = str(hf_folders / v) if v.endswith(".pt") else v
    rc = main(
        [
            "pullback",
            "--model",
            str(hf_folders / "gpt2"),
            "--out",
            str(hf_folders / "bad"),
            *[x for kv in base.items() for x in kv],
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
