"""Functional-call sites (core/functional.py): ``MODULE#K``, ``MODULE/FUNCTION[#K]``, ``/FUNCTION#K``
in hooks and in APEX (issue 16.5)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from innerprobe.core.functional import discover, format_call, split_call
from innerprobe.core.hooks import HookSession, count_hooks
from innerprobe.core.sites import resolve
from innerprobe.errors import SiteError


class Block(nn.Module):  # torchvision-style: one ReLU module applied twice
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU()

    def forward(self, x):
        h = self.fc2(self.relu(self.fc1(x)))
        return self.relu(h + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block, self.fc, self.out = Block(), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.block(x))
        h = F.gelu(self.fc(h))
        return self.out(h.relu_())


def test_grammar_round_trips():
    for text, parts in [
        ("a.b#1", ("a.b", None, 1)),
        ("a/gelu#0", ("a", "gelu", 0)),
        ("a.b/silu", ("a.b", "silu", None)),
        ("/relu#2", ("", "relu", 2)),
        ("fn:relu#2", ("", "relu", 2)),
        ("plain.name", ("plain.name", None, None)),
    ]:
        assert split_call(text) == parts
    assert format_call("", "relu", 2) == "/relu#2" and format_call("a", None, 1) == "a#1"
    with pytest.raises(SiteError):
        split_call("a/gelu#x")


def test_discover_names_module_calls_and_functional_calls():
    m = Net().eval()
    found = discover(m, torch.randn(2, 6))
    sites = [c.site for c in found if not c.in_activation_module]
    assert sites == ["block.relu#0", "block.relu#1", "/relu#0", "/gelu#0", "/relu#1"]
    assert all(c.in_activation_module for c in found if c.function and c.module == "block.relu")
    assert count_hooks(m) == 0 and not _get_current_function_mode_stack()


def test_capture_and_edit_functional_and_kth_call_against_a_manual_forward():
    m = Net().eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        h1 = torch.relu(m.block.fc1(x))
        h2 = torch.relu(m.block.fc2(h1) + x)
        g = F.gelu(m.fc(torch.relu(h2)))
        with HookSession(m) as hs:
            caps = hs.capture(["block.relu#1", "/gelu#0", "block.relu", "fn:relu#0"])
            m(x)
        assert torch.equal(caps[0].value, h2) and len(caps[0].values) == 1
        assert torch.equal(caps[1].value, g)
        assert len(caps[2].values) == 2 and torch.equal(caps[2].values[0], h1)
        assert torch.equal(caps[3].value, torch.relu(h2))
        with HookSession(m) as hs:  # zero the second call of the reused ReLU only
            hs.edit("block.relu#1", lambda v, r: torch.zeros_like(v))
            assert torch.equal(m.block(x), torch.zeros_like(h2))
        with HookSession(m) as hs:  # an in-place functional call (h.relu_()) whose return value is used
            hs.edit("/relu#1", lambda v, r: v + 1)
            expect = m.out(torch.relu(g) + 1)
            assert torch.allclose(m(x), expect)
    assert count_hooks(m) == 0 and not _get_current_function_mode_stack()


def test_session_cleans_up_after_an_error_inside_a_functional_edit():
    m = Net().eval()
    with pytest.raises(ZeroDivisionError), HookSession(m) as hs:
        hs.edit("/gelu#0", lambda v, r: 1 / 0)
        m(torch.randn(2, 6))
    assert count_hooks(m) == 0 and not _get_current_function_mode_stack()


def test_resolve_globs_and_unknown_module():
    m = Net()
    assert [str(r) for r in resolve(m, "bloc?/relu#0")] == ["block/relu#0"]
    with pytest.raises(SiteError):
        resolve(m, "nope/relu#0")
