"""Figures for path patching: circuit diagrams, head heatmaps, hypothesis bars (matplotlib, lazy)."""

from __future__ import annotations

import math
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


#: Largest circuit figure, in inches (the report shows it at most this big; text stays legible).
MAX_SIZE = (10.0, 9.0)
SLOT_LABELS = {"q": "into a query", "k": "into a key", "v": "into a value", "in": "into the next node"}


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """Node positions in 2-D: one row per transformer layer (inputs below, the output on top); for graphs
    without layers (CNNs, fx graphs) nodes are placed by topological depth, wrapped into rows like text."""
    if all(graph.nodes[n].layer is not None or graph.nodes[n].kind in ("input", "output") for n in graph.order):
        return _layered(graph)
    depth: dict[str, int] = {}
    for n in graph.order:
        srcs = [e.src for e in graph.edges if e.dst == n]
        depth[n] = 1 + max((depth[s] for s in srcs), default=-1)
    levels: dict[int, list[str]] = {}
    for n in graph.order:
        levels.setdefault(depth[n], []).append(n)
    per_row = max(1, math.ceil(math.sqrt(len(levels) * 1.5)))
    pos = {}
    for d, names in levels.items():
        row, col = divmod(d, per_row)
        col = col if row % 2 == 0 else per_row - 1 - col  # snake, so consecutive levels stay adjacent
        for i, n in enumerate(names):
            pos[n] = ((col + 0.5) / per_row, float(row) + 0.35 * i / max(1, len(names)))
    return pos


def _layered(graph: Graph) -> dict[str, tuple[float, float]]:
    rows: dict[int, list[str]] = {}
    for n in graph.order:
        node = graph.nodes[n]
        r = 0 if node.kind == "input" else 10_000 if node.kind == "output" else 1 + node.layer
        rows.setdefault(r, []).append(n)
    pos = {}
    for y, r in enumerate(sorted(rows)):
        for i, n in enumerate(rows[r]):
            pos[n] = ((i + 1) / (len(rows[r]) + 1), float(y))
    return pos


def _arrow(ax, pos, e, **style) -> None:
    """An arrow from ``e.src`` to ``e.dst`` that starts and ends just off both labels."""
    (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
    x1 += {"q": -0.012, "k": 0.0, "v": 0.012}.get(e.slot, 0.0)
    if abs(y1 - y0) < 0.5:  # same row: run horizontally between the labels
        dx = 0.03 * np.sign(x1 - x0 or 1)
        start, end = (x0 + dx, y0), (x1 - dx, y1)
    else:
        dy = 0.12 * np.sign(y1 - y0)
        start, end = (x0, y0 + dy), (x1, y1 - dy)
    ax.annotate(
        "", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=SLOT_COLORS.get(e.slot, "0.35"), **style)
    )


def draw_circuit(graph: Graph, weights, path, *, title: str = "", reference=None) -> Path:
    """Edges of ``weights`` ({Edge: value} or a set of edges) drawn with width ~ |value|, coloured by the
    receiving slot; ``reference`` edges missing from it are dashed. The legend names only the slots this
    graph has (a CNN has no queries); the figure is at most MAX_SIZE inches (docs/patching.md)."""
    plt = _plt()
    if not isinstance(weights, dict):
        weights = {e: 1.0 for e in weights}
    pos = layout(graph)
    xs = len({round(x, 3) for x, _ in pos.values()})
    rows = max(y for _, y in pos.values()) + 1
    size = (min(MAX_SIZE[0], 3.0 + 0.9 * xs), min(MAX_SIZE[1], 1.6 + 1.1 * rows))
    fig, ax = plt.subplots(figsize=size)
    wmax = max([abs(v) for v in weights.values()] + [1e-12])
    for e, w in weights.items():
        _arrow(ax, pos, e, lw=0.6 + 4 * abs(w) / wmax, alpha=0.85, connectionstyle="arc3,rad=0.08")
    for e in set(reference or ()) - set(weights):
        _arrow(ax, pos, e, lw=0.8, ls="--", alpha=0.5)
    used = {e.src for e in weights} | {e.dst for e in weights}
    font = max(5, min(8, int(80 / max(xs, 1))))
    for n, (x, y) in pos.items():
        ax.text(
            x,
            y,
            n,
            ha="center",
            va="center",
            fontsize=font,
            bbox=dict(boxstyle="round", fc="lightyellow" if n in used else "white", ec="0.3" if n in used else "0.8"),
        )
    slots = sorted({e.slot for e in graph.edges}, key=list(SLOT_LABELS).index) if graph.edges else []
    attention = any(s in slots for s in "qkv")
    for s in slots:
        label = "into an MLP or the output" if s == "in" and attention else SLOT_LABELS.get(s, f"into {s}")
        ax.plot([], [], color=SLOT_COLORS.get(s, "0.35"), label=label)
    if reference is not None:
        ax.plot([], [], color="0.5", ls="--", label="reference edge not found")
    if slots:
        ax.legend(loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def head_heatmaps(panels: dict[str, np.ndarray], path, *, title: str = "") -> Path:
    """One [layer, head] heatmap per panel, annotated with values."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for ax, (name, arr) in zip(axes[0], panels.items()):
        arr = np.asarray(arr, float)
        im = ax.imshow(
            arr,
            cmap="viridis" if arr.min() >= 0 else "RdBu_r",
            aspect="auto",
            vmin=None if arr.min() >= 0 else -np.abs(arr).max(),
            vmax=None if arr.min() >= 0 else np.abs(arr).max(),
        )
        for (i, j), v in np.ndenumerate(arr):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if arr.min() >= 0 and v < arr.max() * 0.6 else "k",
            )
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
