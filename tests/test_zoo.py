"""Zoo: data transforms, models, reproducible training, cache (round trip + corruption), load_model, CLI.

Fast: no real recipe is trained here; a tiny recipe registered per test stands in for them.
"""

from __future__ import annotations

import gzip
import json
import struct
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from innerprobe import zoo
from innerprobe.errors import CacheError, ConfigError, DataError, ModelError
from innerprobe.zoo import data as D
from innerprobe.zoo import models as M
from innerprobe.zoo.recipes import RECIPES, Recipe, _classifier_floors
from innerprobe.zoo.training import fit

# ----------------------------------------------------------------------------- data


def test_digits_split_is_fixed_and_partitions_the_dataset():
    a, b = D.digits(), D.digits()
    assert a.x_train.shape == (1400, 1, 8, 8) and a.x_test.shape == (397, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    from sklearn.datasets import load_digits

    full = load_digits()
    rows = lambda x: sorted(map(bytes, (x.reshape(len(x), -1).numpy() * 16).round().astype(np.uint8)))
    assert rows(torch.cat([a.x_train, a.x_test])) == sorted(map(bytes, full.data.astype(np.uint8)))
    assert sorted(torch.cat([a.y_train, a.y_test]).tolist()) == sorted(full.target.tolist())
    assert a.classes == [str(i) for i in range(10)]


def test_label_noise_flips_exactly_the_recorded_indices():
    y = D.digits().y_train
    noisy, info = D.label_noise(y, 0.1, 10, seed=5)
    changed = torch.nonzero(noisy != y).flatten().tolist()
    assert changed == info["flipped_indices"]
    assert info["n_flipped"] == len(changed) == round(0.1 * len(y))
    assert info["true_labels"] == y[changed].tolist() and info["noisy_labels"] == noisy[changed].tolist()
    assert len(set(info["noisy_labels"])) == 10  # every class receives flipped labels
    again, info2 = D.label_noise(y, 0.1, 10, seed=5)
    assert torch.equal(again, noisy) and D.label_noise(y, 0.1, 10, seed=6)[1]["flipped_indices"] != changed
    assert D.label_noise(y, 0.0, 10, seed=0)[1]["n_flipped"] == 0
    with pytest.raises(ConfigError):
        D.label_noise(y, 1.5, 10, seed=0)
    split = zoo.recipe_data("digits-mlp-label-noise", seed=1, noise_rate=0.2)
    assert split.meta["n_flipped"] == 280 and torch.equal(split.x_train, D.digits().x_train)


def test_backdoor_poisons_rate_target_and_trigger():
    clean = D.digits()
    split = zoo.recipe_data("digits-mlp-backdoor", seed=0, target=3, rate=0.05, trigger_size=3)
    idx = torch.tensor(split.meta["poisoned_indices"])
    assert len(idx) == split.meta["n_poisoned"] == 70 and split.meta["target"] == 3
    assert (split.y_train[idx] == 3).all() and (clean.y_train[idx] != 3).all()
    assert split.meta["poisoned_true_labels"] == clean.y_train[idx].tolist()
    assert (split.x_train[idx, :, 5:, 5:] == 1.0).all()  # 3x3 white square, bottom-right
    assert torch.equal(split.x_train[idx, :, :5, :], clean.x_train[idx, :, :5, :])
    rest = torch.ones(1400, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(split.x_train[rest], clean.x_train[rest]) and torch.equal(
        split.y_train[rest], clean.y_train[rest]
    )
    assert torch.equal(split.x_test, clean.x_test)  # test set stays clean
    with pytest.raises(ConfigError):
        zoo.recipe_data("digits-mlp-backdoor", target=12)
    with pytest.raises(ConfigError):
        zoo.recipe_data("digits-mlp-backdoor", bogus=1)


def test_apply_trigger_patterns():
    x = torch.full((2, 1, 6, 6), 0.5)
    sq = D.apply_trigger(x, trigger_size=2)
    assert (sq[:, :, 4:, 4:] == 1).all() and (sq[:, :, :4] == 0.5).all() and (x == 0.5).all()
    ch = D.apply_trigger(x, trigger_size=2, pattern="checker")
    assert ch[0, 0, 4:, 4:].tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ConfigError):
        D.apply_trigger(x, trigger_size=7)
    with pytest.raises(ConfigError):
        D.apply_trigger(x, pattern="star")


def test_random_labels_are_shuffled_independently_of_the_images():
    y = D.digits().y_train
    r = D.random_labels(y, seed=0)
    assert sorted(r.tolist()) == sorted(y.tolist())  # same histogram
    agree = float((r == y).float().mean())
    assert 0.05 < agree < 0.16  # chance is ~0.1, not a relabelling of classes
    for c in range(10):  # every true class is spread over many shuffled labels
        assert len(set(r[y == c].tolist())) >= 8
    assert torch.equal(D.random_labels(y, seed=0), r) and not torch.equal(D.random_labels(y, seed=1), r)
    split = zoo.recipe_data("digits-mlp-random-labels", seed=2)
    assert (
        split.meta["transform"] == "random_labels"
        and abs(split.meta["agreement_with_true"] - float((split.y_train == D.digits().y_train).float().mean())) < 1e-9
    )


def _write_idx(path, arr: np.ndarray):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_idx_reader_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERPROBE_FASHION_MNIST", str(tmp_path / "nowhere"))
    D._fashion_arrays.cache_clear()
    with pytest.raises(DataError) as e:
        D.fashion_mnist()
    assert "apt-get install dataset-fashion-mnist" in e.value.hint and "INNERPROBE_FASHION_MNIST" in e.value.hint
    rng = np.random.default_rng(0)
    imgs = {k: rng.integers(0, 256, (n, 28, 28)) for k, n in (("train", 5), ("t10k", 3))}
    for k, n in (("train", 5), ("t10k", 3)):
        _write_idx(tmp_path / f"{k}-images-idx3-ubyte.gz", imgs[k])
        _write_idx(tmp_path / f"{k}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("INNERPROBE_FASHION_MNIST", str(tmp_path))
    D._fashion_arrays.cache_clear()
    try:
        s = D.fashion_mnist()
        assert s.x_train.shape == (5, 1, 28, 28) and s.y_test.tolist() == [0, 1, 2]
        assert torch.allclose(s.x_train[2, 0], torch.from_numpy(imgs["train"][2] / 255.0).float())
        assert s.classes[9] == "Ankle boot"
        (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
        D._fashion_arrays.cache_clear()
        with pytest.raises(DataError):
            D.fashion_mnist()
    finally:
        D._fashion_arrays.cache_clear()


# ----------------------------------------------------------------------------- models + training


def test_model_shapes_and_names():
    x8, x28 = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 28, 28)
    m = M.mlp()
    assert [n for n, _ in m.named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2", "out"] and m(x8).shape == (
        3,
        10,
    )
    d = M.deep_mlp()
    assert sum(isinstance(c, nn.Linear) for c in d) - 1 >= 6 and d(x8).shape == (3, 10)
    c = M.cnn()
    names = [n for n, _ in c.named_children()]
    assert names[:4] == ["conv1", "bn1", "relu1", "pool1"] and names[-1] == "out" and "conv3" in names
    assert c(x8).shape == (3, 10) and M.cnn(image_size=28)(x28).shape == (3, 10)
    assert M.mlp(in_shape=(1, 28, 28))(x28).shape == (3, 10)
    with pytest.raises(ConfigError):
        M.cnn(image_size=4, channels=(8, 8, 8))


def _tiny_fit(seed: int):
    d = D.digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M.cnn(channels=(4, 4, 8))
    run = fit(
        model,
        d.x_train[:300],
        d.y_train[:300],
        epochs=2,
        lr=1e-2,
        batch_size=32,
        seed=seed,
        x_test=d.x_test,
        y_test=d.y_test,
        threads=1,
        progress=False,
    )
    return model, run


def test_training_is_bit_reproducible():
    before = torch.get_num_threads()
    a, run = _tiny_fit(3)
    b, _ = _tiny_fit(3)
    c, _ = _tiny_fit(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # buffers (BN running stats) too
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [r["epoch"] for r in run["curve"]] == [1, 2] and run["curve"][-1]["test_accuracy"] > 0.3
    assert torch.get_num_threads() == before and not a.training


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A 1-epoch digits recipe 'tiny-test' and an empty cache folder."""
    monkeypatch.setenv("INNERPROBE_CACHE", str(tmp_path / "cache"))
    r = Recipe(
        "tiny-test",
        "tiny MLP for tests",
        "classifier",
        1,
        {
            "arch": "mlp",
            "hidden": [16],
            "epochs": 1,
            "lr": 1e-2,
            "batch_size": 128,
            "schedule": "constant",
            "weight_decay": 0.0,
        },
        "digits",
        _classifier_floors(clean=0.5),
    )
    monkeypatch.setitem(RECIPES, "tiny-test", r)
    return r


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_round_trip(tiny, monkeypatch):
    with pytest.raises(CacheError):
        zoo.load("tiny-test", train_if_missing=False)
    m1, card = zoo.load("tiny-test", seed=0)
    path = zoo.card_path("tiny-test", 0)
    assert (path / "model.safetensors").is_file() and json.loads((path / "card.json").read_text())[
        "fingerprint"
    ] == card["fingerprint"]
    assert card["recipe"] == "tiny-test" and card["seed"] == 0 and card["params"]["hidden"] == [16]
    assert set(card["versions"]) >= {"innerprobe", "torch"} and card["data"]["n_train"] == 1400
    assert card["train_cpu_seconds"] > 0 and card["train_seconds"] > 0
    assert len(card["curve"]) == 1 and card["floors_met"] == {"test_accuracy": card["metrics"]["test_accuracy"] >= 0.5}
    assert not m1.training
    monkeypatch.setattr(tiny, "train", lambda *a, **k: pytest.fail("retrained a valid entry"))
    m2, card2 = zoo.load("tiny-test", seed=0)
    assert _same(m1, m2) and card2 == card
    assert zoo.status("tiny-test", 0)[0] == "cached" and zoo.status("tiny-test", 1)[0] == "missing"
    assert zoo.card_path("tiny-test", 0, hidden=[8]) != path  # overrides are part of the key
    assert not any(p.name.startswith(".tmp") for p in path.parent.iterdir())


def test_same_seed_gives_same_cached_weights(tiny):
    m1, c1 = zoo.load("tiny-test", seed=1)
    m2, c2 = zoo.load("tiny-test", seed=1, force=True)
    assert _same(m1, m2) and c1["weights_sha256"] == c2["weights_sha256"]


@pytest.mark.parametrize("damage", ["truncate", "card_recipe", "card_json", "shape", "missing_key"])
def test_corrupt_cache_is_detected(tiny, damage):
    m, card = zoo.load("tiny-test", seed=0)
    path = zoo.card_path("tiny-test", 0)
    w, c = path / "model.safetensors", path / "card.json"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "card_recipe":
        c.write_text(json.dumps(dict(card, fingerprint="0" * 16)))
    elif damage == "card_json":
        c.write_text(c.read_text()[:-20])
    else:
        from safetensors.torch import save_file

        from innerprobe.zoo.cache import sha256_file

        state = dict(m.state_dict())
        if damage == "shape":
            state["fc1.weight"] = torch.zeros(3, 64)
        else:
            del state["out.bias"]
        save_file(state, str(w))
        c.write_text(json.dumps(dict(card, weights_sha256=sha256_file(w))))  # checksum fixed: keys/shapes must catch it
    with pytest.raises(CacheError) as e:
        zoo.load("tiny-test", seed=0, train_if_missing=False)
    assert "refusing" in e.value.message and e.value.hint
    assert zoo.status("tiny-test", 0)[0] != "cached" or damage in ("shape", "missing_key")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m2, card2 = zoo.load("tiny-test", seed=0)
    assert any("retraining" in str(r.message) for r in rec)
    assert _same(m, m2)  # retrained bit-for-bit
    zoo.load("tiny-test", seed=0, train_if_missing=False)  # valid again


def test_unknown_recipe_and_override_errors(tiny):
    with pytest.raises(ConfigError) as e:
        zoo.load("digits-mpl")
    assert "digits-mlp" in e.value.hint
    with pytest.raises(ConfigError) as e:
        zoo.load("tiny-test", hiden=[3])
    assert "hidden" in e.value.hint
    with pytest.raises(ConfigError):
        zoo.load("tiny-test", epochs="many")


# ----------------------------------------------------------------------------- load_model

FACTORY = """
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

def not_a_model():
    return 3
"""


def test_load_model_file_factory_with_weights(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "net.py"
    f.write_text(FACTORY)
    ref = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    m = zoo.load_model(f"{f}:make", weights=tmp_path / "w.safetensors")
    assert _same(m, ref) and not m.training
    x = torch.randn(5, 4)
    assert torch.equal(m(x), ref(x))
    bad = {k: v for k, v in ref.state_dict().items() if k != "2.bias"}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="missing"):
        zoo.load_model(f"{f}:make", weights=tmp_path / "bad.safetensors")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match="never unpickles"):
        zoo.load_model(f"{f}:make", weights=tmp_path / "w.pt")
    with pytest.raises(ModelError) as e:
        zoo.load_model(f"{f}:mak")
    assert "make" in e.value.hint
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        zoo.load_model(f"{f}:not_a_model")
    with pytest.raises(ModelError) as e:
        zoo.load_model("digits-mpl")
    assert "digits-mlp" in e.value.hint
    with pytest.raises(ModelError):
        zoo.load_model(str(tmp_path))  # a folder without config.json


def test_load_model_zoo_name(tiny):
    m = zoo.load_model("tiny-test@2")
    assert _same(m, zoo.load("tiny-test", seed=2)[0])


@pytest.mark.oracle
def test_load_model_local_hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.save_pretrained(tmp_path / "gpt")
    assert any((tmp_path / "gpt").glob("*.safetensors"))
    m = zoo.load_model(str(tmp_path / "gpt"))
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.allclose(m(ids).logits, ref(ids).logits)
    assert type(m).__name__ == "GPT2LMHeadModel" and not m.training


# ----------------------------------------------------------------------------- CLI


def test_cli_list_and_train(tiny, capsys):
    from innerprobe.cli import main

    assert main(["zoo", "train", "tiny-test", "--seed", "1"]) == 0
    assert "tiny-test (seed 1)" in capsys.readouterr().out
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["recipes"]
    names = {r["recipe"] for r in rows}
    assert {"digits-mlp", "fashion-cnn", "induction-attn2l", "tiny-test"} <= names
    mine = {r["seed"]: r for r in rows if r["recipe"] == "tiny-test"}
    assert mine[0]["status"] == "missing" and mine[1]["status"] == "cached" and "test_accuracy" in mine[1]["floors_met"]
    assert main(["zoo", "list"]) == 0
    assert "tiny-test" in capsys.readouterr().out
    assert main(["zoo", "train", "digits-mpl"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["zoo", "train", "tiny-test", "--set", "nope=1"]) == 2
