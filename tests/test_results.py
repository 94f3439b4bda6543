"""Results round-trip through JSON (+ .npz arrays) with provenance, and give DataFrames."""
import json

import numpy as np
import pytest
import torch

from innerprobe import DataError, Result
from innerprobe.errors import ConfigError
from innerprobe.results import provenance, to_jsonable


def test_round_trip(tmp_path):
    r = Result("apex", data={"median": np.float32(0.5), "nan": float("nan"), "t": torch.tensor([1, 2])},
               tables={"rows": [{"sigma": 0.1, "p": 0.9}, {"sigma": 1.0, "p": 0.2}]},
               provenance=provenance(seed=3, model="digits-mlp", sites=["@ReLU"], config={"K": 32}),
               arrays={"counts": np.arange(12).reshape(2, 3, 2)})
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
