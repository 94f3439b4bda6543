"""The backdoor scan (docs/scan.md): each stage on tiny models, the verdict, option refusal, the CLI.

Tiny task (tests/scan_toy.py) at 10x10: 5 classes of noisy prototypes whose bottom-right 2x2 corner
is always dark; the backdoored twin is trained with 30 non-target images stamped with a white corner
patch and relabelled to class 3. Both train in well under a second.
"""

import json

import numpy as np
import pytest
import torch
from scan_toy import TARGET, C, task, train
from torch import nn

from innerprobe import ConfigError
from innerprobe.cli import main
from innerprobe.perturb.scan import all_hidden, first_hidden, input_site, last_hidden, robust_z, scan, scan_sites
from innerprobe.perturb.scan.cleanse import anomaly_index, cleanse
from innerprobe.perturb.scan.screen import screen
from innerprobe.perturb.scan.triggers import gamma_pvalue, triggers

SIZE = 10  # a 2x2 trigger is 4% of the image (a trigger smaller than the classes' own features)


def _task(n=300, seed=0):
    return task(n, seed, size=SIZE)


def _train(poison: bool):
    return train(poison, size=SIZE)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return _train(True), _train(False), _task(64, seed=1)[0]


def test_the_planted_backdoor_works(models):
    bd, clean, x = models
    trig = x.clone()
    trig[..., -2:, -2:] = 1.0
    assert (bd(trig).argmax(1) == TARGET).float().mean() > 0.9
    assert (clean(trig).argmax(1) == TARGET).float().mean() < 0.5


def test_triggers_stage_names_the_target_data_free(models):
    bd, clean, _ = models
    r = triggers(bd, (1, SIZE, SIZE), C, seed=0)
    assert int(np.argmax(r["z"])) == TARGET and r["images"].shape == (C, 1, SIZE, SIZE)
    assert 0.0 <= r["images"].min() and r["images"].max() <= 1.0
    rc = triggers(clean, (1, SIZE, SIZE), C, seed=0)
    assert np.max(r["z"]) > np.max(rc["z"])


def test_cleanse_stage_finds_the_smallest_trigger(models):
    bd, clean, x = models
    r = cleanse(bd, x[:32], C, steps=150)
    assert (
        int(np.argmin(r["l1"])) == TARGET == int(np.argmax(r["z"])) and r["l1"][TARGET] <= 4.5
    )  # the 2x2 patch or less
    rc = cleanse(clean, x[:32], C, steps=150)
    assert r["l1"][TARGET] < rc["l1"][TARGET]
    assert anomaly_index(np.array([4.0, 4.2, 3.8, 4.1, 1.0]))[-1] > 2


def test_screen_stage_on_a_planted_sink_and_a_symmetric_model():
    torch.manual_seed(0)
    x = torch.rand(16, 6)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():  # a first-layer unit wired strongly to class 2 only
        m[2].weight.mul_(0.1)
        m[4].weight.mul_(0.1)
        m[2].weight[0].fill_(0.0)
        m[2].weight[0, 0] = 5.0
        m[4].weight[:, 0] = 0.0
        m[4].weight[2, 0] = 5.0
        m[2].bias.zero_()
        m[4].bias.zero_()
    r = screen(m, x, sites="first", samples=16)
    assert int(np.argmax(r["hist_z"])) == 2 and r["hist_z"][2] > 3.5
    sym = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 5))
    with torch.no_grad():
        sym[2].weight.copy_(torch.eye(10))
        sym[4].weight.copy_(torch.kron(torch.eye(5), torch.ones(1, 2)))
        sym[4].bias.zero_()
    assert np.max(screen(sym, x, sites="first", samples=32)["hist_z"]) < 3.5


def test_verdict_names_the_target_and_not_the_clean_twin(models):
    bd, clean, x = models
    rb, rc = scan(bd, x), scan(clean, x)
    # the shipped calibration was fitted on the eval set, not on this toy: the test checks the ranking, the
    # agreement and that a threshold between the twins' probabilities names the target only
    assert rb.data["top_class"] == TARGET and len(rb.data["agree"]) >= 2
    mid = (rb.data["probability"] + rc.data["probability"]) / 2
    assert scan(bd, x, threshold=mid).data["suspect"] == TARGET
    assert rc.data["suspect"] is None and scan(clean, x, threshold=mid).data["suspect"] is None
    assert rb.data["probability"] > rc.data["probability"]
    assert len(rb.tables["classes"]) == C and rb.arrays["mm_images"].shape == (C, 1, SIZE, SIZE)
    assert set(rb.data["stages"]) == {"screen", "triggers", "cleanse"}


def test_scan_leaves_the_model_as_it_came(models):
    bd, _, x = models
    bd.train()
    bd[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in bd.state_dict().items()}
    scan(bd, x[:16], steps=5, samples=2)
    assert bd.training and not bd[1].weight.requires_grad and bd[3].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in bd.state_dict().items())
    assert all(p.grad is None for p in bd.parameters())
    bd[1].weight.requires_grad_(True)
    bd.eval()


def test_site_keywords_are_functions_returning_sites(models):
    bd = models[0]
    assert [str(s) for s in first_hidden(bd)] == ["2"] and [str(s) for s in last_hidden(bd)] == ["4"]
    assert [str(s) for s in all_hidden(bd)] == ["2", "4"] and str(input_site(bd)[0]).startswith(":input")
    assert scan_sites(bd, "first") == first_hidden(bd) and scan_sites(bd, "3") == ["3"]
    with pytest.raises(ConfigError, match="neither a keyword nor a site"):
        scan_sites(bd, "nope")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"samples": 0}, "samples"),
        ({"restarts": 0}, "restarts"),
        ({"steps": -1}, "steps"),
        ({"sites": "nope"}, "nope"),
        ({"method": "sink"}, "unknown scan method"),
        ({"method": "triggers", "sites": "first"}, "not used"),
        ({"method": "apex", "restarts": 2}, "not used"),
        ({"n_cleanse": 1000}, "n_cleanse"),
        ({"seed": -1}, "seed"),
    ],
)
def test_out_of_range_or_unused_options_are_refused(models, kw, match):
    with pytest.raises(ConfigError, match=match):
        scan(models[0], models[2], **kw)


def test_data_free_scan_needs_a_shape_and_runs_the_trigger_stage(models):
    with pytest.raises(ConfigError, match="shape"):
        scan(models[0])
    r = scan(models[0], shape=(1, SIZE, SIZE))
    assert r.data["stages_run"] == ["triggers"] and r.data["top_class"] == TARGET


def test_robust_z_and_gamma_pvalue():
    z = robust_z(np.array([0.1] * 9 + [0.5]))
    assert z[-1] > 10 and np.allclose(z[:-1], 0)
    rng = np.random.default_rng(0)
    null = rng.gamma(4.0, 1.0, 9)
    assert gamma_pvalue(np.r_[null, 40.0]) < 0.01 < gamma_pvalue(np.r_[null, np.median(null)])


FACTORY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "net.py").write_text(FACTORY)
    np.save(tmp_path / "x.npy", torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0)).numpy())
    return tmp_path


def test_cli_json_and_report_section(files, capsys):
    out = files / "out"
    base = ["scan", "--model", f"{files}/net.py:make", "--data", f"{files}/x.npy", "--steps", "20"]
    assert main(base + ["--json", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    obj = json.loads(cap.out)
    assert obj["kind"] == "backdoor-scan" and {"suspect", "probability", "stages", "seconds"} <= set(obj["data"])
    assert len(obj["tables"]["classes"]) == 4 and "P(backdoored)" in cap.err
    assert json.loads((out / "scan.json").read_text())["data"]["probability"] == obj["data"]["probability"]
    sec = json.loads((out / "section.json").read_text())
    assert [f["file"] for f in sec["figures"]] == ["scan_triggers.png"] and (out / "scan_triggers.png").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["-k", "0"], "samples (K) must be"),
        (["--sites", "nope"], "nope"),
        (["--inputs", "0"], "--inputs"),
        (["--method", "triggers", "-k", "8"], "not used"),
        (["--threshold", "2"], "threshold"),
        (["--shape", "1,x"], "--shape"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(files, capsys, extra, match):
    assert main(["scan", "--model", f"{files}/net.py:make", "--data", f"{files}/x.npy", *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_verdict_probability_reads_the_gap_over_the_runner_up():
    from innerprobe.perturb.scan import verdict as V

    s_far, s_near = np.array([3.0, 0.0, -1.0]), np.array([3.0, 2.9, -1.0])
    assert V.platt_features(s_far) == [3.0, 3.0] and V.platt_features(s_near) == [3.0, pytest.approx(0.1)]
    gap = {"platt": [0.5, 1.0, -2.0]}
    assert V.probability(s_far, gap) > V.probability(s_near, gap)  # same top score, a class that stands out
    old = {"platt": [0.5, -2.0]}  # a two-entry calibration (no gap term) is still read
    assert V.probability(s_far, old) == V.probability(s_near, old) == pytest.approx(1 / (1 + np.exp(0.5)))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        f = {"a": rng.normal(size=5)}
        if i % 2:
            f["a"][i % 5] += 4.0
        rows.append({**f, "target": i % 5 if i % 2 else None})
    cal = V.fit(rows, ("a",))
    assert len(cal["platt"]) == 3 and cal["coef"][0] > 0
    p = [V.probability(V.class_scores(r, cal), cal) for r in rows]
    assert np.mean(p[1::2]) > np.mean(p[0::2])


def test_outside_the_calibrated_domain_nothing_is_named_unless_the_user_sets_a_threshold(models):
    """An untrained model that sends every input to one class, and a model with another class count, are refused."""
    _, _, x = models
    torch.manual_seed(0)
    collapsed = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 10))
    with torch.no_grad():
        collapsed[1].weight.zero_()
        collapsed[1].bias.copy_(torch.arange(10.0))  # every input -> class 9
    r = scan(collapsed, x, method="cleanse")
    assert r.data["suspect"] is None and any("one class" in w for w in r.data["out_of_domain"])
    assert any("distinct classes" in w for w in r.data["out_of_domain"])
    bd = models[0]
    r5 = scan(bd, x)  # the toy has 5 classes; the shipped calibration was fitted on 10-class models
    assert r5.data["suspect"] is None and any("5 classes" in w for w in r5.data["out_of_domain"])
    assert scan(bd, x, threshold=0.0).data["suspect"] == TARGET  # an explicit threshold is the user's call


def test_non_finite_logits_are_refused_by_name(models):
    """A model whose logits turn NaN inside the input range gives a one-line error, not a NaN probability."""
    _, _, x = models

    class Nanny(nn.Module):
        def forward(self, z):
            out = z.flatten(1)[:, :C] * 1.0
            return torch.where(z.flatten(1)[:, :1] > 0.9, torch.full_like(out, float("nan")), out)

    with pytest.raises(ConfigError, match="non-finite"):
        scan(Nanny(), x, method="triggers")
