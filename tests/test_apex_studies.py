"""APEX study helpers (fast) and the quick studies end to end (slow: they train / load zoo models)."""
import json

import numpy as np
import pytest
import torch

from innerprobe.studies.apex_common import Headlines, boot_ci, t_ci


def test_t_ci_and_bootstrap():
    m, lo, hi = t_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi and np.isclose(hi - 2.0, 4.302653 * 1 / np.sqrt(3), rtol=1e-4)
    assert np.isnan(t_ci([1.0])[1])
    stat, lo, hi = boot_ci(np.mean, np.arange(100.0), n=200)
    assert lo < stat < hi and stat == 49.5


def test_headlines_flatten():
    h = Headlines()
    h.add("x", [1.0, 3.0], [0, 1])
    flat = h.flat()
    assert flat["x"] == 2.0 and len(flat["x_ci95"]) == 2 and h.rows[0]["seeds"] == [0, 1]


def test_hugging_face_sequence_classifier():
    transformers = pytest.importorskip("transformers")
    from innerprobe.perturb import Engine

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                  num_labels=3, max_position_embeddings=16)
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
@pytest.mark.parametrize("name", ["apex-transition", "apex-regularity", "apex-random-labels", "apex-transitions", "apex-backdoor"])
def test_quick_study_writes_summary_and_section(name, tmp_path):
    from innerprobe.studies import get_study

    res = get_study(name)(tmp_path, seeds=1, quick=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tables"]["headlines"] and all("ci95_lo" in r and r["seeds"] for r in summary["tables"]["headlines"])
    section = json.loads((tmp_path / "section.json").read_text())
    for f in section["figures"]:
        assert (tmp_path / f["file"]).exists()
    assert res.kind == f"study:{name}"
