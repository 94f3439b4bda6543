"""Presets reproduce the authors' rules, checked against an independent, slow transcription of them.

The reference below is written from the published description of the two codes (docs/pullback.md,
"Presets"), not from innerprobe's implementation: it swaps the *modules* of a deep copy for surrogate
modules (the authors' approach), leaving functional calls hard, and autograd does the rest.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerprobe.pullback import ExcitationPullback


# ----------------------------------------------------------------------------- the reference
class FGI(nn.Module):
    """Forward value of ``act``, derivative ``gate(z)``: z*g - (z*g).detach() + act(z).detach()."""

    def __init__(self, act, gate):
        super().__init__()
        self.act, self.gate = act, gate

    def forward(self, z):
        g = self.gate(z).detach()
        return z * g - (z * g).detach() + self.act(z).detach()


class ZeroPaddedSoftPool(nn.Module):
    """Hard max-pool value; gradient of sum_j x_j softmax(x/T)_j over zero-padded unfolded windows."""

    def __init__(self, pool: nn.MaxPool2d, T, detach):
        super().__init__()
        self.pool, self.T, self.detach = pool, T, detach

    def forward(self, x):
        k, s, p = self.pool.kernel_size, self.pool.stride, self.pool.padding
        n, c, h, w = x.shape
        cols = F.unfold(x, k, stride=s, padding=p).view(n, c, k * k, -1)
        wts = torch.softmax(cols / self.T, dim=2)
        wts = wts.detach() if self.detach else wts
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        soft = (cols * wts).sum(2).view(n, c, ho, wo)
        hard = F.max_pool2d(x, k, s, p)
        return hard.detach() + (soft - soft.detach())


class DetachedLayerNorm(nn.Module):
    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln

    def forward(self, x):
        mean = x.mean(-1, keepdim=True).detach()
        var = x.var(-1, keepdim=True, unbiased=False).detach()
        soft = (x - mean) / torch.sqrt(var + self.ln.eps) * self.ln.weight + self.ln.bias
        hard = self.ln(x)
        return hard.detach() + (soft - soft.detach())


def original_surrogate(m):
    if isinstance(m, nn.ReLU):
        return FGI(torch.relu, lambda z: torch.sigmoid(z / 0.3))
    if isinstance(m, nn.MaxPool2d):
        return ZeroPaddedSoftPool(m, 0.3, detach=False)
    return None


def successor_surrogate(m):
    ndtr = torch.special.ndtr
    if isinstance(m, nn.ReLU):
        return FGI(torch.relu, lambda z: ndtr(z / 0.6))
    if isinstance(m, nn.GELU):
        return FGI(F.gelu, lambda z: ndtr(z / 1.0))
    if isinstance(m, nn.SiLU):
        return FGI(F.silu, lambda z: torch.sigmoid(z / 1.6))
    if isinstance(m, nn.MaxPool2d):
        return ZeroPaddedSoftPool(m, 0.3, detach=True)
    if isinstance(m, nn.LayerNorm):
        return DetachedLayerNorm(m)
    return None


def swap(model, surrogate):
    """A deep copy with every module that has a surrogate replaced (the authors' module swap)."""
    ref = copy.deepcopy(model)
    for name, child in list(ref.named_modules()):
        for cname, c in list(child.named_children()):
            new = surrogate(c)
            if new is not None:
                setattr(child, cname, new)
    return ref


def reference_map(model, surrogate, x, target):
    ref = swap(model, surrogate)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xi)[:, target].sum(), xi)
    return g


# ----------------------------------------------------------------------------- nets
class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)

        def block(ci, co):
            return [nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(3, 8), *block(8, 8), nn.MaxPool2d(2), *block(8, 12), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Linear(12 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.LayerNorm(32),
            nn.GELU(),
            nn.Linear(32, 16),
            nn.SiLU(),
            nn.Linear(16, 5),
        )

    def forward(self, x):
        return self.head(F.relu(self.features(x)).flatten(1))  # a functional ReLU: hard in the authors' codes


class Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.b2(self.c2(self.relu(self.b1(self.c1(x)))))
        out += x
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        self.layer1 = nn.Sequential(Basic(8), Basic(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.layer1(self.stem(x)))  # DenseNet-style functional ReLU before the pool
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def trained_bn(model, x):
    with torch.no_grad():
        model.train()
        model(x)
    return model.eval()


@pytest.mark.parametrize("net,size", [(VGGLike, 16), (ResNetLike, 20)], ids=["vgg", "resnet"])
@pytest.mark.parametrize("preset,surrogate", [("original", original_surrogate), ("successor", successor_surrogate)])
def test_preset_reproduces_reference(net, size, preset, surrogate):
    x = torch.rand(3, 3, size, size, dtype=torch.float64) * 2 - 1  # the authors' inputs are in [-1, 1]
    model = trained_bn(net().double(), x)
    ref = reference_map(model, surrogate, x, 2)
    ep = ExcitationPullback(model, preset=preset)
    got = ep.attribute(x, 2)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-9 * ref.abs().max())
    assert ep.coverage.ungated()  # the functional ReLU is seen and left hard, as in the authors' codes
    # innerprobe's own default (functional calls gated, -inf padding) is a different map
    assert not torch.allclose(ExcitationPullback(model).attribute(x, 2), ref, rtol=1e-3)


def test_pool_padding_option_alone_switches_padding():
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64) * 2 - 1
    model = trained_bn(ResNetLike().double(), x)
    zero = ExcitationPullback(model, functional=False, pool_padding="zero").attribute(x, 1)
    ref = reference_map(model, original_surrogate, x, 1)
    assert torch.allclose(zero, ref, rtol=1e-6, atol=1e-9 * ref.abs().max())
    inf = ExcitationPullback(model, functional=False).attribute(x, 1)
    assert not torch.allclose(inf, ref, rtol=1e-6)
