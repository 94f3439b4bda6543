"""innerprobe patch: hypotheses and --edges on a small untrained transformer from a factory file."""

import json

import pytest

from innerprobe.cli import main

FACTORY = """
from innerprobe.zoo.transformer import build_transformer

def make():
    import torch
    torch.manual_seed(0)
    return build_transformer({"n_layers": 2, "n_heads": 2, "d_model": 16, "d_head": 4, "vocab": 12, "n_ctx": 40})
"""


@pytest.fixture()
def factory(tmp_path):
    f = tmp_path / "tiny.py"
    f.write_text(FACTORY)
    return f"{f}:make"


def test_patch_hypotheses_and_edges(factory, tmp_path, capsys):
    out = tmp_path / "run"
    hyp = tmp_path / "naive.txt"
    hyp.write_text("# naive\nedge embed -> a1.*:v\nedge a1.* -> out\n")
    rc = main(
        [
            "patch",
            "--model",
            factory,
            "-H",
            str(hyp),
            "-H",
            "all",
            "-H",
            "embed -> a0.0:v -> a1.1:k -> out",
            "--edges",
            "--pairs",
            "6",
            "--ig-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    props = {r["hypothesis"]: r["proportion"] for r in s["tables"]["hypotheses"]}
    assert props["all"] == pytest.approx(1.0, abs=1e-5)
    assert len(s["tables"]["edges"]) == 42  # 2 inputs x 6 + 4 sources x 6 + 6 into out
    for f in ("edges_circuit.png", "heads.png", "eap_vs_exact.png", "section.json", "hypothesis_1.png"):
        assert (out / f).exists(), f
    assert "proportion explained" in capsys.readouterr().out


def test_patch_bad_hypothesis_is_one_clear_line(factory, tmp_path, capsys):
    rc = main(["patch", "--model", factory, "-H", "embed -> a9.0:v -> out", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown node 'a9.0'" in err and "Traceback" not in err
    rc = main(["patch", "--model", factory, "--out", str(tmp_path / "x")])
    assert rc == 2 and "nothing to do" in capsys.readouterr().err


def test_show_graph(factory, capsys):
    assert main(["patch", "--model", factory, "--show-graph"]) == 0
    text = capsys.readouterr().out
    assert "a1.1" in text and "embed->a0.0:q" in text
