"""Shared path-patching workflows, used by the ``patch`` command and the path-patching studies (docs/patching.md).

* :func:`proportion_ci` -- proportion of the effect explained by a hypothesis H against a baseline H0
  (Goldowsky-Dill et al. 2023, arXiv 2304.05969, Sec. 2): ``(mean UE(H0) - mean UE(H)) / mean UE(H0)``, a
  ratio of means, with a percentile bootstrap over the (x_r, x_c) pairs (:func:`innerprobe.core.stats.bootstrap`).
* :func:`edge_report` -- every edge's exact single-edge effect, its EAP and EAP-IG estimates (Syed et al. 2023;
  Hanna et al. 2024) and their Spearman rank agreement with the exact effects, overall and per receiving slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.graph import Graph
from ..core.stats import CI, bootstrap
from ..errors import ConfigError
from .discovery import single_edge_effects
from .eap import eap_scores
from .metrics import proportion
from .path import Runs


def _ratio_of_means(ue, ue0, axis=-1):
    den = np.mean(ue0, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (den - np.mean(ue, axis=axis)) / den


def proportion_ci(ue, ue0, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CI:
    """Proportion explained (ratio of means) with a paired percentile bootstrap CI over pairs.

    ``ue``, ``ue0``: per-pair unexplained effects of H and of the baseline H0. A baseline without effect
    is refused (:func:`innerprobe.patch.metrics.proportion`); resamples whose baseline mean is 0 are dropped.
    """
    ue, ue0 = np.asarray(ue, float), np.asarray(ue0, float)
    est = proportion(ue, ue0)  # checks shapes and a non-zero baseline effect
    ci = bootstrap(ue, _ratio_of_means, paired=(ue0,), n_resamples=n_boot, seed=seed, level=level)
    return CI(est, ci.lo, ci.hi, level, ci.method, ci.n)


@dataclass
class EdgeReport:
    """Per-edge exact effects and gradient estimates (NaN-free tensors, or None when not computed)."""

    graph: Graph
    exact: torch.Tensor
    eap: torch.Tensor | None
    eap_ig: torch.Tensor | None
    ig_steps: int

    @property
    def slots(self) -> np.ndarray:
        """The receiving slot of each edge (``q``/``k``/``v``/... or ``out`` for edges into the output)."""
        return np.array([e.slot if e.dst != "out" else "out" for e in self.graph.edges])

    def correlations(self) -> list[dict]:
        """Spearman rho of EAP and EAP-IG with the exact effects: ``{"slot", "n", "eap", "eap_ig"}``, slot
        ``"all"`` first, then each slot with more than two edges."""
        from scipy.stats import spearmanr

        if self.eap is None:
            return []
        slots = self.slots
        out = []
        for s in ["all"] + [s for s in dict.fromkeys(slots) if (slots == s).sum() > 2]:
            m = np.ones(len(slots), bool) if s == "all" else slots == s
            rho = [float(spearmanr(self.exact[m], est[m])[0]) for est in (self.eap, self.eap_ig)]
            out.append({"slot": str(s), "n": int(m.sum()), "eap": rho[0], "eap_ig": rho[1]})
        return out

    def order(self) -> torch.Tensor:
        """Edge indices by decreasing |exact effect|."""
        return torch.argsort(self.exact.abs(), descending=True)

    def table(self) -> list[dict]:
        """One record per edge: ``{"edge", "slot", "exact", "eap", "eap_ig"}`` (None where not computed)."""

        def val(t, i):
            return None if t is None else float(t[i])

        return [
            {
                "edge": str(e),
                "slot": str(s),
                "exact": float(self.exact[i]),
                "eap": val(self.eap, i),
                "eap_ig": val(self.eap_ig, i),
            }
            for i, (e, s) in enumerate(zip(self.graph.edges, self.slots))
        ]


def edge_report(
    graph: Graph,
    runs: Runs,
    metric: Callable,
    *,
    ig_steps: int = 10,
    estimates: bool = True,
    progress: bool = False,
    exact: torch.Tensor | None = None,
) -> EdgeReport:
    """Exact single-edge effects (every edge patched alone, batched) and, if ``estimates``, EAP and EAP-IG
    with ``ig_steps`` interpolation steps, all for the per-example ``metric`` of the patched output.
    ``exact`` takes effects computed elsewhere (e.g. sharded on an executor, docs/scale.md), in edge order."""
    if exact is None:
        exact = single_edge_effects(graph, runs, metric, progress=progress)
    elif len(exact) != len(graph.edges):
        raise ConfigError(f"exact has {len(exact)} effects for {len(graph.edges)} edges")
    exact = torch.as_tensor(exact, dtype=torch.float32)
    eap = eap_scores(graph, runs, metric) if estimates else None
    eap_ig = eap_scores(graph, runs, metric, ig_steps=ig_steps) if estimates else None
    return EdgeReport(graph, exact, eap, eap_ig, ig_steps)
