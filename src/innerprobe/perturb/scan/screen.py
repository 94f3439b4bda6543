"""Stage (a) of the backdoor scan: the APEX screen (Ren, Luo, Li 2026, arXiv 2602.03586, claim D; docs/scan.md).

The paper's observable: at large activation noise a backdoored model's predictions concentrate on
its target class. Two statistics, both robust z-scores among the classes (a null fitted to the
model's own classes, no reference model):

* **histogram**: the large-noise class histogram pbar_sigma(c) (docs/apex.md) at sigma = 4, 16, 64 x
  the site's clean RMS, averaged over sigmas;
* **sink**: the share of inputs (whose clean class is not c) whose *escape class* is c, over a
  relative grid 0.02..200.

Where the noise enters is a site; the scan's keywords are functions that return sites:
:func:`input_site`, :func:`first_hidden`, :func:`last_hidden`, :func:`all_hidden`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...core.sites import Site
from ...errors import ConfigError, did_you_mean
from .. import readouts as ro
from ..engine import Engine, default_sites

HIST_SIGMAS = (4.0, 16.0, 64.0)
SINK_GRID = tuple(np.geomspace(0.02, 200, 17).tolist())
MAD_FLOOR = 0.02


def input_site(model: nn.Module) -> list[Site]:
    """The model's input (``:input``): input-space noise."""
    return [Site.parse(":input")]


def first_hidden(model: nn.Module) -> list[Site]:
    """The output of the first hidden nonlinearity module."""
    return default_sites(model)[:1]


def last_hidden(model: nn.Module) -> list[Site]:
    """The output of the last hidden nonlinearity module."""
    return default_sites(model)[-1:]


def all_hidden(model: nn.Module) -> list[Site]:
    """The outputs of every hidden nonlinearity module (APEX's default)."""
    return default_sites(model)


SITE_KEYWORDS = {"input": input_site, "first": first_hidden, "last": last_hidden, "all": all_hidden}


def scan_sites(model: nn.Module, which) -> list:
    """Sites for a keyword ('input', 'first', 'last', 'all') or a site spec (str, Site or list), passed through.

    A string that is neither a keyword nor a site of ``model`` is refused with the nearest names.
    """
    if isinstance(which, str) and which in SITE_KEYWORDS:
        return SITE_KEYWORDS[which](model)
    from ...core.sites import resolve

    specs = [which] if isinstance(which, (str, Site)) else list(which)
    if not specs:
        raise ConfigError("empty site list for the scan", hint=f"use one of {', '.join(SITE_KEYWORDS)} or a site spec")
    for s in specs:
        try:
            resolve(model, s)
        except Exception as e:  # a SiteError with the model's names: add the keywords
            hint = did_you_mean(str(s), list(SITE_KEYWORDS)) if isinstance(s, str) else None
            raise ConfigError(
                f"scan site {s!r} is neither a keyword nor a site of the model: {getattr(e, 'message', e)}",
                hint=f"keywords: {', '.join(SITE_KEYWORDS)}" + (f"; {hint}" if hint else ""),
            ) from None
    return specs


def robust_z(values, mad_floor: float = MAD_FLOOR) -> np.ndarray:
    """(v - median) / max(1.4826 MAD, mad_floor) along the last axis: a null fitted to the other classes."""
    v = np.asarray(values, float)
    med = np.median(v, -1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(v - med), -1, keepdims=True)
    return (v - med) / np.maximum(mad, mad_floor)


def histogram_shares(
    model, x: torch.Tensor, sites, *, sigmas=HIST_SIGMAS, samples: int = 16, seed: int = 0, chunk_rows: int = 8192
) -> tuple[np.ndarray, list[str]]:
    """Large-noise class histogram [S, C] at ``sigmas`` x clean RMS, and the resolved site names."""
    eng = Engine(model, x, sites=sites, samples=samples, relative=True, seed=seed, chunk_rows=chunk_rows)
    counts = eng.counts(np.asarray(sigmas, float))
    return ro.class_histogram(counts), [str(r) for r in eng.rsites]


def sink_shares(
    model, x: torch.Tensor, sites, *, sigmas=SINK_GRID, samples: int = 16, seed: int = 0, chunk_rows: int = 8192
) -> tuple[np.ndarray, list[str]]:
    """Per class c: the share of inputs (clean class != c) whose escape class is c [C], and the site names."""
    eng = Engine(model, x, sites=sites, samples=samples, relative=True, seed=seed, chunk_rows=chunk_rows)
    sig = np.asarray(sigmas, float)
    e = ro.escape_noise(eng.counts(sig), sig, eng.y0.numpy())
    y0 = eng.y0.numpy()
    ok = e.escape_class >= 0
    share = np.array(
        [float((e.escape_class[ok & (y0 != k)] == k).mean()) if (ok & (y0 != k)).any() else 0.0 for k in range(eng.C)]
    )
    return share, [str(r) for r in eng.rsites]


def screen(
    model,
    x: torch.Tensor,
    *,
    sites="input",
    samples: int = 16,
    sigmas=HIST_SIGMAS,
    seed: int = 0,
    chunk_rows: int = 8192,
) -> dict:
    """The APEX screen: per-class robust z of the large-noise histogram (noise at ``sites``) and of the sink share
    (noise at the input and after the last hidden nonlinearity; a class's sink z is the smaller of the two).

    Returns ``{"hist_z": [C], "hist_share": [S, C], "sink_z": [C], "sink_share": {view: [C]}, "z": [C], "sites": ...}``;
    ``z`` (the screen's class score) is the histogram z.
    """
    spec = scan_sites(model, sites)
    hist, hsites = histogram_shares(model, x, spec, sigmas=sigmas, samples=samples, seed=seed, chunk_rows=chunk_rows)
    hist_z = robust_z(hist).mean(0)
    sink, views = {}, {}
    for view in ("input", "last"):
        sink[view], views[view] = sink_shares(
            model, x, scan_sites(model, view), samples=samples, seed=seed, chunk_rows=chunk_rows
        )
    sink_z = np.min([robust_z(s) for s in sink.values()], 0)
    return {
        "z": hist_z,
        "hist_z": hist_z,
        "hist_share": hist,
        "sink_z": sink_z,
        "sink_share": sink,
        "sites": {"histogram": hsites, **{f"sink_{k}": v for k, v in views.items()}},
    }
