"""Hook sessions own their hooks: removed on success and on failure, user hooks kept, nesting works,
and the model comes back bitwise identical with the same train/eval mode."""

import pytest
import torch
from torch import nn

from innerprobe import HookSession, count_hooks, preserved_state, run_with_cache


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def snapshot(m):
    return (
        {k: v.clone() for k, v in m.state_dict().items()},
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
    )


def same(m, snap):
    state, modes, grads = snap
    return (
        all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
        and modes == [mod.training for mod in m.modules()]
        and grads == [p.requires_grad for p in m.parameters()]
    )


def add_every_kind(hs, m, x):
    hs.forward_hook(m[0], lambda mod, a, o: o)
    hs.pre_hook(m[2], lambda mod, a: None)
    hs.backward_hook(m[3], lambda mod, gi, go: None)
    hs.backward_pre_hook(m[3], lambda mod, go: None)
    hs.edit("2", lambda v, rs: v * 2)
    hs.capture("1")
    xx = x.clone().requires_grad_(True)
    hs.tensor_hook(xx, lambda g: g)
    return xx


def test_removes_exactly_its_own_hooks_after_success():
    m = net()
    m.train()
    user = m[2].register_forward_hook(lambda mod, a, o: None)
    base = count_hooks(m)
    snap = snapshot(m)
    x = torch.randn(5, 4)
    with HookSession(m, eval=True) as hs:
        xx = add_every_kind(hs, m, x)
        assert not m.training
        hs.run(xx).sum().backward()
        assert count_hooks(m) > base
    assert count_hooks(m) == base and len(m[2]._forward_hooks) == 1
    assert m.training and same(m, snap)
    user.remove()


def test_removes_hooks_after_failure_inside_body_and_inside_forward():
    m = net()
    m.eval()
    user = m[0].register_forward_pre_hook(lambda mod, a: None)
    base = count_hooks(m)
    snap = snapshot(m)
    for p in m.parameters():
        p.requires_grad_(True)
    with pytest.raises(ValueError):
        with HookSession(m, eval=False) as hs:
            add_every_kind(hs, m, torch.randn(5, 4))
            for p in m.parameters():
                p.requires_grad_(False)
            raise ValueError("induced")
    assert count_hooks(m) == base and same(m, snap)

    def boom(v, rs):
        raise RuntimeError("induced inside forward")

    with pytest.raises(RuntimeError):
        with HookSession(m) as hs:
            hs.edit("1", boom)
            hs.run(torch.randn(5, 4))
    assert count_hooks(m) == base and same(m, snap)
    assert len(m[0]._forward_pre_hooks) == 1
    user.remove()


def test_sessions_nest_and_inner_removes_only_its_own():
    m = net().eval()
    x = torch.randn(2, 4)
    with HookSession(m) as outer:
        outer.edit("2", lambda v, rs: v + 1)
        n_outer = count_hooks(m)
        with HookSession(m) as inner:
            inner.edit("2", lambda v, rs: v * 0)
            y_in = inner.run(x)
        assert count_hooks(m) == n_outer
        y_out = outer.run(x)
    assert count_hooks(m) == 0
    assert torch.allclose(y_in, m[3](torch.zeros(2, 8)))  # inner edit runs after outer's
    assert not torch.allclose(y_out, y_in)


def test_session_used_after_exit_is_refused():
    m = net()
    with HookSession(m) as hs:
        pass
    with pytest.raises(RuntimeError, match="outside"):
        hs.forward_hook(m[0], lambda *a: None)
    assert count_hooks(m) == 0


def test_capture_stop_and_run_with_cache():
    m = net().eval()
    x = torch.randn(3, 4)
    calls = []
    m[3].register_forward_hook(lambda mod, a, o: calls.append(1))
    with HookSession(m) as hs:
        (cap,) = hs.capture("1", stop=True)
        assert hs.run(x) is None
    assert calls == [] and cap.value.shape == (3, 8)
    out, cache = run_with_cache(m, ["0", "2"], x)
    assert torch.allclose(out, m(x)) and set(cache) == {"0", "2"}
    assert torch.allclose(cache["2"], torch.relu(m[1](m[0](x))))


def test_reused_module_fires_per_call():
    relu = nn.ReLU()
    m = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with HookSession(m) as hs:
        (cap,) = hs.capture("1")
        hs.run(torch.randn(2, 3))
    assert len(cap.values) == 2


def test_preserved_state_restores_modes():
    m = net()
    m.train()
    m[1].eval()
    with preserved_state(m, eval=True):
        assert not any(x.training for x in m.modules())
    assert m.training and not m[1].training
