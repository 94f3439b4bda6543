"""The scan's natural-feature check (docs/scan.md, stage d): do a class's smallest trigger flip clean models too?

Toy models: tests/scan_toy.py at 10x10, 5 classes; the backdoored model's trigger is a white corner
patch that a clean model of the same task never learned.
"""

import numpy as np
import pytest
import torch
from scan_toy import TARGET, task, train
from torch import nn

from innerprobe import ConfigError
from innerprobe.perturb.scan import natural as N
from innerprobe.perturb.scan import scan
from innerprobe.perturb.scan import verdict as V
from innerprobe.studies import apex_backdoor as ab
from innerprobe.zoo import backdoor_set as bs


def _slow_transfer(models, x, mask, pattern):
    """The documented equation, one input at a time."""
    out = []
    for c in range(len(mask)):
        shares = []
        for m in models:
            hit = tot = 0
            for xi in x:
                if int(m(xi[None]).argmax()) == c:
                    continue
                tot += 1
                hit += int(int(m(((1 - mask[c]) * xi + mask[c] * pattern[c])[None]).argmax()) == c)
            shares.append(hit / tot if tot else 1.0)
        out.append(float(np.mean(shares)))
    return np.array(out)


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    x = task(48, seed=1, size=10)[0]
    return train(True, size=10), train(False, size=10), x


def test_transfer_is_the_documented_equation(toy):
    bd, clean, x = toy
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(5, 1, 10, 10, generator=g) > 0.8).float()
    pattern = torch.rand(5, 1, 10, 10, generator=g)
    with torch.no_grad():
        slow = _slow_transfer([bd, clean], x, mask, pattern)
    assert np.allclose(N.transfer([bd, clean], x, mask, pattern), slow)
    assert np.allclose(N.transfer([clean], x, torch.zeros_like(mask), pattern), 0.0)  # no mask moves nothing
    assert np.allclose(N.natural_gap([2.0, -1.0, 0.5], [0.0, 0.5, 1.0]), [2.0, -0.5, 0.0])
    e = N.ODDS_EPS
    assert np.allclose(
        N.odds([0.0, 0.5, 1.0, 0.01]), [np.log((1 + e) / e), 0.0, -np.log((1 + e) / e), np.log(1.01 / 0.03)]
    )
    assert np.all(
        np.diff(N.odds(np.linspace(0, 1, 11))) < 0
    )  # the less a trigger transfers, the more it is the model's


def test_the_backdoor_trigger_does_not_transfer_and_every_model_is_left_as_it_came(toy):
    bd, clean, x = toy
    clean.train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (bd, clean)]
    r = scan(bd, x, reference_models=[clean], threshold=0.0, min_agree=1)
    assert r.data["stages_run"] == ["screen", "triggers", "cleanse", "natural"]
    assert r.data["stages"]["natural"]["reference_models"] == 1
    rows = r.tables["classes"]
    t = np.array([row["nat_transfer"] for row in rows])
    assert t[TARGET] < 0.2 < float(np.median(t))  # the corner patch flips only the model trained on it
    assert np.allclose([row["nat_gap"] for row in rows], [row["nc_gap"] * (1 - row["nat_transfer"]) for row in rows])
    assert np.allclose([row["nat_odds"] for row in rows], N.odds(t))  # the statistic the verdict reads
    core = N.window(torch.as_tensor(r.arrays["nc_mask"]))
    pattern = torch.as_tensor(r.arrays["nc_pattern"])
    with torch.no_grad():
        own, ref = _slow_transfer([bd], x, core, pattern), _slow_transfer([clean], x, core, pattern)
    assert np.allclose([row["nat_window"] for row in rows], own * (1 - ref))
    assert r.data["stages"]["natural"]["statistic"] == "nat_odds"
    assert r.data["stages"]["natural"]["architecture_seen"] is True  # same toy architecture
    assert r.data["suspect"] == TARGET
    assert clean.training and not bd.training  # each model's mode as it came
    for m, b in zip((bd, clean), before):
        assert all(torch.equal(b[k], v) for k, v in m.state_dict().items())
        assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    clean.eval()


def test_bad_reference_models_are_refused_in_one_line(toy):
    bd, clean, x = toy
    with pytest.raises(ConfigError, match="non-empty list"):
        scan(bd, x, reference_models=clean)
    with pytest.raises(ConfigError, match="non-empty list"):
        scan(bd, x, reference_models=[])
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(100, 7)).train()
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(ConfigError, match="reference model 0 gives logits of shape"):
        scan(bd, x, reference_models=[wrong])
    assert wrong.training and all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())  # as it came
    assert not bd.training and not any(m._forward_hooks or m._forward_pre_hooks for m in bd.modules())
    with pytest.raises(ConfigError, match="not used by scan method 'apex'"):
        scan(bd, x, method="apex", reference_models=[clean])
    with pytest.raises(ConfigError, match="need clean inputs"):
        scan(bd, shape=(1, 10, 10), reference_models=[clean])
    with pytest.raises(ConfigError, match="needs clean reference models"):
        scan(bd, x, method="natural")
    with pytest.raises(Exception, match="expected a torch.nn.Module"):
        scan(bd, x, reference_models=[clean, "model"])


def test_reference_members_are_clean_dev_twins_of_the_family_never_the_model_itself():
    fams = {bs.reference_name(n) for n in bs.ARCHS}
    for fam in fams:
        ms = bs.reference_members(fam)
        assert ms and all(m.target is None and m.split == bs.REFERENCE_SPLIT for m in ms)
        assert {bs.reference_name(m.recipe) for m in ms} == {fam}
        assert ms[0].seed not in {m.seed for m in bs.reference_members(fam, exclude_seed=ms[0].seed)}
    with pytest.raises(ConfigError, match="no reference models for family 'digits-rnn'"):
        bs.reference_members("digits-rnn")


def test_calibration_keys_and_the_shipped_natural_entries():
    assert V.calibration_key("full", True, True) == "full+reference+natural"
    assert V.calibration_key("cleanse", True, True) == "cleanse+reference"  # only the full scan has both variants
    assert ab._entry("full+reference+natural") == ("full", True, True) and ab._entry("natural")[2]
    assert ab._stages("full+reference") == ["screen", "triggers", "cleanse"]
    assert ab._stages("full+natural")[-1] == "natural"
    cal = V.load_calibration()
    for ref in (False, True):
        entry = cal[V.calibration_key("full", ref, True)]
        assert tuple(entry["features"]) == V.method_features("full", ref, True) and entry["min_agree"] == 2
    for fam, keys in cal["reference_models"].items():
        assert keys == [m.key for m in bs.reference_members(fam)]
    assert ab.DEFAULT in cal


def test_cli_method_natural_needs_a_reference(tmp_path, capsys):
    from innerprobe.cli import main

    (tmp_path / "net.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))\n"
    )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((8, 4)).astype("float32"))
    args = ["scan", "-m", f"{tmp_path}/net.py:make", "--data", str(tmp_path / "x.npy"), "--method", "natural"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--method natural needs a class reference" in err and "Traceback" not in err


def test_a_model_whose_triggers_move_no_clean_model_is_outside_the_natural_checks_domain(toy):
    """Memorised or random labels: tiny triggers to every class that move no clean model; no class may be named."""
    from innerprobe.perturb.scan import reference as R

    bd, clean, x = toy
    recs = [
        {"a": [1.0, 2.0, 3.0], "nat_transfer": [0.6, 0.8, 0.9]},
        {"a": [1.0, 2.0, 3.0], "nat_transfer": [0.1, 0.7, 1]},
    ]
    ref = R.fit(recs, ("a",))
    assert ref["min_median_transfer"] == 0.7 and set(R.relative({"a": [0.0, 1.0, 2.0]}, ref)) == {"a_ref"}
    assert R.transfer_reason({"nat_transfer": [0.5, 0.4, 0.0]}, ref) == []  # 0.4 >= TRANSFER_FLOOR * 0.7
    (why,) = R.transfer_reason({"nat_transfer": [0.0, 0.3, 0.0]}, ref)
    assert "median 0%" in why and ">= 70%" in why
    rows = scan(clean, x, reference_models=[clean], threshold=1.0).tables["classes"]
    names = [n for n in ab.REF_FEATURES if n in rows[0]]
    toy_ref = R.fit([{n: [r[n] for r in rows] for n in [*names, "nat_transfer"]}], names)
    cal = {**V.load_calibration(), "references": {"toy-mlp": toy_ref}}
    r = scan(bd, x, reference="toy-mlp", reference_models=[clean], calibration=cal, threshold=0.0, min_agree=1)
    assert not any("smallest triggers" in why for why in r.data["out_of_domain"])  # (5 classes: another reason)
    cal["references"]["toy-mlp"] = {**toy_ref, "min_median_transfer": 10.0}  # no model could reach it
    r = scan(bd, x, reference="toy-mlp", reference_models=[clean], calibration=cal)
    assert r.data["suspect"] is None
    assert any("smallest triggers move the clean reference models" in why for why in r.data["out_of_domain"])


def test_the_scan_says_when_the_architecture_is_none_of_the_reference_models():
    def mlp(act=nn.ReLU, width=16, depth=1):
        hidden = [m for _ in range(depth - 1) for m in (nn.Linear(width, width), act())]
        return nn.Sequential(nn.Flatten(), nn.Linear(100, width), act(), *hidden, nn.Linear(width, 5))

    a = mlp()
    assert N.signature(a) == (
        ("Flatten", ()),
        ("Linear", ((16, 100), (16,))),
        ("ReLU", ()),
        ("Linear", ((5, 16), (5,))),
    )
    assert N.architecture_seen(a, [mlp(depth=2), mlp()])  # another instance of the same architecture
    assert not N.architecture_seen(a, [mlp(depth=2), mlp(width=32), mlp(act=nn.Tanh)])


def test_leaving_an_architecture_out_reaverages_the_transfer_over_the_other_reference_models():
    from innerprobe.studies import scan_architectures as S

    rec = {"key": "k", "recipe": "a", "features": {"nc_gap": [1.0, 2.0], "nat_transfer": [0.5, 0.5]}}
    per = {"recipes": ["a", "b", "b"], "transfer": [[1.0, 1.0], [0.0, 0.2], [0.2, 0.0]]}
    per.update(window_transfer=[[1.0, 1.0], [0.5, 0.0], [0.5, 0.0]], window_own=[0.8, 0.4])
    f = S._without(rec, per, "a")["features"]
    assert np.allclose(f["nat_transfer"], [0.1, 0.1])  # only the two models of architecture b
    assert np.allclose(f["nat_window"], [0.8 * 0.5, 0.4])
    assert np.allclose(f["nat_odds"], N.odds([0.1, 0.1])) and np.allclose(f["nat_gap"], [0.9, 1.8])
    assert rec["features"]["nat_transfer"] == [0.5, 0.5]  # the record itself is not changed


def test_the_window_keeps_each_class_mask_in_its_heaviest_square():
    mask = torch.zeros(2, 1, 5, 5)
    mask[0, 0, 3:5, 0:2] = 1.0  # class 0: a 2x2 block at the bottom left, plus a stray pixel
    mask[0, 0, 0, 4] = 0.9
    mask[1, 0, 1:4, 1:4] = 0.5  # class 1: a 3x3 block; the first heaviest 2x2 (row-major) is kept
    core = N.window(mask, 2)
    assert torch.equal(core[0, 0], torch.nn.functional.pad(torch.ones(2, 2), (0, 3, 3, 0)))
    assert float(core[1].sum()) == 2.0 and torch.all(core[1, 0, 1:3, 1:3] == 0.5)
    assert torch.equal(N.window(torch.ones(2, 1, 16), 2)[:, :, :4], torch.ones(2, 1, 4))  # 1-D: width 4
    assert float(N.window(torch.ones(2, 1, 16), 2)[:, :, 4:].sum()) == 0.0
    assert torch.equal(N.window(torch.ones(2, 1, 1, 1), 2), torch.ones(2, 1, 1, 1))  # too small: the whole mask
