"""cli.inputs and cli.spec: one loader (same formats and errors everywhere), one model-spec parser (@seed honoured)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from innerprobe.cli import main
from innerprobe.cli.inputs import load_inputs, read_file
from innerprobe.cli.spec import parse_model
from innerprobe.errors import ConfigError, DataError

X = np.random.default_rng(0).random((4, 1, 8, 8)).astype("float32")
Y = np.array([1, 2, 3, 0])


def _write_all(tmp_path, x, y=None):
    from safetensors.torch import save_file

    paths = {
        "npy": tmp_path / "x.npy",
        "npz": tmp_path / "x.npz",
        "pt": tmp_path / "x.pt",
        "safetensors": tmp_path / "x.safetensors",
    }
    np.save(paths["npy"], x)
    d = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(paths["npz"], **d)
    torch.save({k: torch.as_tensor(v) for k, v in d.items()}, paths["pt"])
    save_file({k: torch.as_tensor(v).contiguous() for k, v in d.items()}, str(paths["safetensors"]))
    return paths


def test_every_format_reads_the_same_inputs(tmp_path):
    paths = _write_all(tmp_path, X, Y)
    for kind, p in paths.items():
        x, y = read_file(p)
        assert x.dtype == torch.float32 and torch.equal(x, torch.as_tensor(X)), kind
        assert (y is None) == (kind == "npy") and (y is None or y.tolist() == Y.tolist()), kind


def test_integer_tokens_stay_integer(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 50, (3, 12)).astype(np.int32)
    for kind, p in _write_all(tmp_path, tokens).items():
        x, _ = read_file(p)
        assert x.dtype == torch.int64 and torch.equal(x, torch.as_tensor(tokens).long()), kind


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("x.csv", "1,2", "not a supported input file"),
        ("missing.npy", None, "does not exist"),
        ("bad.npy", "not numpy", "cannot read"),
        ("bad.pt", "pickle", "cannot read"),
        ("nan.npy", "nan", "NaN or inf"),
        ("keys.npz", "keys", "none named 'x'"),
    ],
)
def test_bad_files_are_one_line_data_errors(tmp_path, name, content, msg):
    p = tmp_path / name
    if content == "pickle":
        torch.save({"x": object()}, p)  # weights_only=True refuses arbitrary objects
    elif content == "nan":
        np.save(p, np.array([[np.nan, 1.0]]))
    elif content == "keys":
        np.savez(p, a=X, b=X)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(DataError, match=msg) as e:
        read_file(p)
    assert "\n" not in e.value.message


def test_model_spec_seed_and_bad_seed():
    s = parse_model("digits-mlp@1")
    assert (s.name, s.seed, s.zoo) == ("digits-mlp", 1, True)
    assert parse_model("digits-mlp").seed == 0 and not parse_model("net.py:make").zoo
    with pytest.raises(ConfigError, match="bad seed 'x'"):
        parse_model("digits-mlp@x")


def test_default_data_follows_the_spec_seed():
    from innerprobe import zoo

    for seed in (0, 1):
        inp = load_inputs(None, parse_model(f"digits-mlp@{seed}"), n=5)
        assert torch.equal(inp.x, zoo.recipe_data("digits-mlp", seed=seed).x_test[:5]) and "seed" in inp.description


def test_bad_seed_is_reported_as_a_bad_seed_by_every_command(tmp_path, capsys):
    for cmd in (["perturb", "--out", str(tmp_path)], ["scan"], ["pullback"], ["patch", "--out", str(tmp_path)]):
        assert main([cmd[0], "--model", "digits-mlp@one", *cmd[1:]]) == 2
        err = capsys.readouterr().err
        assert "bad seed 'one'" in err and "Traceback" not in err, cmd
