"""Every study's summary.json holds result rows with fixed fields (slow: the quick studies train / load zoo models)."""

import json

import pytest

from innerprobe.results import ROW_FIELDS, Result


def check_rows(folder):
    summary = json.loads((folder / "summary.json").read_text())
    rows = summary["rows"]
    assert rows and all(set(ROW_FIELDS) <= set(r) for r in rows)
    for r in rows:
        assert " " not in r["metric"] and "=" not in r["metric"]
        assert all(" " not in k and "=" not in k for k in r["condition"])
        assert all(isinstance(s, int) for s in r["seeds"])
        assert (r["lo"] is None) == (r["hi"] is None)
    assert not Result.load(folder / "summary.json").to_dataframe().empty
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", ["path-induction", "pullback-digits"])
def test_quick_study_rows(name, tmp_path):
    from innerprobe.studies import get_study

    get_study(name)(tmp_path, seeds=1, quick=True)
    rows = check_rows(tmp_path)
    assert all(r["n"] is None or r["n"] >= 1 for r in rows)
