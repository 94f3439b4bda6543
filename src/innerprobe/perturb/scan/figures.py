"""The scan's synthesised triggers as one image grid (docs/scan.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _img(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, float)
    return a[0] if a.ndim == 3 and a.shape[0] == 1 else (np.moveaxis(a, 0, -1) if a.ndim == 3 else a)


def trigger_figure(res, path: Path, *, title: str = "synthesised triggers"):
    """Row 1: the maximum-margin input per class; row 2 (with clean inputs): the smallest trigger m * p per class.

    Returns the PNG path, or None when the result holds no image-shaped triggers (e.g. token or vector inputs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, res.arrays[k]) for k in ("mm_images",) if k in res.arrays]
    if "nc_mask" in res.arrays:
        rows.append(("nc_trigger", res.arrays["nc_mask"] * res.arrays["nc_pattern"]))
    rows = [(k, v) for k, v in rows if np.asarray(v).ndim == 4]
    if not rows:
        return None
    C = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), C, figsize=(1.1 * C, 1.25 * len(rows) + 0.4), squeeze=False)
    sus = res.data.get("suspect")
    for i, (k, v) in enumerate(rows):
        for c in range(C):
            ax = axes[i][c]
            ax.imshow(_img(v[c]), cmap="gray", vmin=0, vmax=max(1e-6, float(np.max(v))))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{c}" + (" *" if c == sus else ""), fontsize=8)
        axes[i][0].set_ylabel("max margin" if k == "mm_images" else "m * p", fontsize=7)
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
