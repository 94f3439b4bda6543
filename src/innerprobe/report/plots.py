"""The report's plotting helpers: the base helpers of :mod:`innerprobe.core.plotting`, re-exported.

The helpers live in ``core`` so that method packages can draw without importing the report.
"""

from ..core.plotting import PALETTE, heatmap, image_grid, line_plot, new_figure, savefig, style_axes

__all__ = ["PALETTE", "heatmap", "image_grid", "line_plot", "new_figure", "savefig", "style_axes"]
