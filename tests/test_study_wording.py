"""Study wording from data: a head is named by its role only when its score beats the stated chance level."""

from __future__ import annotations

from innerprobe.report.sections import Section
from innerprobe.studies.path_induction import CHANCE_MARGIN, _head_table, named_heads


def test_heads_below_chance_are_not_named():
    scores = [[0.05, 0.30, 0.15]]
    assert named_heads(["a0.0", "a0.1", "a0.2"], scores, 0, chance=0.084) == ["a0.1"]
    assert named_heads(["a0.2"], scores, 0, chance=0.14 / CHANCE_MARGIN) == ["a0.2"]
    assert named_heads(["a0.2"], scores, 0, chance=0.16 / CHANCE_MARGIN) == []


def test_head_table_says_why_a_candidate_is_not_named():
    p = {
        "seed": 0,
        "uniform_prev_score": 0.084,
        "prev": ["a0.1"],
        "dup": [],
        "ind": ["a1.0"],
        "prev_scores": [[0.2, 0.05]],
        "dup_scores": [[0.0, 0.0]],
        "ind_scores": [[0.1], [0.6]],
    }
    sec = Section("t")
    _head_table(sec, [p])
    row = sec.tables[0]["rows"][0]
    assert row[1] == "0.084" and row[3] == "none" and row[6] == "a1.0"
    assert "not called previous-token heads" in sec.paragraphs[0] and "0.084" in sec.paragraphs[0]
