"""Backward rules: forward untouched, limits, slow references, in-place / reused / functional ReLUs, hygiene."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerprobe.core.hooks import count_hooks
from innerprobe.errors import ConfigError, InnerprobeError
from innerprobe.pullback import (
    ExcitationPullback,
    Gate,
    Gradient,
    HardGate,
    MaxPoolSurrogate,
    Rules,
    apply_rules,
    calibrate_temperatures,
    gradient_rules,
    pullback_rules,
)


# ----------------------------------------------------------------------------- tiny models
def mlp(depth=3, width=16, d_in=12, classes=5, act=nn.ReLU, inplace=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layers, d = [], d_in
    for i in range(depth):
        layers += [nn.Linear(d, width), act(inplace=True) if inplace else act()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers).to(dtype).eval()


def linears(model):
    return [m for m in model if isinstance(m, nn.Linear)]


def slow_mlp_pullback(model, x, c, gate):
    """Reference: d logit_c / dx with each ReLU derivative replaced by gate(z), by explicit matrices."""
    lins = linears(model)
    zs, h = [], x
    for lin in lins[:-1]:
        z = lin(h)
        zs.append(z)
        h = torch.relu(z)
    g = lins[-1].weight[c].expand(x.shape[0], -1)
    for lin, z in zip(reversed(lins[:-1]), reversed(zs)):
        g = (g * gate(z)) @ lin.weight
    return g


class CNN(nn.Module):
    def __init__(self, inplace=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.r1 = nn.ReLU(inplace=inplace)
        self.p1 = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.r2 = nn.ReLU(inplace=inplace)
        self.p2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        h = self.p1(self.r1(self.bn(self.c1(x))))
        h = self.p2(self.r2(self.c2(h)))
        return self.fc(h.flatten(1))


class Reused(nn.Module):
    """One ReLU module called at three sites."""

    def __init__(self, inplace=False):
        super().__init__()
        torch.manual_seed(1)
        self.l1, self.l2, self.l3, self.out = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 5)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x):
        return self.out(self.relu(self.l3(self.relu(self.l2(self.relu(self.l1(x)))))))


class Functional(nn.Module):
    """Same weights as Reused, with F.relu / torch.relu / Tensor.relu_ instead of modules."""

    def __init__(self, src: Reused):
        super().__init__()
        self.l1, self.l2, self.l3, self.out = src.l1, src.l2, src.l3, src.out

    def forward(self, x):
        h = F.relu(self.l1(x))
        h = torch.relu(self.l2(h))
        h = self.l3(h)
        h.relu_()
        return self.out(h)


def sig(T):
    return lambda z: torch.sigmoid(z / T)


# ----------------------------------------------------------------------------- forward untouched
@pytest.mark.parametrize(
    "make",
    [
        lambda: mlp(),
        lambda: mlp(act=nn.GELU),
        lambda: mlp(act=nn.SiLU),
        lambda: CNN(),
        lambda: CNN(inplace=True),
        lambda: Reused(inplace=True),
        lambda: Functional(Reused()),
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_forward_bitwise_unchanged(make, train):
    model = make().train(train)
    x = torch.rand(6, 1, 8, 8) if isinstance(model, CNN) else torch.randn(6, 12)
    torch.manual_seed(5)
    ref = model(x.clone())
    for rules in (pullback_rules(0.3), pullback_rules(0.6, "probit", pool_detach=True), pullback_rules(gate="guided")):
        with apply_rules(model, rules):
            torch.manual_seed(5)
            xr = x.clone().requires_grad_(True)
            out = model(xr)
        assert torch.equal(out, ref)
        assert out.requires_grad


# ----------------------------------------------------------------------------- limits
def test_small_T_equals_gradient_float64():
    model = mlp(depth=4, dtype=torch.float64)
    x = torch.randn(400, 12, dtype=torch.float64)
    with torch.no_grad():  # pick inputs whose pre-activations stay away from 0
        zs, h = [], x
        for lin in linears(model)[:-1]:
            zs.append(lin(h))
            h = torch.relu(zs[-1])
        keep = torch.stack([z.abs().min(1).values for z in zs]).min(0).values > 4e-3
    x = x[keep]
    assert x.shape[0] >= 3
    g = Gradient(model).attribute(x, target=2)
    p = ExcitationPullback(model, temperature=1e-4).attribute(x, target=2)
    assert torch.allclose(p, g, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ExcitationPullback(model, temperature=0.3).attribute(x, target=2), g, rtol=1e-3)


def test_small_T_equals_gradient_cnn_with_pool():
    model = CNN().double()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    g = Gradient(model).attribute(x, target=1)
    p = ExcitationPullback(model, temperature=1e-7).attribute(x, target=1)
    assert torch.allclose(p, g, rtol=1e-6, atol=1e-9)


def test_large_T_is_linear_network_backward():
    model = mlp(depth=3, dtype=torch.float64)
    x = torch.randn(4, 12, dtype=torch.float64)
    c = 3
    lins = linears(model)
    expect = lins[-1].weight[c]
    for lin in reversed(lins[:-1]):
        expect = 0.5 * expect @ lin.weight  # 0.5^L W_1^T ... W_{L+1}^T e_c
    p = ExcitationPullback(model, temperature=1e12).attribute(x, target=c)
    assert torch.allclose(p, expect.expand_as(p), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T", [0.1, 0.3, 1.0])
def test_matches_slow_reference(T):
    model = mlp(depth=4, dtype=torch.float64)
    x = torch.randn(7, 12, dtype=torch.float64)
    with torch.no_grad():
        ref = slow_mlp_pullback(model, x, 1, sig(T))
    assert torch.allclose(ExcitationPullback(model, temperature=T).attribute(x, target=1), ref, rtol=1e-10)
    ref_p = slow_mlp_pullback(model, x, 1, lambda z: torch.special.ndtr(z / T)).detach()
    assert torch.allclose(
        ExcitationPullback(model, temperature=T, gate="probit").attribute(x, target=1), ref_p, rtol=1e-10
    )


@pytest.mark.parametrize(
    "act,gate", [(nn.GELU, lambda z: torch.special.ndtr(z / 1.0)), (nn.SiLU, lambda z: torch.sigmoid(z / 1.6))]
)
def test_gelu_silu_gates(act, gate):
    model = mlp(depth=2, act=act, dtype=torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64)
    lins = linears(model)
    with torch.no_grad():
        z1 = lins[0](x)
        z2 = lins[1](act()(z1))
        g = (lins[2].weight[0] * gate(z2)) @ lins[1].weight
        g = (g * gate(z1)) @ lins[0].weight
    assert torch.allclose(ExcitationPullback(model).attribute(x, target=0), g, rtol=1e-10)
    # the hard rule keeps the exact derivative for smooth activations
    assert torch.allclose(
        Gradient(model, rules=pullback_rules(gate="hard")).attribute(x, 0), Gradient(model).attribute(x, 0)
    )


# ----------------------------------------------------------------------------- max-pool surrogate
def soft_pool_reference(x, k, s, p, T, detach):
    xp = F.pad(x, (p, p, p, p), value=float("-inf"))
    n, c, h, w = xp.shape
    cols = F.unfold(xp, k, stride=s).view(n, c, k * k, -1)
    wts = torch.softmax(cols / T, dim=2)
    if detach:
        wts = wts.detach()
    cols = torch.where(torch.isfinite(cols), cols, torch.zeros(()))
    return (wts * cols).sum(2)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_surrogate_matches_autograd_of_soft_pool(detach, k, s, p):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    T = 0.3
    gout = torch.randn_like(F.max_pool2d(x, k, s, p))
    (ref,) = torch.autograd.grad(soft_pool_reference(x, k, s, p, T, detach).flatten(2), x, gout.flatten(2))
    pool = nn.MaxPool2d(k, s, p)
    rules = Rules([(nn.MaxPool2d, MaxPoolSurrogate(T, detach))])
    with apply_rules(pool, rules) as ctx:
        y = pool(x)
        (got,) = torch.autograd.grad(y, x, gout)
    assert torch.equal(y, F.max_pool2d(x, k, s, p))
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert ctx.coverage.gated == 1


def test_maxpool_surrogate_large_T_is_average_routing():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    pool = nn.MaxPool2d(2)
    with apply_rules(pool, Rules([(nn.MaxPool2d, MaxPoolSurrogate(1e9, True))])):
        (g,) = torch.autograd.grad(pool(x).sum(), x)
    assert torch.allclose(g, torch.full_like(g, 0.25))


# ----------------------------------------------------------------------------- in-place, reused, functional
def test_inplace_relu_gates_on_pre_activation():
    a, b = mlp(inplace=False, dtype=torch.float64), mlp(inplace=True, dtype=torch.float64)
    x = torch.randn(6, 12, dtype=torch.float64)
    pa = ExcitationPullback(a).attribute(x, 4)
    pb = ExcitationPullback(b).attribute(x, 4)
    assert torch.equal(pa, pb)
    ref = slow_mlp_pullback(a, x, 4, sig(0.3)).detach()
    assert torch.allclose(pb, ref, rtol=1e-10)
    # the historical bug (gate on the post-activation, every gate >= 0.5) gives something else
    bug = slow_mlp_pullback(a, x, 4, lambda z: torch.sigmoid(torch.relu(z) / 0.3)).detach()
    assert not torch.allclose(pb, bug, rtol=1e-3)


def test_inplace_cnn_and_bn():
    a, b = CNN(inplace=False).double(), CNN(inplace=True).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(ExcitationPullback(a).attribute(x, 0), ExcitationPullback(b).attribute(x, 0), rtol=1e-12)


@pytest.mark.parametrize("inplace", [False, True])
def test_reused_relu_module(inplace):
    model = Reused(inplace=inplace).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    ep = ExcitationPullback(model)
    got = ep.attribute(x, 2)
    with torch.no_grad():
        z1 = model.l1(x)
        z2 = model.l2(torch.relu(z1))
        z3 = model.l3(torch.relu(z2))
        g = model.out.weight[2] * sig(0.3)(z3)
        g = (g @ model.l3.weight) * sig(0.3)(z2)
        g = (g @ model.l2.weight) * sig(0.3)(z1)
        g = g @ model.l1.weight
    assert torch.allclose(got, g, rtol=1e-10)
    assert set(ep.coverage.calls) == {"relu:relu#0", "relu:relu#1", "relu:relu#2"}
    assert ep.coverage.gated == ep.coverage.seen == 3


def test_functional_relus_are_intercepted():
    src = Reused().double()
    fun = Functional(src)
    x = torch.randn(5, 12, dtype=torch.float64)
    ep = ExcitationPullback(fun)
    got = ep.attribute(x, 1)
    assert torch.allclose(got, ExcitationPullback(src).attribute(x, 1), rtol=1e-12)
    assert ep.coverage.gated == ep.coverage.seen == 3
    # modules-only rules leave the functional calls hard, and coverage says so
    ep2 = ExcitationPullback(fun, functional=False)
    got2 = ep2.attribute(x, 1)
    assert torch.allclose(got2, Gradient(fun).attribute(x, 1))
    assert ep2.coverage.gated == 0 and ep2.coverage.seen == 3
    assert "ungated" in str(ep2.coverage)


def test_selection_by_name_and_callable():
    model = mlp(depth=3, dtype=torch.float64)  # relus are '1', '3', '5'
    x = torch.randn(4, 12, dtype=torch.float64)
    lins = linears(model)
    rules = Rules([("3", HardGate()), (lambda n, m: n == "5", Gate("logistic", 1.0)), (nn.ReLU, Gate("logistic", 0.3))])
    with torch.no_grad():
        z1 = lins[0](x)
        z2 = lins[1](torch.relu(z1))
        z3 = lins[2](torch.relu(z2))
        g = (lins[3].weight[0] * sig(1.0)(z3)) @ lins[2].weight
        g = (g * (z2 > 0)) @ lins[1].weight
        g = (g * sig(0.3)(z1)) @ lins[0].weight
    assert torch.allclose(Gradient(model, rules=rules).attribute(x, 0), g, rtol=1e-10)
    with pytest.raises(InnerprobeError, match="no module named 'relu9'"):
        Gradient(model, rules=Rules([("relu9", HardGate())])).attribute(x, 0)


def test_per_call_spread_temperature():
    model = mlp(depth=3, dtype=torch.float64)
    x = torch.randn(32, 12, dtype=torch.float64)
    rules = calibrate_temperatures(model, x, 0.5, pullback_rules())
    lins = linears(model)
    with torch.no_grad():
        z1 = lins[0](x)
        z2 = lins[1](torch.relu(z1))
    assert rules.temperatures["1:relu#0"] == pytest.approx(0.5 * float(z1.std()))
    assert rules.temperatures["3:relu#0"] == pytest.approx(0.5 * float(z2.std()))
    got = ExcitationPullback(model, temperature=0.5, scale="spread").attribute(x, 0)
    with torch.no_grad():
        z3 = lins[2](torch.relu(z2))
        ts = [0.5 * float(z.std()) for z in (z1, z2, z3)]
        g = lins[3].weight[0] * sig(ts[2])(z3)
        g = (g @ lins[2].weight) * sig(ts[1])(z2)
        g = (g @ lins[1].weight) * sig(ts[0])(z1)
        g = g @ lins[0].weight
    assert torch.allclose(got, g, rtol=1e-10)


# ----------------------------------------------------------------------------- hygiene
def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def test_rules_and_hooks_gone_after_exception():
    model = CNN(inplace=True).eval()
    model.fc.weight.requires_grad_(False)
    calls = []
    model.c1.register_forward_hook(lambda *a: calls.append(1))  # the user's own hook stays
    before = count_hooks(model)
    sd, modes, grads = _state(model)
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"):
        with apply_rules(model, pullback_rules()):
            model(torch.rand(2, 1, 8, 8))
            raise RuntimeError("boom")
    assert count_hooks(model) == before
    assert torch._C._len_torch_function_stack() == depth
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(model(x)[:, 0].sum(), x)  # plain autograd again
    assert torch.equal(g, Gradient(model).attribute(x, 0))
    assert isinstance(model.r1, nn.ReLU) and model.r1.inplace
    sd2, modes2, grads2 = _state(model)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd) and modes == modes2 and grads == grads2
    # a failure inside attribute (bad target) also leaves nothing behind
    with pytest.raises(ConfigError):
        ExcitationPullback(model).attribute(torch.rand(2, 1, 8, 8), target=[0, 1, 2])
    assert count_hooks(model) == before and torch._C._len_torch_function_stack() == depth


def test_model_untouched_by_attribution():
    model = CNN().train()
    model.c1.weight.requires_grad_(False)
    sd, modes, grads = _state(model)
    hooks = count_hooks(model)
    x = torch.rand(3, 1, 8, 8)
    ExcitationPullback(model).attribute(x, 1)
    Gradient(model, rules=gradient_rules()).attribute(x, 1)
    sd2, modes2, grads2 = _state(model)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert modes == modes2 and grads == grads2 and count_hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_bad_rules_and_temperatures():
    with pytest.raises(ConfigError):
        ExcitationPullback(mlp(), temperature=0)
    with pytest.raises(ConfigError):
        pullback_rules(gate="softish")
    with pytest.raises(ConfigError):
        Rules([(nn.ReLU, "gate")])
    with pytest.raises(ConfigError):
        Gradient(mlp(), rules=Rules([(42, HardGate())])).attribute(torch.randn(2, 12), 0)


# ----------------------------------------------------------------------------- zennit oracle
def _import_zennit():
    """zennit 0.5.1 imports torchvision at import time; give it a stub for the two classes it names."""
    try:
        import zennit  # noqa: F401
    except ModuleNotFoundError as e:
        if not str(e.name).startswith("torchvision"):
            pytest.skip(f"zennit not importable: {e}")
        tv, models, resnet = (
            types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet")
        )
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        tv.models, models.resnet = models, resnet
        for k in [k for k in sys.modules if k.startswith("zennit")]:
            del sys.modules[k]
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
        try:
            import zennit  # noqa: F401
        except Exception as e2:  # pragma: no cover
            pytest.skip(f"zennit not importable: {e2}")
        finally:
            for k in ("torchvision", "torchvision.models", "torchvision.models.resnet"):
                sys.modules.pop(k, None)
    except Exception as e:  # pragma: no cover
        pytest.skip(f"zennit not importable: {e}")
    import zennit.attribution
    import zennit.composites

    return zennit


class ReLUConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )

    def forward(self, x):
        return self.net(x)


@pytest.mark.oracle
@pytest.mark.parametrize("T", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("make", [lambda: mlp(depth=5, dtype=torch.float64), lambda: ReLUConvNet().double().eval()])
def test_zennit_betasmooth_parity(T, make):
    zennit = _import_zennit()
    model = make()
    x = (torch.rand(4, 1, 8, 8) if isinstance(model, ReLUConvNet) else torch.randn(4, 12)).double()
    c = 2
    comp = zennit.composites.BetaSmooth(beta_smooth=1.0 / T)
    with zennit.attribution.Gradient(model, comp) as attributor:
        _, ref = attributor(x.clone(), lambda out: torch.eye(5, dtype=out.dtype)[[c] * len(out)])
    got = ExcitationPullback(model, temperature=T).attribute(x, c)
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert count_hooks(model) == 0


class FunctionalMix(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.c, self.d = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.a(x).relu()
        h = F.gelu(self.b(h))
        h = F.silu(self.c(h))
        return self.d(h)


def test_functional_gelu_silu_and_tensor_relu():
    model = FunctionalMix().double()
    x = torch.randn(5, 12, dtype=torch.float64)
    ep = ExcitationPullback(model)
    got = ep.attribute(x, 1)
    assert ep.coverage.by_op() == {"relu": (1, 1), "gelu": (1, 1), "silu": (1, 1)}
    with torch.no_grad():
        z1 = model.a(x)
        z2 = model.b(torch.relu(z1))
        z3 = model.c(F.gelu(z2))
        g = (model.d.weight[1] * torch.sigmoid(z3 / 1.6)) @ model.c.weight
        g = (g * torch.special.ndtr(z2 / 1.0)) @ model.b.weight
        g = (g * torch.sigmoid(z1 / 0.3)) @ model.a.weight
    assert torch.allclose(got, g, rtol=1e-10)


def test_unsupported_pool_is_reported_not_silently_gated():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(), nn.Linear(2 * 27, 2))
    ep = ExcitationPullback(model)
    ep.attribute(torch.rand(2, 1, 8, 8, 8), 0)
    assert ep.coverage.by_op()["max_pool3d"] == (0, 1)
    assert "max_pool3d" in str(ep.coverage)


def test_nests_inside_a_users_function_mode():
    from torch.overrides import TorchFunctionMode

    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    model = mlp(dtype=torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64)
    ref = ExcitationPullback(model).attribute(x, 0)
    with Spy():
        got = ExcitationPullback(model).attribute(x, 0)
    assert torch.allclose(got, ref) and seen
    assert torch._C._len_torch_function_stack() == 0
