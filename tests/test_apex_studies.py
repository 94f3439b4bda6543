"""APEX study helpers (fast) and the quick studies end to end (slow: they train / load zoo models)."""

import json

import pytest
import torch

from innerprobe.results import ROW_FIELDS
from innerprobe.studies.apex_common import Rows


def test_rows_are_result_rows_with_per_seed_values():
    h = Rows()
    r = h.add("half_way_sigma", [1.0, 3.0, float("nan")], [0, 1, 2], model="digits-mlp", condition={"noise": "all"})
    assert r["value"] == 2.0 and r["lo"] < 2.0 < r["hi"] and r["n"] == 2 and r["seeds"] == [0, 1, 2]
    assert r["per_seed"] == [1.0, 3.0, None] and r["condition"] == {"noise": "all"}
    one = h.add("half_way_sigma", [1.5], [0], model="digits-mlp")
    assert one["lo"] is None and one["n"] == 1


def test_hugging_face_sequence_classifier():
    transformers = pytest.importorskip("transformers")
    from innerprobe.perturb import Engine

    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (4, 6))
    eng = Engine(model, ids, samples=4)
    assert any("intermediate" in str(r) for r in eng.rsites)  # the GELU activation module
    c0, l0 = eng.counts([0.0], keep_logits=True)
    with torch.no_grad():
        clean = model(ids.repeat_interleave(4, 0)).logits
    assert torch.equal(l0.view(-1, 3), clean)
    assert eng.counts([0.0, 5.0]).sum() == 4 * 2 * 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["apex-transition", "apex-regularity", "apex-random-labels", "apex-transitions", "apex-backdoor"]
)
def test_quick_study_writes_summary_and_section(name, tmp_path):
    from innerprobe.studies import get_study

    res = get_study(name)(tmp_path, seeds=1, quick=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] and all(set(ROW_FIELDS) <= set(r) for r in summary["rows"])
    assert all(" " not in r["metric"] and "=" not in r["metric"] for r in summary["rows"])
    assert all(isinstance(s, int) for r in summary["rows"] for s in r["seeds"])
    section = json.loads((tmp_path / "section.json").read_text())
    for f in section["figures"]:
        assert (tmp_path / f["file"]).exists()
    assert res.kind == f"study:{name}"
