"""Results round-trip through JSON (+ .npz arrays) with provenance, and give DataFrames."""

import json

import numpy as np
import pytest
import torch

from innerprobe import DataError, Result
from innerprobe.errors import ConfigError
from innerprobe.results import provenance, to_jsonable


def test_round_trip(tmp_path):
    r = Result(
        "apex",
        data={"median": np.float32(0.5), "nan": float("nan"), "t": torch.tensor([1, 2])},
        tables={"rows": [{"sigma": 0.1, "p": 0.9}, {"sigma": 1.0, "p": 0.2}]},
        provenance=provenance(seed=3, model="digits-mlp", sites=["@ReLU"], config={"K": 32}),
        arrays={"counts": np.arange(12).reshape(2, 3, 2)},
    )
    path = r.save(tmp_path / "r.json")
    back = Result.load(path)
    assert back.kind == "apex" and back.data == {"median": 0.5, "nan": None, "t": [1, 2]}
    assert np.array_equal(back.arrays["counts"], r.arrays["counts"])
    assert back.provenance["seed"] == 3 and back.provenance["sites"] == ["@ReLU"]
    assert back.provenance["torch"] == torch.__version__ and "innerprobe" in back.provenance
    df = back.to_dataframe("rows")
    assert list(df.columns) == ["sigma", "p"] and df["p"].iloc[1] == 0.2
    json.loads(path.read_text())  # plain JSON, no NaN tokens
    assert "NaN" not in path.read_text()


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="no table"):
        Result("x", tables={"a": []}).to_dataframe("b")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        Result.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="not an innerprobe result"):
        Result.load(bad)


def test_to_jsonable_nested():
    assert to_jsonable({"a": (np.int64(1), np.bool_(True), float("inf"))}) == {"a": [1, True, None]}


def test_row_fields_and_ci():
    from innerprobe.core.stats import t_interval
    from innerprobe.results import row

    r = row(
        "target_share_ratio",
        t_interval([1.5, 2.0, 2.5]),
        model="digits-mlp",
        condition={"noise": "all", "sigma": np.int64(64)},
        seeds=np.arange(3),
        note="x",
    )
    assert list(r)[:8] == ["metric", "model", "condition", "seeds", "value", "lo", "hi", "n"]
    assert r["seeds"] == [0, 1, 2] and type(r["seeds"][0]) is int and r["condition"] == {"noise": "all", "sigma": 64}
    assert r["value"] == 2.0 and r["lo"] < 2.0 < r["hi"] and r["n"] == 3 and r["ci_method"] == "t" and r["note"] == "x"
    one = row("acc", t_interval([0.9]), seeds=[0])
    assert one["lo"] is None and one["hi"] is None and one["n"] == 1
    assert row("acc", float("nan"))["value"] is None
    json.dumps([r, one])


@pytest.mark.parametrize(
    "kw",
    [
        {"metric": "target share"},
        {"metric": "acc_sigma=64"},
        {"condition": {"sigma 64": 1}},
        {"condition": {"a=b": 1}},
        {"seeds": ["s0t0"]},
        {"condition": {"value": 1}},
        {"lo": 0.1},
        {"value": "0.00/0.00"},
    ],
)
def test_row_refuses_prose_by_name(kw):
    from innerprobe.results import row

    args = {"metric": "acc", "value": 0.5, **kw}
    with pytest.raises(ConfigError):
        row(args.pop("metric"), args.pop("value"), **args)


def test_rows_round_trip_and_tidy_frame(tmp_path):
    from innerprobe.results import row

    rows = [row("acc", 0.9, model="m", condition={"sigma": s}, seeds=[0]) for s in (1, 2)]
    back = Result.load(Result("study", rows=rows, tables={"curve": [{"a": 1}]}).save(tmp_path / "summary.json"))
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == rows == back.rows
    df = back.to_dataframe()
    assert list(df["sigma"]) == [1, 2] and "condition" not in df and df["metric"].tolist() == ["acc", "acc"]
    assert back.to_dataframe("curve")["a"].tolist() == [1]
    with pytest.raises(ConfigError, match="it has: rows, curve"):
        back.to_dataframe("curves")
