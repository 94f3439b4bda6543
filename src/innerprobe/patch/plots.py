"""Figures for path patching: circuit diagrams, head heatmaps, hypothesis bars (matplotlib, lazy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.graph import Graph

SLOT_COLORS = {"q": "tab:blue", "k": "tab:green", "v": "tab:red", "in": "0.35"}



def _save(fig, path) -> Path:
    """Lay out, write ``path`` as a 120-dpi PNG and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """Inputs at the bottom, one row per layer (heads, then the MLP), the output on top."""
    rows: dict[int, list[str]] = {}
    for n in graph.order:
        node = graph.nodes[n]
        if node.kind == "input":
            r = 0
        elif node.kind == "output":
            r = 10_000
        else:
            r = 1 + (node.layer if node.layer is not None else graph.order.index(n))
        rows.setdefault(r, []).append(n)
    pos = {}
    for y, r in enumerate(sorted(rows)):
        names = rows[r]
        for i, n in enumerate(names):
            pos[n] = ((i + 1) / (len(names) + 1), float(y))
    return pos


def draw_circuit(graph: Graph, weights, path, *, title: str = "", reference=None) -> Path:
    """Edges of ``weights`` ({Edge: value} or a set of edges) drawn with width ~ |value|, coloured by
    the receiving slot (q blue, k green, v red); ``reference`` edges missing from it are dashed."""
    plt = _plt()
    if not isinstance(weights, dict):
        weights = {e: 1.0 for e in weights}
    pos = layout(graph)
    fig, ax = plt.subplots(figsize=(7, 1.6 + 1.4 * (max(y for _, y in pos.values()) + 1)))
    wmax = max([abs(v) for v in weights.values()] + [1e-12])
    offs = {"q": -0.012, "k": 0.0, "v": 0.012, "in": 0.0}
    for e, w in weights.items():
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        x1 += offs.get(e.slot, 0)
        ax.annotate("", xy=(x1, y1 - 0.12), xytext=(x0, y0 + 0.12),
                    arrowprops=dict(arrowstyle="-|>", color=SLOT_COLORS.get(e.slot, "0.35"), lw=0.6 + 4 * abs(w) / wmax, alpha=0.85,
                                    connectionstyle="arc3,rad=0.08"))
    for e in set(reference or ()) - set(weights):
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        ax.annotate("", xy=(x1, y1 - 0.12), xytext=(x0, y0 + 0.12),
                    arrowprops=dict(arrowstyle="-|>", color=SLOT_COLORS.get(e.slot, "0.35"), lw=0.8, ls="--", alpha=0.5))
    used = {e.src for e in weights} | {e.dst for e in weights}
    for n, (x, y) in pos.items():
        ax.text(x, y, n, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="lightyellow" if n in used else "white", ec="0.3" if n in used else "0.8"))
    for s, c in SLOT_COLORS.items():
        ax.plot([], [], color=c, label=f"into {s}" if s != "in" else "into MLP / out")
    if reference is not None:
        ax.plot([], [], color="0.5", ls="--", label="reference edge not found")
    ax.legend(loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, max(y for _, y in pos.values()) + 0.5)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def head_heatmaps(panels: dict[str, np.ndarray], path, *, title: str = "") -> Path:
    """One [layer, head] heatmap per panel, annotated with values."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for ax, (name, arr) in zip(axes[0], panels.items()):
        arr = np.asarray(arr, float)
        im = ax.imshow(arr, cmap="viridis" if arr.min() >= 0 else "RdBu_r", aspect="auto",
                       vmin=None if arr.min() >= 0 else -np.abs(arr).max(), vmax=None if arr.min() >= 0 else np.abs(arr).max())
        for (i, j), v in np.ndenumerate(arr):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if arr.min() >= 0 and v < arr.max() * 0.6 else "k")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(arr.shape[1]))
        ax.set_yticks(range(arr.shape[0]))
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def hypothesis_bars(names, per_seed: np.ndarray, means, lows, highs, path, *, title: str = "") -> Path:
    """Horizontal bars (mean across seeds, 95% CI) with each seed as a dot."""
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * n + 1.2))
    y = np.arange(n)[::-1]
    means, lows, highs = map(lambda a: np.asarray(a, float), (means, lows, highs))
    err = np.vstack([means - np.nan_to_num(lows, nan=means), np.nan_to_num(highs, nan=means) - means])
    ax.barh(y, means, xerr=err, color="tab:blue", alpha=0.6, capsize=3)
    per_seed = np.asarray(per_seed, float)
    for s in range(per_seed.shape[1]):
        ax.scatter(per_seed[:, s], y, color="k", s=10, zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.axvline(1, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("proportion of loss explained (ratio of means)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def scatter(x, y, path, *, xlabel: str, ylabel: str, title: str = "", colors=None, labels=None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    x, y = np.asarray(x, float), np.asarray(y, float)
    if colors is None:
        ax.scatter(x, y, s=12)
    else:
        for c in sorted(set(colors)):
            m = np.array([cc == c for cc in colors])
            ax.scatter(x[m], y[m], s=12, label=labels.get(c, c) if labels else c, color=SLOT_COLORS.get(c))
        ax.legend(fontsize=7)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax.plot(lim, lim, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
