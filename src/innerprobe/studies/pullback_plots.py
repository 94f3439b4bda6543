"""Figure grids for pullbacks (used by ``innerprobe pullback`` and the ``pullback-digits`` study).

Maps are drawn with a diverging colour map symmetric around 0, scaled per map by its max |A|;
inputs and ascent results in grey. matplotlib is imported lazily (through report.plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _img(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 3:  # [C, H, W]
        a = a.sum(0) if a.shape[0] > 1 else a[0]
    if a.ndim == 1:
        side = int(round(np.sqrt(a.size)))
        a = a.reshape(side, side) if side * side == a.size else a[None]
    return a


def image_grid(
    cells: Sequence[Sequence[tuple[str, np.ndarray] | None]],
    path: str | Path,
    *,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: float = 1.15,
) -> Path:
    """Write a grid of small images. Each cell is ``(kind, array)`` with kind 'input' (grey, [0, 1]),
    'map' (diverging, symmetric, per-map scale), 'delta' (grey, per-map min-max) or None (empty)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..report.plots import savefig

    nr, nc = len(cells), max(len(r) for r in cells)
    w, h = cell * nc + 0.6, cell * nr + (0.5 if title else 0.2)
    fig = Figure(figsize=(w, h))  # no constrained layout: fixed margins are much faster for many small panels
    FigureCanvasAgg(fig)
    axes = fig.subplots(nr, nc, squeeze=False)
    fig.subplots_adjust(
        left=0.6 / w, right=0.99, bottom=0.02, top=1 - (0.5 if title else 0.2) / h, wspace=0.08, hspace=0.25
    )
    for i, row in enumerate(cells):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            item = row[j] if j < len(row) else None
            if item is None:
                continue
            kind, arr = item
            a = _img(arr)
            if kind == "input":
                ax.imshow(a, cmap="gray", vmin=0, vmax=max(1.0, float(a.max())), interpolation="nearest")
            elif kind == "delta":
                lo, hi = float(a.min()), float(a.max())
                ax.imshow(
                    (a - lo) / (hi - lo) if hi > lo else a * 0, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
                )
            else:
                m = float(np.abs(a).max()) or 1.0
                ax.imshow(a, cmap="bwr", vmin=-m, vmax=m, interpolation="nearest")
            if i == 0 and col_labels is not None and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
            if j == 0 and row_labels is not None and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return savefig(fig, path)
