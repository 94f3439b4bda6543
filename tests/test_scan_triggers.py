"""Stage (b) of the backdoor scan with clean inputs: the local maximum margin (docs/scan.md, triggers.py).

The tiny task of tests/scan_toy.py at 6x6.
"""

import numpy as np
import pytest
import torch
from scan_toy import TARGET, C, task, train

from innerprobe import ConfigError
from innerprobe.perturb.scan.triggers import local_margin, triggers

SIZE = 6


def _task(n=300, seed=0):
    return task(n, seed, size=SIZE)


def _train(poison: bool):
    return train(poison, size=SIZE)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return _train(True), _train(False), _task(64, seed=1)[0]


def test_local_margin_names_the_target_from_clean_starts(models):
    bd, clean, x = models
    r = triggers(bd, (1, SIZE, SIZE), C, x=x, seed=0, steps=50)
    assert int(np.argmax(r["z"])) == TARGET and r["local_margin"].shape == (C,)
    assert r["images"].shape == (C, 1, SIZE, SIZE) and r["mm_z"].shape == (C,)
    rc = triggers(clean, (1, SIZE, SIZE), C, x=x, seed=0, steps=50)
    assert np.max(r["z"]) > np.max(rc["z"])


def test_local_margin_stays_in_the_ball_and_grows_with_it(models):
    bd, _, x = models
    small = local_margin(bd, x[:4], C, radius=0.5, steps=20)
    big = local_margin(bd, x[:4], C, radius=2.0, steps=20)
    assert small.shape == (C, 4) and (big >= small - 1e-6).mean() > 0.9
    with torch.no_grad():  # at radius ~0 the margin is the clean inputs' own margin
        lg = bd(x[:4])
    tiny = local_margin(bd, x[:4], C, radius=1e-6, steps=2)
    own = lg[:, TARGET] - lg[:, [k for k in range(C) if k != TARGET]].amax(1)
    assert np.allclose(tiny[TARGET], own.numpy(), atol=1e-3)


def test_data_free_triggers_keep_the_unconstrained_statistic(models):
    bd, _, x = models
    r = triggers(bd, (1, SIZE, SIZE), C, seed=0, steps=30)
    assert "local_margin" not in r and np.array_equal(r["z"], r["mm_z"])


@pytest.mark.parametrize("kw", [{"starts": 0}, {"radius": 0.0}, {"local_steps": 0}])
def test_bad_local_options_are_refused(models, kw):
    bd, _, x = models
    with pytest.raises(ConfigError):
        triggers(bd, (1, SIZE, SIZE), C, x=x, steps=1, **kw)
