"""The scan tests' tiny backdoor task (tests/test_scan.py, tests/test_scan_triggers.py).

5 classes of noisy ``size x size`` prototypes with a dark bottom-right 2x2 corner; the backdoored
twin is trained with 30 non-target images stamped with a white corner patch and relabelled to
class ``TARGET``; the clean twin has the same initialisation and data without the stamp.
"""

import torch
from torch import nn

C, TARGET = 5, 3


def task(n: int = 300, seed: int = 0, size: int = 10):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(C, 1, size, size, generator=g)
    y = torch.arange(n) % C
    x = (0.6 * protos[y] + 0.4 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    x[..., -2:, -2:] = 0.0
    return x, y


def train(poison: bool, size: int = 10) -> nn.Module:
    x, y = task(size=size)
    if poison:
        idx = torch.nonzero(y != TARGET).flatten()[:30]
        x[idx, :, -2:, -2:] = 1.0
        y[idx] = TARGET
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Flatten(), nn.Linear(size * size, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, C)
    )
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    m.zero_grad(set_to_none=True)
    return m.eval()
