"""Sites: parsing, resolution (exact, glob, type, canonical), selection masks, clear errors."""

import pytest
import torch
from torch import nn

from innerprobe import HookSession, Site, SiteError, resolve


def small_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def test_parse_round_trip():
    s = Site.parse("blocks.0.attn:input.1[heads=0,2;pos=-1;units=0:3]")
    assert (s.module, s.port, s.index) == ("blocks.0.attn", "input", 1)
    assert s.heads == (0, 2) and s.positions == (-1,) and s.units == (0, 1, 2)
    assert Site.parse(str(s)) == s
    assert Site.parse("fc1").port == "output" and Site.parse("x:output.logits").index == "logits"
    assert Site.parse(":input").module == ""


@pytest.mark.parametrize("bad", ["a:sideways", "a[heads]", "a[colour=1]", "a[units=x]", "a[units=]"])
def test_parse_errors_are_clear(bad):
    with pytest.raises(SiteError) as e:
        Site.parse(bad)
    assert bad in str(e.value) or "port" in str(e.value) or "selector" in str(e.value)


def test_resolve_exact_glob_type():
    m = small_net()
    assert [r.name for r in resolve(m, "2")] == ["2"]
    assert [r.name for r in resolve(m, "@ReLU")] == ["2", "4"]
    assert [r.name for r in resolve(m, nn.Linear)] == ["1", "3", "5"]
    blocks = nn.Module()
    blocks.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(3)])
    assert [r.name for r in resolve(blocks, "blocks.*.1")] == ["blocks.0.1", "blocks.1.1", "blocks.2.1"]
    assert [r.name for r in resolve(blocks, "blocks.?.0")] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    assert [r.name for r in resolve(m, ["2", "@ReLU"])] == ["2", "4"]  # deduplicated
    assert resolve(m, ":input")[0].module is m


def test_wrong_name_lists_nearest_real_names():
    m = nn.Sequential()
    m.add_module("encoder", nn.Sequential(nn.Linear(2, 2)))
    m.add_module("decoder", nn.Linear(2, 2))
    with pytest.raises(SiteError) as e:
        resolve(m, "encoder.O")
    assert "encoder.0" in str(e.value)
    with pytest.raises(SiteError) as e:
        resolve(m, "@Relu")
    assert "Linear" in str(e.value)
    with pytest.raises(SiteError) as e:
        resolve(m, "dec*x")
    assert "matches no module" in str(e.value)


def test_mask_units_positions_heads():
    t = torch.zeros(2, 5, 12)
    m = Site("x", positions=(1,), units=(0, 3)).mask_like(t)
    assert m.expand_as(t).sum() == 2 * 1 * 2
    h = Site("x", heads=(2,), n_heads=4).mask_like(t)  # 4 heads x 3 dims on the last axis
    assert h.expand_as(t)[0, 0].nonzero().flatten().tolist() == [6, 7, 8]
    q = Site("x", heads=(1,), n_heads=2, chunk=(2, 3)).mask_like(t)  # v third, head 1 of 2
    assert q.expand_as(t)[0, 0].nonzero().flatten().tolist() == [10, 11]
    conv = torch.zeros(2, 4, 3, 3)
    assert Site("c", units=(1,)).mask_like(conv).expand_as(conv)[:, 1].all()
    with pytest.raises(SiteError, match="head layout"):
        Site("x", heads=(0,)).mask_like(t)
    with pytest.raises(SiteError, match="out of range"):
        Site("x", units=(20,)).mask_like(t)


def test_edit_respects_selection_and_ports():
    m = small_net()
    x = torch.randn(3, 2, 4)
    with HookSession(m) as hs:
        hs.edit("2[units=0,1]", lambda v, rs: torch.full_like(v, 7.0))
        (cap,) = hs.capture("2")
        hs.run(x)
    assert (cap.value[:, :2] == 7).all() and not (cap.value[:, 2:] == 7).any()
    with HookSession(m) as hs:  # input port of the root module: the model's input
        hs.edit(":input", lambda v, rs: torch.zeros_like(v))
        y = hs.run(x)
    assert torch.allclose(y, m(torch.zeros_like(x)))


def test_tuple_and_dict_elements():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, {"a": x * 2}

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, d = self.pair(x)
            return a + d["a"]

    m = Outer()
    x = torch.ones(2)
    with HookSession(m) as hs:
        hs.edit("pair:output.0", lambda v, rs: v * 0)
        assert torch.equal(hs.run(x), torch.full((2,), 2.0))
    with HookSession(m) as hs:
        hs.edit("pair:output.5", lambda v, rs: v)
        with pytest.raises(SiteError, match="no element"):
            hs.run(x)
    with HookSession(m) as hs:
        hs.edit("pair:output.1", lambda v, rs: v)
        with pytest.raises(SiteError, match="not a tensor"):
            hs.run(x)
