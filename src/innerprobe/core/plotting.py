"""Base matplotlib helpers for every layer: method plots (perturb/patch/pullback), studies and the report.

It lives in ``core`` so that a method's plots never import the report (docs/index.md, "Layers");
``innerprobe.report.plots`` re-exports it for the application layer.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no global backend switch, no global style change, no figure registry to leak, so
importing innerprobe or calling these helpers leaves a user's matplotlib set-up untouched.
matplotlib is imported lazily inside each function.

Typical use in a study::

    from innerprobe.core.plotting import new_figure, savefig
    fig, ax = new_figure()
    ax.plot(xs, ys, label="clean")
    savefig(fig, out / "curve.png")          # returns the path; section.figure(path, caption)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

#: A small colour-blind-safe palette (Okabe-Ito), used by the helpers below.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def new_figure(
    nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, squeeze: bool = True, **subplot_kw
):
    """A fresh ``(Figure, axes)`` on the Agg canvas; ``size`` in inches (default 4.2 x 3 per panel)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if size is None:
        size = (4.2 * ncols, 3.0 * nrows)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, subplot_kw=subplot_kw or None)
    return fig, axes


def savefig(fig, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically: a temp file then a rename) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})
    tmp.replace(path)
    return path


def style_axes(
    ax, *, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None, grid: bool = True
) -> None:
    """Light per-axes styling (the global rcParams are never touched)."""
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(True, alpha=0.25, linewidth=0.6)


def image_grid(
    images,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    colors: Sequence[str] | None = None,
    cmap: str = "gray_r",
    panel: float = 0.95,
    suptitle: str | None = None,
):
    """A grid of grey images (array-like [N,H,W] or [N,1,H,W], values in [0,1]) with a title each.

    ``colors`` colours each title (e.g. green for a correct prediction, red for a wrong one).
    Returns the Figure.
    """
    import numpy as np

    imgs = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=float)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    n = len(imgs)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = new_figure(
        nrows, ncols, size=(panel * ncols, panel * nrows + (0.3 if suptitle else 0.0) + 0.25), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(imgs[i], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7, color=(colors[i] if colors else "black"))
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def line_plot(
    series: dict[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    hlines: dict[str, float] | None = None,
    logy: bool = False,
    size: tuple[float, float] = (4.6, 3.0),
):
    """Lines (one per key) with optional shaded bands (e.g. 95% CIs) and labelled horizontal reference lines."""
    fig, ax = new_figure(size=size)
    for i, (name, ys) in enumerate(series.items()):
        xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        color = PALETTE[i % len(PALETTE)]
        ax.plot(xs[: len(ys)], list(ys), label=name, color=color, linewidth=1.5)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(xs[: len(lo)], list(lo), list(hi), color=color, alpha=0.2, linewidth=0)
    for j, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, color="grey", linestyle="--", linewidth=0.9)
        ax.annotate(
            name, xy=(1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7, color="grey"
        )
    if logy:
        ax.set_yscale("log")
    style_axes(ax, title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    return fig


def heatmap(
    values,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    fmt: str = "{:.2f}",
    size: tuple[float, float] | None = None,
):
    """A labelled heatmap (rows x columns) with the value printed in each cell and a colour bar."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if size is None:
        size = (1.2 + 0.8 * v.shape[1], 1.0 + 0.5 * v.shape[0])
    fig, ax = new_figure(size=size)
    im = ax.imshow(v, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(v.shape[1]), list(col_labels), fontsize=8)
    ax.set_yticks(range(v.shape[0]), list(row_labels), fontsize=8)
    if annotate:
        lo, hi = (np.nanmin(v), np.nanmax(v)) if v.size else (0.0, 1.0)
        mid = (lo + hi) / 2
        for (r, c), val in np.ndenumerate(v):
            ax.text(
                c, r, fmt.format(val), ha="center", va="center", fontsize=7, color="white" if val < mid else "black"
            )
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
