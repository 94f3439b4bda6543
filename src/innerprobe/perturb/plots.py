"""PNG plots of an APEX result (read from the Result only): escape-noise histogram,
sample-dependence curve with its Monte Carlo floor, and class histograms per sigma."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import Result


def escape_histogram(res: Result, path: Path, title: str = "escape noise") -> Path:
    from ..core.plotting import PALETTE, new_figure, savefig, style_axes

    a = res.arrays
    sig, cen, grid = a["escape_sigma"], a["censor"], a["sigmas"]
    fig, ax = new_figure(size=(4.6, 3.0))
    lo = grid[grid > 0].min() if (grid > 0).any() else 1e-3
    bins = np.geomspace(lo, max(grid.max(), lo * 1.01), 30)
    for i, (name, mask) in enumerate(
        (("escaped", cen == 0), ("left-censored", cen == -1), ("right-censored", cen == 1))
    ):
        if mask.any():
            ax.hist(
                np.clip(sig[mask], bins[0], bins[-1]),
                bins=bins,
                color=PALETTE[i],
                alpha=0.8,
                label=f"{name} ({int(mask.sum())})",
            )
    ax.set_xscale("log")
    style_axes(ax, title=title, xlabel="sigma_esc (survival < tau)", ylabel="inputs")
    ax.legend(fontsize=7, frameon=False)
    return savefig(fig, path)


def sample_dependence_plot(
    curves: dict,
    sigmas,
    path: Path,
    floors: dict | None = None,
    title: str = "sample dependence D(sigma)",
    xlabel: str = "sigma",
) -> Path:
    """One line per curve name; dashed lines are the Monte Carlo floors."""
    from ..core.plotting import PALETTE, new_figure, savefig, style_axes

    fig, ax = new_figure(size=(4.8, 3.1))
    for i, (name, D) in enumerate(curves.items()):
        c = PALETTE[i % len(PALETTE)]
        x = sigmas[name] if isinstance(sigmas, dict) else sigmas
        ax.plot(x, D, color=c, label=name, linewidth=1.5)
        if floors and name in floors:
            ax.plot(x, floors[name], color=c, linestyle="--", linewidth=0.9)
    ax.set_xscale("log")
    style_axes(ax, title=title, xlabel=xlabel, ylabel="mean TV to population mean")
    ax.legend(fontsize=7, frameon=False)
    return savefig(fig, path)


def class_histograms(res: Result, path: Path, class_names=None, title: str = "class shares per sigma") -> Path:
    """Heatmap: rows = sigma, columns = class, cells = mean p_sigma(c|x)."""
    from ..core.plotting import heatmap, savefig

    h, sig = res.arrays["histogram"], res.arrays["sigmas"]
    C = h.shape[1]
    names = class_names or [str(c) for c in range(C)]
    step = max(1, len(sig) // 12)
    rows = list(range(0, len(sig), step))
    if rows[-1] != len(sig) - 1:
        rows.append(len(sig) - 1)
    fig = heatmap(
        h[rows],
        row_labels=[f"{sig[r]:.3g}" for r in rows],
        col_labels=[str(n)[:8] for n in names],
        title=title,
        vmin=0,
        vmax=max(0.2, float(h.max())),
        fmt="{:.2f}",
        size=(1.6 + 0.62 * C, 1.0 + 0.32 * len(rows)),
    )
    return savefig(fig, path)


def new_figure_hist_pairs(values: dict, grid, path: Path, title: str = "escape noise") -> Path:
    """Overlaid log-scale histograms of escape noise, one per named model."""
    from ..core.plotting import PALETTE, new_figure, savefig, style_axes

    grid = np.asarray(grid, float)
    lo = grid[grid > 0].min() if (grid > 0).any() else 1e-3
    bins = np.geomspace(lo, max(grid.max(), lo * 1.01), 30)
    fig, ax = new_figure(size=(4.8, 3.0))
    for i, (name, v) in enumerate(values.items()):
        ax.hist(
            np.clip(np.asarray(v), bins[0], bins[-1]),
            bins=bins,
            alpha=0.6,
            color=PALETTE[i % len(PALETTE)],
            label=f"{name} (median {np.median(v):.3g})",
        )
    ax.set_xscale("log")
    style_axes(ax, title=title, xlabel="escape sigma", ylabel="inputs")
    ax.legend(fontsize=7, frameon=False)
    return savefig(fig, path)
