"""Stage (b) of the backdoor scan: data-free maximum-margin trigger synthesis (docs/scan.md).

MM-BD (Wang, Mahdavi, Miller, Kesidis 2022, "MM-BD: Post-Training Detection of Backdoor Attacks
with Arbitrary Backdoor Pattern Types Using a Maximum Margin Statistic", arXiv 2205.06900): a
backdoor makes its target class reachable with an unusually large logit margin. For each class c,

    r_c = max_x  [ f_c(x) - max_{k != c} f_k(x) ],   x in [lo, hi]^d   (eq. 2 there),

maximised by Adam on ``x = lo + (hi - lo) sigmoid(theta)`` from ``restarts`` seeded random starts;
no clean inputs are needed. The class statistic is a robust z of log r among the classes (a null
fitted to the model's own classes); the maximiser x*_c is the synthesised trigger image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...core.hooks import HookSession
from .screen import robust_z


def _margins(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    own = logits.gather(1, cls[:, None])[:, 0]
    rival = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return own - rival


def max_margin(
    model: nn.Module,
    shape,
    num_classes: int,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    restarts: int = 4,
    steps: int = 150,
    lr: float = 0.1,
    seed: int = 0,
    dtype=torch.float32,
    device="cpu",
) -> tuple[np.ndarray, torch.Tensor]:
    """Per class the largest margin found [C] and its maximiser [C, *shape] (the best of ``restarts`` starts)."""
    C, R = int(num_classes), int(restarts)
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn((C * R, *shape), generator=gen).to(device, dtype).mul_(2.0).requires_grad_(True)
    cls = torch.arange(C, device=device).repeat_interleave(R)
    opt = torch.optim.Adam([theta], lr=lr)
    with HookSession(model, eval=True), torch.enable_grad():
        for _ in range(int(steps)):
            x = lo + (hi - lo) * torch.sigmoid(theta)
            loss = -_margins(model(x), cls).clamp(max=1e4).sum()
            (g,) = torch.autograd.grad(loss, theta)
            theta.grad = g
            opt.step()
        with torch.no_grad():
            x = lo + (hi - lo) * torch.sigmoid(theta)
            m = _margins(model(x), cls).view(C, R)
    best = m.argmax(1)
    xs = x.detach().view(C, R, *shape)[torch.arange(C), best]
    return m.max(1).values.cpu().double().numpy(), xs.cpu()


def mm_statistic(margins: np.ndarray) -> np.ndarray:
    """Robust z of log max-margin among the classes (margins <= 0 count as a tiny positive margin)."""
    return robust_z(np.log(np.maximum(np.asarray(margins, float), 1e-3)), mad_floor=1e-3)


def gamma_pvalue(margins: np.ndarray) -> float:
    """MM-BD's order-statistic p-value of the largest margin under a Gamma null fitted to the other classes."""
    from scipy import stats

    r = np.sort(np.maximum(np.asarray(margins, float), 1e-6))
    null = r[:-1]
    if len(null) < 3 or np.ptp(null) <= 0:
        return float("nan")
    a, loc, scale = stats.gamma.fit(null, floc=0.0)
    return float(1.0 - stats.gamma.cdf(r[-1], a, loc=loc, scale=scale) ** len(null))


def triggers(
    model,
    shape,
    num_classes: int,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    restarts: int = 4,
    steps: int = 150,
    seed: int = 0,
    dtype=torch.float32,
    device="cpu",
) -> dict:
    """Stage (b): ``{"margin": [C], "z": [C], "p_value": float, "images": [C, *shape]}``."""
    m, xs = max_margin(
        model, shape, num_classes, lo=lo, hi=hi, restarts=restarts, steps=steps, seed=seed, dtype=dtype, device=device
    )
    return {"margin": m, "z": mm_statistic(m), "p_value": gamma_pvalue(m), "images": xs}
