"""Issue 14 items 4 and 9, zoo side: the checksum on a card is required, the cache root must be a
folder, seeds and model specs out of range are refused by name (issue 16.4: a bad seed is a bad seed)."""

import json

import pytest
from safetensors.torch import save_file

from innerprobe import zoo
from innerprobe.errors import CacheError, ConfigError, ModelError
from innerprobe.zoo.loading import load_model
from innerprobe.zoo.recipes import RECIPES, Recipe, _classifier_floors


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path / "cache"))
    cfg = {
        "arch": "mlp",
        "hidden": [8],
        "epochs": 1,
        "lr": 1e-2,
        "batch_size": 128,
        "schedule": "constant",
        "weight_decay": 0.0,
    }
    r = Recipe("tiny-robust", "tiny MLP for tests", "classifier", 1, cfg, "digits", _classifier_floors(clean=0.0))
    monkeypatch.setitem(RECIPES, "tiny-robust", r)
    return r


def test_card_without_checksum_and_swapped_weights_is_refused(tiny):
    model, _ = zoo.load("tiny-robust", seed=0)
    p0 = zoo.card_path("tiny-robust", 0)
    card = json.loads((p0 / "card.json").read_text())
    del card["weights_sha256"]
    (p0 / "card.json").write_text(json.dumps(card))
    save_file({k: v + 1 for k, v in model.state_dict().items()}, str(p0 / "model.safetensors"))  # other weights
    with pytest.raises(CacheError, match="no weights_sha256 checksum"):
        zoo.load("tiny-robust", seed=0, train_if_missing=False)
    assert zoo.status("tiny-robust", 0)[0].startswith("invalid")


def test_cache_root_that_is_a_file_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    for root in (f, f / "below"):
        monkeypatch.setenv("INNERPROBE_CACHE", str(root))
        with pytest.raises(CacheError, match="is a file"):
            zoo.load("digits-mlp", train_if_missing=False)


@pytest.mark.parametrize(
    "spec,kind,match",
    [
        ("digits-mlp@99999999999999999999999", ConfigError, "seed"),
        ("digits-mlp@x", ConfigError, "bad seed 'x'"),
        ("digits-mlp@-1", ConfigError, "bad seed"),
        ("a" * 5000, ModelError, "5000 characters"),
        ("b" * 300, ModelError, "unknown model"),
        ("/" + "c" * 300 + ".py:make", ModelError, "does not exist"),
    ],
)
def test_model_specs_out_of_range(spec, kind, match, tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path))
    with pytest.raises(kind, match=match) as e:
        load_model(spec)
    assert len(e.value.message) < 400


@pytest.mark.parametrize("seed", [-1, 2**63, 18446744073709551616, True])
def test_zoo_load_seed_out_of_range(seed, tiny):
    with pytest.raises(ConfigError, match="seed"):
        zoo.load("tiny-robust", seed=seed)
