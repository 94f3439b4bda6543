"""Class references of the backdoor scan (docs/scan.md): the equation, no self-reference, the scan and the CLI.

A reference holds, per class, the mean and variance of a statistic over clean models of one family;
the verdict then reads each class against how that class looks in clean models (a natural easy class
stops looking like a backdoor). Toy models: tests/scan_toy.py at 10x10, 5 classes.
"""

import json

import numpy as np
import pytest
import torch
from scan_toy import TARGET, task, train
from torch import nn

from innerprobe import ConfigError
from innerprobe.perturb.scan import reference as R
from innerprobe.perturb.scan import scan
from innerprobe.perturb.scan import verdict as V
from innerprobe.studies import apex_backdoor as ab
from innerprobe.zoo import backdoor_set as bs


def test_relative_is_the_documented_equation_and_refuses_another_class_count():
    clean = [{"a": [1.0, 2.0, 3.0, 0.0]}, {"a": [3.0, 2.0, 1.0, 2.0]}, {"a": [2.0, 2.0, 2.0, 4.0]}]
    ref = R.fit(clean, ("a",))
    mu, var = np.array([2.0, 2.0, 2.0, 2.0]), np.array([2 / 3, 0.0, 2 / 3, 8 / 3])
    assert ref["n"] == 3 and np.allclose(ref["a"]["mean"], mu) and np.allclose(ref["a"]["var"], var)
    v = np.array([4.0, 2.0, 2.0, 2.0])
    z = (v - mu) / np.sqrt(var + np.median(var))
    got = R.relative({"a": v, "b": v}, ref)
    assert set(got) == {"a_ref"} and np.allclose(got["a_ref"], z - np.median(z))  # only what the reference holds
    assert np.allclose(R.relative({"a": mu}, ref)["a_ref"], 0.0)  # a model like the clean mean: nothing stands out
    with pytest.raises(ConfigError, match="4 classes, the model 3"):
        R.relative({"a": [1.0, 2.0, 3.0]}, ref)
    with pytest.raises(ConfigError, match="at least one clean model"):
        R.fit([], ("a",))


def test_a_natural_easy_class_stops_standing_out_against_the_reference():
    """Class 0 is large in every clean model (a natural feature); the backdoor's class 2 is large only in its model."""
    rng = np.random.default_rng(0)
    clean = [{"s": rng.normal(size=6) + np.array([3.0, 0, 0, 0, 0, 0])} for _ in range(20)]
    suspect = {"s": np.array([3.0, 0.0, 2.0, 0.0, 0.0, 0.0])}
    assert int(np.argmax(suspect["s"])) == 0  # against its own classes only, the natural class is on top
    rel = R.relative(suspect, R.fit(clean, ("s",)))["s_ref"]
    assert int(np.argmax(rel)) == 2


def test_reference_names_of_the_eval_set_match_the_models():
    for name, recipe in bs.SET_RECIPES.items():
        net = recipe.build(recipe.config(recipe.resolve({})))
        assert bs.reference_name(name) == R.name_for(recipe.dataset, net)
    assert R.kind(nn.Sequential(nn.Conv2d(1, 2, 3))) == "cnn" and R.kind(nn.Linear(2, 2)) == "mlp"


def _recs(n_seeds=6, C=4):
    """Synthetic eval records: seed s's clean twin has a huge class-1 statistic only when s == 0."""
    out = []
    for s in range(n_seeds):
        f = {n: np.zeros(C) for n in ab.REF_FEATURES}
        f["nc_gap"] = np.arange(C, dtype=float) * 0.1 + s * 0.01
        if s == 0:
            f["nc_gap"] = f["nc_gap"] + np.array([0.0, 50.0, 0.0, 0.0])
        base = {"recipe": "bdset-digits-mlp-relu", "seed": s, "attack_success": None}
        out.append({**base, "target": None, "features": {k: v.tolist() for k, v in f.items()}})
    return out


def test_leave_seed_out_references_never_read_a_model_against_itself():
    recs = _recs()
    own = ab._leave_seed_out_reference(recs[:1], recs)[0]["features"]["nc_gap_ref"]
    others = ab._leave_seed_out_reference(recs[:1], recs[1:])[0]["features"]["nc_gap_ref"]
    assert np.allclose(own, others)  # seed 0's own clean model is not in its reference
    shipped = ab.with_reference(recs[:1], ab.references(recs))[0]["features"]["nc_gap_ref"]
    assert not np.allclose(own, shipped)  # while the shipped reference (all clean models) does hold it
    with pytest.raises(ConfigError, match="no class reference"):
        ab.with_reference(recs, {})


def _slow_reference(rec, pool, drop):
    """The reference a record is read against, re-fitted from a plain list (the fast path stacks once per family)."""
    from innerprobe.perturb.scan import reference as R

    clean = [p["features"] for p in pool if p["target"] is None and p["seed"] not in {rec["seed"], *drop}]
    return R.fit(clean, ab.REF_FEATURES)


def test_fast_leave_seed_out_references_equal_a_refit_from_scratch():
    rng = np.random.default_rng(0)
    recs = _recs(n_seeds=7)
    for r in recs:  # random statistics, transfers included (the natural check's domain floor)
        r["features"] = {n: rng.normal(size=4).tolist() for n in (*ab.REF_FEATURES, "nat_transfer")}
    pool = ab._CleanPool(recs)
    for r in recs[:3]:
        for drop in ((), (5,), (4, 6)):
            fast, slow = pool.reference("digits-mlp", {r["seed"], *drop}), _slow_reference(r, recs, drop)
            assert fast.keys() == slow.keys() and fast["n"] == slow["n"] == 6 - len(drop)
            assert fast["min_median_transfer"] == slow["min_median_transfer"]
            assert all(np.allclose(fast[n]["var"], slow[n]["var"]) for n in ab.REF_FEATURES)
    with pytest.raises(ConfigError, match="no clean tuning records"):
        pool.reference("fashion-mnist-cnn", set())


def test_the_rule_clears_the_clean_tail_by_a_margin():
    def d(p, target, agree=2):
        return {"p": p, "target": target, "top": 0, "n_agree": agree}

    ds = [d(0.79, None), d(0.95, None, agree=1), d(0.85, 0), d(0.99, 0)]
    rule = ab.choose_rule(ds)  # 0.79 + 0.1: the lowest candidate at or above 0.89 (the 0.95 clean one never agrees)
    assert rule == {"threshold": 0.9, "min_agree": 2, "clean_max_p": 0.79}
    assert ab.choose_rule([d(0.8, None)])["threshold"] == 0.9  # exactly the margin is enough
    assert ab.choose_rule([d(0.9, None)])["threshold"] == ab.THRESHOLDS[-1]  # no candidate clears it: the highest
    assert ab.choose_rule([d(0.3, 0)])["threshold"] == ab.THRESHOLDS[0]


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    x = task(64, seed=1, size=10)[0]
    bd, clean = train(True, size=10), train(False, size=10)
    feats = scan(clean, x, threshold=1.0).tables["classes"]
    names = [n for n in ab.REF_FEATURES if n in feats[0]]  # no natural-feature check here: no reference models
    ref = R.fit([{n: [row[n] for row in feats] for n in names}], names)
    cal = {**V.load_calibration(), "references": {"toy-mlp": ref}}
    return bd, x, cal


def test_scan_with_a_reference_reads_every_stage_against_it(toy):
    bd, x, cal = toy
    before = {k: v.clone() for k, v in bd.state_dict().items()}
    r = scan(bd, x, reference="toy-mlp", calibration=cal, threshold=0.0, min_agree=1)
    assert r.data["reference"] == "toy-mlp" and r.data["suspect"] == TARGET
    assert r.data["calibration_fitted_on"] == cal["full+reference"]["fitted_on"]
    assert all(info["statistic"].endswith("_ref") for st, info in r.data["stages"].items() if st != "screen")
    row = r.tables["classes"][TARGET]
    assert {"nc_gap_ref", "mm_local_z_ref", "hist_z_ref"} <= set(row)
    assert all(torch.equal(before[k], v) for k, v in bd.state_dict().items())
    assert scan(bd, x, calibration=cal, threshold=0.0).data["reference"] is None


def test_an_unknown_or_mismatched_reference_is_refused_in_one_line(toy):
    bd, x, cal = toy
    with pytest.raises(ConfigError, match="no class reference 'toy-mpl'") as e:
        scan(bd, x, reference="toy-mpl", calibration=cal)
    assert "toy-mlp" in e.value.hint
    before = {k: v.clone() for k, v in bd.state_dict().items()}
    bd.train()
    with pytest.raises(ConfigError, match="10 classes, the model 5"):
        scan(bd, x, reference="digits-mlp")  # a shipped reference of 10-class models: refused after the stages ran
    assert bd.training and all(torch.equal(before[k], v) for k, v in bd.state_dict().items())  # left as it came
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bd.modules())
    bd.eval()


def test_shipped_calibration_has_a_reference_per_eval_set_family():
    cal = V.load_calibration()
    assert set(cal["references"]) == {bs.reference_name(n) for n in bs.ARCHS}
    for method in V.FEATURES:
        entry = cal[V.calibration_key(method, True)]
        assert tuple(entry["features"]) == V.reference_features(method)
        assert "tuning splits" in entry["fitted_on"] and "held-out" in entry["validated_on"]


def test_cli_reference_auto_none_and_unknown(tmp_path, capsys):
    from innerprobe.cli import main
    from innerprobe.cli.inputs import dataset_of
    from innerprobe.cli.scan import _reference
    from innerprobe.cli.spec import parse_model

    spec = parse_model("digits-mlp")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert dataset_of(None, spec) == "digits" and dataset_of("fashion-mnist", spec) == "fashion-mnist"
    assert dataset_of(str(tmp_path / "x.npy"), spec) is None
    assert _reference("auto", None, spec, net) == "digits-mlp"
    assert _reference("auto", "fashion-mnist", spec, nn.Sequential(nn.Conv2d(1, 2, 3))) == "fashion-mnist-cnn"
    assert _reference("auto", str(tmp_path / "x.npy"), spec, net) is None
    assert _reference("none", None, spec, net) is None
    (tmp_path / "net.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))\n"
    )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((8, 4)).astype("float32"))
    args = ["scan", "-m", f"{tmp_path}/net.py:make", "--data", str(tmp_path / "x.npy"), "--steps", "2"]
    assert main(args + ["--reference", "digits-cnm"]) == 2
    err = capsys.readouterr().err
    assert "no class reference 'digits-cnm'" in err and "digits-cnn" in err and "Traceback" not in err
    assert main(args + ["--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["data"]["reference"] is None and "class reference: none" in cap.err


def test_the_study_names_no_class_outside_the_natural_checks_domain_as_the_scan_does():
    rng = np.random.default_rng(1)
    names = ("nat_odds", "nc_gap")
    rows = [{n: rng.normal(size=4).tolist() for n in names} | {"target": t} for t in (0, 1, None, None)]
    cal = {**V.fit(rows, names), "threshold": 0.0, "min_agree": 1}
    base = {"key": "k", "target": 0, "family": "patch", "recipe": "r", "stage_seconds": {}}
    rec = {**base, "features": {n: [5.0, 0.0, 0.0, 0.0] for n in names}}
    out = {**rec, "transfer_reason": ["the classes' smallest triggers move ... (memorised or random labels?)"]}
    (inside,), (outside,) = ab.decisions([rec], cal, "natural"), ab.decisions([out], cal, "natural")
    assert inside["suspect"] == 0 and not inside["out_of_domain"]
    assert outside["suspect"] is None and outside["out_of_domain"] and outside["p"] == inside["p"]
    assert ab.decisions([out], cal, "cleanse")[0]["suspect"] == 0  # no natural-feature check, no such domain
    assert ab.sweep([outside], (0.0,), min_agree=1)[0]["tp"] == 0 and ab.sweep([inside], (0.0,), 1)[0]["tp"] == 1
    clean = {**outside, "target": None}
    assert ab.choose_rule([clean], min_agree=1)["clean_max_p"] == 0.0  # never named, so it sets no threshold
