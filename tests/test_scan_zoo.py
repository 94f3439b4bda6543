"""The backdoor eval set (innerprobe.zoo.backdoor_set) and its trigger families, without training."""

import pytest
import torch

from innerprobe import ConfigError
from innerprobe.zoo import backdoor_set as bs
from innerprobe.zoo import data as D
from innerprobe.zoo import models as M


def test_members_split_by_seed_with_clean_twins():
    parts = [bs.members(sp) for sp in bs.SPLITS]
    for part in parts:
        bd = [m for m in part if m.backdoored]
        clean = [m for m in part if not m.backdoored]
        assert len(bd) == len(clean) == 32
        assert {(m.recipe, m.seed) for m in bd} == {(m.recipe, m.seed) for m in clean}  # twins: same arch and seed
        assert {m.family for m in bd} == set(D.TRIGGER_FAMILIES) and len({m.recipe for m in bd}) == 8
        assert all(0.01 <= m.rate <= 0.10 for m in bd)
    seeds = [{m.seed for m in p} for p in parts]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds))  # no seed in two splits
    held = seeds[bs.SPLITS.index("held-out")]
    assert min(held) == 800 and max(held) == 873 and bs.seed_range("held-out") == "800-873"  # the fresh held-out split
    assert bs.members() == [m for p in parts for m in p]
    assert "held-out" not in bs.TUNING_SPLITS and set(bs.TUNING_SPLITS) | {"held-out"} == set(bs.SPLITS)
    with pytest.raises(ConfigError):
        bs.members("test")


def _split(n=200):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    y = torch.arange(n) % 10
    return D.DataSplit(x, y, x[:20], y[:20], [str(i) for i in range(10)], {"dataset": "toy"})


@pytest.mark.parametrize("family", D.TRIGGER_FAMILIES)
def test_poison_families(family):
    s = _split()
    p = D.poison(s, family=family, target=3, rate=0.05, seed=1)
    idx = torch.tensor(p.meta["poisoned_indices"])
    assert len(idx) == 10 and p.meta["trigger"]["family"] == family
    changed = (p.x_train != s.x_train).flatten(1).any(1)
    assert changed[idx].all() and not changed[~torch.isin(torch.arange(200), idx)].any()
    if family == "label-consistent":
        assert torch.equal(p.y_train, s.y_train) and (s.y_train[idx] == 3).all()
    else:
        assert (p.y_train[idx] == 3).all() and (s.y_train[idx] != 3).all()
    a, v = D.make_trigger(family, (8, 8), seed=1)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(D.stamp(x, (a, v)), (1 - a) * x + a * v)
    with pytest.raises(ConfigError):
        D.poison(s, family=family, target=10, rate=0.05)


def test_trigger_shapes_and_refusals():
    a, _ = D.make_trigger("patch", (8, 8), size=2)
    assert a.sum() == 4 and a[-2:, -2:].all()
    a, _ = D.make_trigger("pixel", (8, 8), seed=3)
    assert a.sum() == 1
    a, _ = D.make_trigger("blend", (8, 8), alpha=0.2)
    assert torch.allclose(a, torch.full((8, 8), 0.2))
    with pytest.raises(ConfigError):
        D.make_trigger("nope", (8, 8))


def test_model_variants_build_and_keep_defaults():
    assert [n for n, _ in M.mlp().named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2", "out"]
    g = M.mlp(act="gelu")
    assert isinstance(g.gelu1, torch.nn.GELU)
    c = M.cnn(channels=(4, 8), act="tanh", pool="avg")
    assert isinstance(c.tanh1, torch.nn.Tanh) and isinstance(c.pool1, torch.nn.AvgPool2d)
    assert c(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError):
        M.cnn(pool="median")
