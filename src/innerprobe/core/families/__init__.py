"""The model-family registry: one detection gives a model's canonical sites, its extra site names
(TransformerLens hook names) and its graph builder.

Families, tried in order (the first whose ``matches(model)`` is true wins):

=====================  ==========================================================================
``zoo``                innerprobe's zoo transformer (duck-typed: ``canonical_sites()`` + ``attn.mix``)
``transformer-bridge`` TransformerLens ``TransformerBridge`` (graph via the wrapped HF model)
``transformer-lens``   TransformerLens ``HookedTransformer``
``hf-gpt2``            Hugging Face GPT-2 (``model_type == "gpt2"``)
``llama``              Hugging Face Llama, Mistral, Qwen2, Qwen3 (RMSNorm, rotary, GQA, SwiGLU)
``gpt-neox``           Hugging Face GPT-NeoX / Pythia (parallel attention + MLP, partial rotary)
``own-sites``          any model with its own ``canonical_sites()`` method (fx graph)
``fx``                 anything torch.fx traces (no canonical sites)
=====================  ==========================================================================

Adding a family is adding one module that defines ``FAMILY = Family(...)`` (see :mod:`.base`) and
listing it in :data:`REGISTRY`. Canonical names per layer ``l``: ``embed``, ``pos_embed``,
``logits``, ``L{l}.resid_pre|resid_mid|resid_post``, ``L{l}.q|k|v|z`` (per head),
``L{l}.pattern``, ``L{l}.attn_out``, ``L{l}.mlp_in|mlp_post|mlp_out``; docs/sites.md lists what
each family exposes. :func:`build_graph` checks every transformer graph against its model.
"""

from __future__ import annotations

import re

from torch import nn

from ...errors import ConfigError, ModelError
from ..dag import Graph
from ..site import Site
from . import bridge, fx, hf_gpt2, llama, neox, tl, zoo
from .base import Family, check_graph
from .fx import fx_graph

OWN_SITES = Family(
    "own-sites",
    lambda m: callable(getattr(m, "canonical_sites", None)),
    lambda m: dict(m.canonical_sites()),
    fx_graph,
    description="a model with its own canonical_sites()",
)

REGISTRY: tuple[Family, ...] = (
    zoo.FAMILY,
    bridge.FAMILY,
    tl.FAMILY,
    hf_gpt2.FAMILY,
    llama.FAMILY,
    neox.FAMILY,
    OWN_SITES,
    fx.FAMILY,
)
LEGACY_KINDS = {"transformer": "zoo", "tl": "transformer-lens", "hf": "hf-gpt2"}

__all__ = ["REGISTRY", "Family", "build_graph", "canonical_sites", "detect", "family", "lookup"]


def detect(model: nn.Module) -> Family:
    """The model's family (``fx`` when nothing more specific matches)."""
    return next(f for f in REGISTRY if f.matches(model))


def family(name: str) -> Family:
    name = LEGACY_KINDS.get(name, name)
    for f in REGISTRY:
        if f.name == name:
            return f
    raise ConfigError(f"unknown model family {name!r}", hint=f"one of auto, {', '.join(f.name for f in REGISTRY)}")


def canonical_sites(model: nn.Module) -> dict[str, Site]:
    """Canonical name -> Site for ``model``; empty if its family has none."""
    return detect(model).sites(model)


def lookup(model: nn.Module, name: str) -> tuple[str, Site] | None:
    """(canonical name, Site) for a canonical name or a family alias (TransformerLens hook name)."""
    fam = detect(model)
    canon = fam.sites(model)
    if name in canon:
        return name, canon[name]
    short = graph_alias(name)
    if short is not None and short[0] in canon:
        base, heads = short
        site = canon[base] if heads is None else canon[base].with_(heads=heads)
        return base, site
    if fam.aliases is None:
        return None
    hit = fam.aliases(model).get(name)
    if hit is None:
        return None
    if isinstance(hit, str):
        return hit, canon[hit]
    return name, hit


def graph_alias(name: str) -> tuple[str, tuple | None] | None:
    """A graph node's short name as its canonical site: ``a1.2`` -> (``L1.z``, (2,)), ``m0`` -> ``L0.mlp_out``,
    ``pos`` -> ``pos_embed``, ``out`` -> ``logits`` (so resolve() and the graph share one vocabulary)."""
    m = re.fullmatch(r"a(\d+)\.(\d+)", name)
    if m:
        return f"L{m.group(1)}.z", (int(m.group(2)),)
    m = re.fullmatch(r"m(\d+)", name)
    if m:
        return f"L{m.group(1)}.mlp_out", None
    return {"pos": ("pos_embed", None), "out": ("logits", None)}.get(name)


def build_graph(model: nn.Module, kind: str = "auto", *, check: bool = True, example=None) -> Graph:
    """The computational graph of ``model`` from its family (``kind`` = auto or a family name).

    Transformer graphs are checked against ``model`` on a probe input (or ``example``): a
    mismatch raises ModelError naming the config options the builder may not model. fx graphs
    are checked when ``example`` is given (and by ``prepare()`` on the reference input).
    """
    fam = detect(model) if kind == "auto" else family(kind)
    if kind != "auto" and fam.name != "fx" and not fam.matches(model):  # e.g. --graph hf on a plain nn.Sequential
        raise ModelError(
            f"graph builder {kind!r} does not fit this {type(model).__name__}: it is not a {fam.name} model",
            hint=f"use kind 'auto' (--graph auto), which detects the family: {detect(model).name} here",
        )
    if fam.graph is None:
        raise ConfigError(f"family {fam.name} has no graph builder")
    graph = fam.graph(model)
    x = example if example is not None else (fam.probe(model) if fam.probe is not None else None)
    if check and x is not None:
        check_graph(graph, model, x, family=fam.name, options=fam.options(model) if fam.options else None)
    return graph
