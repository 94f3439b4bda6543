"""Slow: train real zoo recipes in a temporary cache and check their floors and reproducibility."""

from __future__ import annotations

import importlib.util

import pytest

from innerprobe import zoo

pytestmark = pytest.mark.slow

DIGITS = [
    "digits-mlp",
    "digits-deep-mlp",
    "digits-cnn",
    "digits-mlp-random-labels",
    "digits-cnn-random-labels",
    "digits-mlp-label-noise",
    "digits-mlp-backdoor",
    "digits-cnn-backdoor",
]
FASHION = ["fashion-cnn", "fashion-cnn-random-labels", "fashion-cnn-backdoor"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", DIGITS)
def test_digits_recipe_meets_its_floors(cache, name):
    model, card = zoo.load(name, seed=0)
    assert all(card["floors_met"].values()), card["floors"]
    assert card["floors_met"] or name == "digits-mlp-label-noise", "every recipe but label-noise has floors"
    if name == "digits-mlp-label-noise":
        assert card["metrics"]["n_flipped"] == 140 and len(card["data"]["flipped_indices"]) == 140
    if "backdoor" in name:
        assert card["data"]["target"] == 0 and card["data"]["trigger"]["size"] == 2


def test_real_recipe_is_bit_reproducible(cache):
    _, a = zoo.load("digits-mlp", seed=5)
    _, b = zoo.load("digits-mlp", seed=5, force=True)
    assert a["weights_sha256"] == b["weights_sha256"]


@pytest.mark.parametrize("name", FASHION)
def test_fashion_recipe_meets_its_floors(cache, name):
    from innerprobe.zoo.data import FASHION_FILES, fashion_dir

    if not all((fashion_dir() / f).is_file() for f in FASHION_FILES.values()):
        pytest.skip("Fashion-MNIST not installed")
    _, card = zoo.load(name, seed=0)
    assert all(card["floors_met"].values()), card["floors"]


def test_induction_recipe_meets_its_floors(cache):
    if importlib.util.find_spec("innerprobe.zoo.induction") is None:
        pytest.skip("innerprobe.zoo.induction not available")
    model, card = zoo.load("induction-attn2l", seed=0)
    assert set(card["floors_met"]) == {"loss_predictable", "loss_unpredictable"} and all(card["floors_met"].values()), (
        card["floors"]
    )
    again, _ = zoo.load("induction-attn2l", seed=0, train_if_missing=False)
    sa, sb = model.state_dict(), again.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)
