"""Evaluation of attribution maps: faithfulness, localisation, sanity checks, paired bootstrap CIs.

All model evaluations run under ``torch.no_grad()`` in chunks of ``chunk_size`` rows; every
random choice comes from a generator seeded per call, so results do not depend on the chunk size.
Per-image scores are returned as 1-D tensors (one value per image) so methods can be compared
*paired* on the same images with :func:`paired_bootstrap`.

* :func:`deletion_auc` / :func:`insertion_auc` -- Petsiuk et al. 2018 (RISE), Sec. 4.1: remove
  (insert) the top-ranked pixels step by step, area under the target-probability curve.
* :func:`infidelity` -- Yeh et al. 2019, Eq. 2, with the optimal scale beta* (least squares), so it
  does not depend on the attribution's scale; reported relative to E[(Delta f)^2].
* :func:`faithfulness_correlation` -- Bhatt et al. 2020, Eq. 3: Pearson correlation over random
  pixel subsets S between sum_{i in S} A_i and f(x) - f(x with S at baseline).
* :func:`localisation` -- relevance mass / rank accuracy (Arras et al. 2022, Sec. 3.2) and the
  pointing game (Zhang et al. 2018); :func:`mosaic_focus` (Arras et al. 2022, "focus").
* :func:`cascading_randomisation` -- Adebayo et al. 2018, Sec. 3.1; :func:`random_logit` --
  Sixt et al. 2020, Sec. 5.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..core.trees import logits_of
from ..errors import ConfigError


def _pixels(attr: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W] (summed over channels); [N, D...] -> [N, D]."""
    if attr.dim() == 4:
        return attr.sum(1).flatten(1)
    return attr.flatten(1)


def _expand_pixels(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N, P] pixel mask -> shape of ``like`` (broadcast over channels)."""
    if like.dim() == 4:
        n, c, h, w = like.shape
        return mask.view(n, 1, h, w).expand(n, c, h, w)
    return mask.view(like.shape)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return torch.cat([logits_of(model(x[i : i + chunk_size])) for i in range(0, x.shape[0], chunk_size)])


def _check(x: torch.Tensor, attr: torch.Tensor, target) -> torch.Tensor:
    if attr.shape != x.shape:
        raise ConfigError(
            f"attribution shape {tuple(attr.shape)} differs from input shape {tuple(x.shape)}",
            hint="pass one map per input, shaped like it",
        )
    t = torch.as_tensor(target).long().reshape(-1)
    return t.expand(x.shape[0]) if t.numel() == 1 else t


def _ranking(attr: torch.Tensor, seed: int) -> torch.Tensor:
    """Pixel order, highest attribution first; ties broken at random (seeded), not by position."""
    a = _pixels(attr)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(a.shape[1], generator=gen) for _ in range(a.shape[0])])
    order = torch.argsort(a.gather(1, perm), dim=1, descending=True, stable=True)
    return perm.gather(1, order)


def _curve_auc(model, x, attr, target, steps, baseline, insert, chunk_size, seed) -> torch.Tensor:
    t = _check(x, attr, target)
    if not (isinstance(steps, int) and steps >= 2):
        raise ConfigError(f"steps must be an integer >= 2, got {steps!r}")
    order = _ranking(attr, seed)
    n, p = order.shape
    base = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype), x.shape)
    probs = torch.empty(n, steps + 1)
    counts = [round(p * k / steps) for k in range(steps + 1)]
    rows_per = max(1, chunk_size // (steps + 1))
    for i in range(0, n, rows_per):
        xs, bs, os_ = x[i : i + rows_per], base[i : i + rows_per], order[i : i + rows_per]
        m = xs.shape[0]
        batch = []
        for k in counts:
            mask = torch.zeros(m, p, dtype=torch.bool)
            mask.scatter_(1, os_[:, :k], True)
            mask = _expand_pixels(mask, xs)
            batch.append(torch.where(mask, xs, bs) if insert else torch.where(mask, bs, xs))
        out = _logits(model, torch.cat(batch), chunk_size).softmax(-1)
        tt = t[i : i + m].repeat(len(counts))
        probs[i : i + m] = out.gather(1, tt[:, None]).view(len(counts), m).T
    return torch.trapezoid(probs, dx=1.0 / steps, dim=1)


def deletion_auc(
    model, x, attr, target, *, steps: int = 16, baseline: float = 0.0, chunk_size: int = 512, seed: int = 0
) -> torch.Tensor:
    """Per-image AUC of the target's softmax as top-attributed pixels are set to ``baseline`` (lower is better)."""
    return _curve_auc(model, x, attr, target, steps, baseline, False, chunk_size, seed)


def insertion_auc(
    model, x, attr, target, *, steps: int = 16, baseline: float = 0.0, chunk_size: int = 512, seed: int = 0
) -> torch.Tensor:
    """Per-image AUC of the target's softmax as top-attributed pixels are inserted into ``baseline`` (higher is better)."""
    return _curve_auc(model, x, attr, target, steps, baseline, True, chunk_size, seed)


def _subset_masks(n: int, p: int, n_sets: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, n_sets, p, generator=gen).argsort(-1)[..., :size]
    mask = torch.zeros(n, n_sets, p, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask


def _repeat_rows(v: torch.Tensor, m: int, s: int) -> torch.Tensor:
    """Each of the m rows repeated s times, consecutively: [m * s, ...]."""
    return v.unsqueeze(1).expand(m, s, *v.shape[1:]).reshape(m * s, *v.shape[1:])


def _perturbed_drop(model, x, target, masks, baseline, chunk_size) -> torch.Tensor:
    """f_t(x) - f_t(x with masked pixels at baseline), [N, S]."""
    t = target
    n, s, p = masks.shape
    base = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype), x.shape)
    f0 = _logits(model, x, chunk_size).gather(1, t[:, None])[:, 0]
    drops = torch.empty(n, s)
    rows_per = max(1, chunk_size // s)
    for i in range(0, n, rows_per):
        xs, bs, ms = x[i : i + rows_per], base[i : i + rows_per], masks[i : i + rows_per]
        m = xs.shape[0]
        xr, br = _repeat_rows(xs, m, s), _repeat_rows(bs, m, s)
        mr = _expand_pixels(ms.reshape(m * s, p), xr)
        out = _logits(model, torch.where(mr, br, xr), chunk_size)
        f = out.gather(1, t[i : i + m].repeat_interleave(s)[:, None])[:, 0].view(m, s)
        drops[i : i + m] = f0[i : i + m, None] - f
    return drops


def faithfulness_correlation(
    model,
    x,
    attr,
    target,
    *,
    n_subsets: int = 32,
    subset_frac: float = 0.125,
    baseline: float = 0.0,
    chunk_size: int = 512,
    seed: int = 0,
) -> torch.Tensor:
    """Per-image Pearson corr over random pixel subsets S of (sum_S A_i, f(x) - f(x_S = baseline)) (Bhatt et al. 2020)."""
    t = _check(x, attr, target)
    a = _pixels(attr).float()
    n, p = a.shape
    size = max(1, round(subset_frac * p))
    masks = _subset_masks(n, p, n_subsets, size, seed)
    drops = _perturbed_drop(model, x, t, masks, baseline, chunk_size)
    sums = (a[:, None, :] * masks).sum(-1)
    return _pearson(sums, drops)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(1e-30), torch.full_like(den, float("nan")))


def infidelity(
    model,
    x,
    attr,
    target,
    *,
    n_perturb: int = 32,
    patch: int | None = None,
    baseline: float = 0.0,
    chunk_size: int = 512,
    seed: int = 0,
    relative: bool = True,
) -> torch.Tensor:
    """Optimal-scaling infidelity (Yeh et al. 2019, Eq. 2 with beta* = sum(s df) / sum(s^2)), per image.

    Perturbations I set a random square patch (side ``patch``, default ~ a quarter of the image
    side) to ``baseline``: I = (x - baseline) on the patch, s = <I, A>, df = f(x) - f(x - I).
    INFD = mean((beta* s - df)^2); with ``relative`` it is divided by mean(df^2), i.e. 1 - R^2 of
    a fit through the origin (0 = perfectly faithful, 1 = no better than predicting 0).
    """
    t = _check(x, attr, target)
    a = _pixels(attr).float()
    n, p = a.shape
    if x.dim() == 4:
        h, w = x.shape[-2:]
        side = patch or max(1, round(min(h, w) / 4))
        gen = torch.Generator().manual_seed(seed)
        ys = torch.randint(0, h - side + 1, (n, n_perturb, 1, 1), generator=gen)
        xs = torch.randint(0, w - side + 1, (n, n_perturb, 1, 1), generator=gen)
        r = torch.arange(h)[None, None, :, None]
        c = torch.arange(w)[None, None, None, :]
        masks = ((r >= ys) & (r < ys + side) & (c >= xs) & (c < xs + side)).flatten(2)
    else:  # no image layout: random feature subsets of size patch (default p / 8)
        masks = _subset_masks(n, p, n_perturb, patch or max(1, p // 8), seed)
    drops = _perturbed_drop(model, x, t, masks, baseline, chunk_size)
    diff = _pixels((x - torch.as_tensor(baseline, dtype=x.dtype)) * attr).float()  # I_i * A_i summed per pixel
    s = (diff[:, None, :] * masks).sum(-1)
    beta = (s * drops).sum(-1) / (s * s).sum(-1).clamp_min(1e-30)
    err = ((beta[:, None] * s - drops) ** 2).mean(-1)
    if relative:
        err = err / (drops**2).mean(-1).clamp_min(1e-30)
    return err


# --------------------------------------------------------------------------- localisation
def localisation(attr: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image relevance mass (share of positive A inside ``mask``), rank accuracy (share of the
    top-k |A| inside, k = mask size) and pointing game (argmax A inside)."""
    a = _pixels(attr).float()
    m = _pixels(mask.to(attr.dtype)).bool() if mask.dim() == attr.dim() else mask.flatten(1).bool()
    if m.shape != a.shape:
        raise ConfigError(
            f"mask has {m.shape[1]} pixels per image, attribution {a.shape[1]}",
            hint="pass a [N, H, W] or input-shaped bool mask",
        )
    pos = a.clamp(min=0)
    mass = (pos * m).sum(1) / pos.sum(1).clamp_min(1e-30)
    k = m.sum(1)
    order = a.abs().argsort(1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(a.shape[1]).expand_as(order))
    rank_acc = ((ranks < k[:, None]) & m & (a != 0)).sum(1).float() / k.clamp_min(1).float()  # ties at 0 earn nothing
    pointing = (m.gather(1, a.argmax(1, keepdim=True))[:, 0] & (a.max(1).values > 0)).float()
    return {"relevance_mass": mass, "rank_accuracy": rank_acc, "pointing_game": pointing}


def mosaic_focus(attr: torch.Tensor, x: torch.Tensor, tile_mask: torch.Tensor) -> torch.Tensor:
    """Share of positive A*x inside the target tiles (Arras et al. 2022, "focus"), per image."""
    r = _pixels((attr * x).float()).clamp(min=0)
    m = tile_mask.flatten(1).bool()
    return (r * m).sum(1) / r.sum(1).clamp_min(1e-30)


# --------------------------------------------------------------------------- sanity checks
def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra = a.argsort(-1).argsort(-1).float()
    rb = b.argsort(-1).argsort(-1).float()
    return _pearson(ra, rb)


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    target,
    attribute: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int = 0,
) -> list[dict]:
    """Adebayo et al. 2018: re-initialise layers from the output down, cumulatively, on a *copy*.

    ``attribute(model, x, target)`` returns maps. Returns one row per randomised layer with the mean
    Spearman correlation of |A| to the original maps (a method passes if it drops).
    """
    t = _check(x, x, target)
    ref = _pixels(attribute(model, x, t)).abs()
    m = copy.deepcopy(model)
    layers = [
        (n, mod)
        for n, mod in m.named_modules()
        if hasattr(mod, "reset_parameters") and any(True for _ in mod.parameters(recurse=False))
    ]
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, mod in reversed(layers):
            mod.reset_parameters()
            a = _pixels(attribute(m, x, t)).abs()
            rho = _spearman(ref, a)
            rows.append({"layer": name, "spearman": float(torch.nanmean(rho)), "per_image": rho})
    return rows


def random_logit(
    attribute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target,
    n_classes: int,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Sixt et al. 2020: per-image Pearson similarity between the map for ``target`` and for a random other class.

    High similarity means the explanation ignores which logit is explained (Guided Backprop's failure).
    """
    t = _check(x, x, target)
    gen = torch.Generator().manual_seed(seed)
    other = (t + torch.randint(1, n_classes, t.shape, generator=gen)) % n_classes
    a, b = _pixels(attribute(x, t)).float(), _pixels(attribute(x, other)).float()
    return _pearson(a, b)


# --------------------------------------------------------------------------- statistics
def paired_bootstrap(a, b=None, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean paired difference a - b with a bootstrap CI over seeds and images.

    ``a``, ``b``: arrays [images] or [seeds, images] (same images per seed, paired). Seeds are
    resampled with replacement, then images within each resampled seed. NaNs are dropped pairwise.
    """
    a = np.asarray(a, dtype=float)
    d = a - np.asarray(b, dtype=float) if b is not None else a
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2:
        raise ConfigError(f"expected [images] or [seeds, images] arrays, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    s, n = d.shape
    valid = ~np.isnan(d)
    if not valid.any():
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_seeds": s, "n_images": n}
    dz = np.where(valid, d, 0.0)
    vf = valid.astype(float)
    stats = np.empty(n_boot)
    block = max(1, 2_000_000 // (s * n))  # bootstrap replicates per vectorised block
    for b0 in range(0, n_boot, block):
        b = min(block, n_boot - b0)
        si = rng.integers(0, s, (b, s))[:, :, None]
        ii = rng.integers(0, n, (b, s, n))
        stats[b0 : b0 + b] = dz[si, ii].sum((1, 2)) / np.maximum(vf[si, ii].sum((1, 2)), 1)
    lo, hi = np.quantile(stats, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return {"mean": float(dz.sum() / valid.sum()), "lo": float(lo), "hi": float(hi), "n_seeds": s, "n_images": n}


def mean_ci(a, **kw) -> dict:
    """Mean with the same two-level bootstrap CI (no pairing)."""
    return paired_bootstrap(a, None, **kw)


__all__ = [
    "cascading_randomisation",
    "deletion_auc",
    "faithfulness_correlation",
    "infidelity",
    "insertion_auc",
    "localisation",
    "mean_ci",
    "mosaic_focus",
    "paired_bootstrap",
    "random_logit",
]
