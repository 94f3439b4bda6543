"""Zoo cards in the report, from synthetic cards and tiny untrained models (no training here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from innerprobe import zoo
from innerprobe.core.hooks import count_hooks
from innerprobe.report import zoo_section
from innerprobe.report.html import build_report


def _card(recipe: str, metrics: dict, floors: list[dict], params: dict | None = None, curve=None) -> dict:
    return {
        "recipe": recipe,
        "description": f"test card for {recipe}",
        "seed": 0,
        "params": params if params is not None else dict(zoo.get_recipe(recipe).params),
        "metrics": metrics,
        "floors": floors,
        "all_floors_met": all(f["met"] for f in floors),
        "train_seconds": 1.25,
        "train_threads": 1,
        "n_parameters": 123,
        "versions": {"torch": torch.__version__},
        "curve": curve
        if curve is not None
        else [
            {"epoch": e, "loss": 1.0 / e, "train_accuracy_running": 0.5 + e / 10, "test_accuracy": 0.5 + e / 12}
            for e in range(1, 5)
        ],
    }


def test_quick_demo_recipes_are_the_digits_ones_plus_induction_and_ioi():
    quick = zoo_section.demo_recipes(quick=True)
    assert {"induction-attn2l", "ioi-llama"} <= set(quick)
    assert all(n.startswith("digits-") or n in ("induction-attn2l", "ioi-llama") for n in quick)
    assert {n for n in zoo.RECIPES if n.startswith("digits-")} <= set(quick)
    full = zoo_section.demo_recipes(quick=False)
    assert full == [n for n in zoo.RECIPES if zoo.RECIPES[n].demo] and "fashion-cnn" in full
    assert not any(n.startswith(("bdset-", "loc-")) for n in full)  # evaluation-set models stay with their study


def test_metrics_table_marks_floors_met_and_not_met_and_missing():
    card = _card(
        "digits-mlp-backdoor",
        {"clean_accuracy": 0.97, "attack_success": 0.5, "train_accuracy": 1.0},
        [
            {"metric": "attack_success", "op": ">=", "threshold": 0.95, "value": 0.5, "met": False},
            {"metric": "clean_accuracy", "op": ">=", "threshold": 0.95, "value": 0.97, "met": True},
            {"metric": "gone", "op": "<=", "threshold": 1.0, "value": None, "met": False},
        ],
    )
    cols, rows = zoo_section.metrics_table(card)
    by = {r[0]: r for r in rows}
    assert cols == ["metric", "value", "floor", "status"]
    assert (
        by["attack_success"][3] == "not met"
        and by["clean_accuracy"][3] == "met"
        and by["train_accuracy"][2:] == ["", ""]
    )
    assert by["gone"][1] is None and by["gone"][3] == "not met"
    assert [r[0] for r in rows] == ["train_accuracy", "clean_accuracy", "attack_success", "gone"]


@pytest.mark.parametrize(
    "recipe", ["digits-mlp", "digits-mlp-backdoor", "digits-mlp-label-noise", "digits-mlp-random-labels"]
)
def test_classifier_card_has_samples_curve_and_leaves_model_alone(tmp_path, recipe):
    model = zoo.models.mlp((1, 8, 8), hidden=(16,))
    model.train()  # the card must not leave it in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    card = _card(
        recipe,
        {"test_accuracy": 0.96},
        [{"metric": "test_accuracy", "op": ">=", "threshold": 0.95, "value": 0.96, "met": True}],
    )
    if recipe.endswith("label-noise"):
        card["data"] = {"flipped_indices": [1, 2]}
    path = zoo_section.model_section(tmp_path / recipe, recipe, 0, model, card, order=30)
    sec = json.loads(path.read_text())
    files = [f["file"] for f in sec["figures"]]
    assert files == ["samples.png", "curve.png"]
    for f in files:
        assert (tmp_path / recipe / f).read_bytes()[:4] == b"\x89PNG"
    assert model.training and count_hooks(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    text = " ".join(sec["paragraphs"])
    assert "123 parameters" in text and "1.2 s" in text and "floors met: 1 of 1" in text
    if recipe.endswith("backdoor"):
        assert "target class 0" in text and "trigger" in sec["figures"][0]["caption"]
    page = build_report(tmp_path).read_text()
    assert page.count("data:image/png;base64,") == 2


def test_induction_card_shows_per_head_scores(tmp_path):
    prev = [[0.9, 0.1], [0.2, 0.05]]
    ind = [[0.01, 0.02], [0.03, 0.8]]
    ln = math.log(64)
    card = _card(
        "induction-attn2l",
        {
            "loss_repeat": 0.3,
            "loss_predictable": 0.3,
            "loss_unpredictable": 4.0,
            "ln_vocab": ln,
            "prev_token_scores": prev,
            "induction_scores": ind,
        },
        [
            {"metric": "loss_repeat", "op": "<=", "threshold": 0.25 * ln, "value": 0.3, "met": True},
            {"metric": "loss_unpredictable", "op": ">=", "threshold": 0.9 * ln, "value": 4.0, "met": True},
        ],
        params={},
        curve=[
            {"step": s, "loss": 3.0 / s, "loss_predictable": 2.0 / s, "loss_unpredictable": 4.1}
            for s in (100, 200, 300)
        ],
    )
    path = zoo_section.model_section(tmp_path / "ind", "induction-attn2l", 0, None, card)
    sec = json.loads(path.read_text())
    assert [f["file"] for f in sec["figures"]] == ["head_scores.png", "curve.png"]
    heads = next(t for t in sec["tables"] if t["columns"][0] == "head")
    assert heads["rows"][3] == ["L1.H1", 0.05, 0.8] and len(heads["rows"]) == 4
    assert not (tmp_path / "ind" / "samples.png").exists()
    caption = sec["figures"][0]["caption"]
    assert "previous-token score: L0.H0 (0.90)" in caption and "induction score: L1.H1 (0.80)" in caption


def test_overview_reads_status_without_training(tmp_path, monkeypatch):
    calls = []

    def fake_status(name, seed=0, **kw):
        calls.append(name)
        if name == "digits-mlp":
            return "cached", _card(
                "digits-mlp",
                {"test_accuracy": 0.97},
                [{"metric": "test_accuracy", "op": ">=", "threshold": 0.95, "value": 0.97, "met": True}],
            )
        return "missing", None

    def no_load(*a, **k):
        raise AssertionError("the overview must not train or load models")

    monkeypatch.setattr(zoo, "status", fake_status)
    monkeypatch.setattr(zoo, "load", no_load)
    sec = json.loads(zoo_section.write_overview_section(tmp_path, ["digits-mlp", "digits-cnn"]).read_text())
    rows = sec["tables"][0]["rows"]
    assert calls == ["digits-mlp", "digits-cnn"]
    assert rows[0][2] == "cached" and rows[0][-1] == "met" and "test_accuracy=0.970" in rows[0][5]
    assert rows[1][2] == "missing"
    assert "1 meet every floor" in sec["paragraphs"][0]


def test_demo_zoo_step_records_a_failing_model_and_goes_on(tmp_path, monkeypatch):
    from innerprobe.cli import demo as rcli
    from innerprobe.errors import DataError

    good = _card(
        "digits-mlp",
        {"test_accuracy": 0.97},
        [{"metric": "test_accuracy", "op": ">=", "threshold": 0.95, "value": 0.97, "met": True}],
    )

    def fake_load(name, seed=0, **kw):
        if name == "fashion-cnn":
            raise DataError("Fashion-MNIST files not found", hint="apt-get install dataset-fashion-mnist")
        return zoo.models.mlp((1, 8, 8), hidden=(8,)), good

    monkeypatch.setattr(zoo, "load", fake_load)
    monkeypatch.setattr(
        zoo, "status", lambda name, seed=0: ("cached", good) if name != "fashion-cnn" else ("missing", None)
    )
    monkeypatch.setattr(zoo_section, "demo_recipes", lambda quick: ["fashion-cnn", "digits-mlp"])
    run = rcli.DemoRun(tmp_path)
    rcli._zoo_step(run, quick=False)
    assert [(s.name, s.status) for s in run.steps] == [("fashion-cnn", "failed"), ("digits-mlp", "ok")]
    failed = json.loads((tmp_path / "zoo" / "fashion-cnn" / "section.json").read_text())
    assert (
        failed["title"] == "FAILED: zoo model fashion-cnn"
        and "Fashion-MNIST files not found" in failed["paragraphs"][0]
    )
    assert "apt-get install dataset-fashion-mnist" in failed["paragraphs"][0]
    assert (tmp_path / "zoo" / "digits-mlp" / "samples.png").exists() and (tmp_path / "zoo" / "section.json").exists()
