"""What a model family is: one detection giving canonical sites, hook-name aliases and a graph builder.

A family module defines ``FAMILY = Family(...)`` and is listed once in
:data:`innerprobe.core.families.REGISTRY`. :func:`check_graph` is the self-check every
transformer graph passes when built: its forward pass on a probe input must equal the model's
own (fp32, 1e-4), else a :class:`~innerprobe.errors.ModelError` names the config options the
builder does not model. See docs/sites.md and docs/patching.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ModelError
from ..site import Site
from ..trees import logits_of

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Family:
    """``matches(model)`` detects the family; ``sites(model)`` gives canonical name -> Site;
    ``graph(model)`` builds the unchecked graph; ``probe(model)`` an input for the self-check;
    ``aliases(model)`` extra names (TransformerLens hook names) -> canonical name or Site;
    ``options(model)`` the config options worth naming when the check fails."""

    name: str
    matches: Callable[[nn.Module], bool]
    sites: Callable[[nn.Module], dict]
    graph: Callable | None = None
    probe: Callable | None = None
    aliases: Callable | None = None
    options: Callable | None = None
    description: str = ""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode and give every module its ``training`` flag back (core.hooks.preserved_state
    without the import: core.hooks resolves sites, which imports this package)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def grab_output(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """The output of ``module`` during ``run()``, by a forward hook removed on exit (also on failure)."""
    box: dict = {}
    handle = module.register_forward_hook(lambda mod, args, out: box.__setitem__("v", out))
    try:
        run()
    finally:
        handle.remove()
    if "v" not in box:
        raise ModelError(f"{type(module).__name__} did not run while building a graph value")
    return box["v"]


def token_probe(vocab: int, n_ctx: int, *, batch: int = 2, length: int = 6) -> torch.Tensor:
    """Fixed random token ids [batch, min(length, n_ctx)] (seed 0) for the graph self-check."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, max(1, min(length, n_ctx))), generator=g)


def check_graph(graph, model: nn.Module, x, *, family: str, options: dict | None = None):
    """Raise ModelError unless ``graph.forward(x)`` equals ``model(x)`` to 1e-4 (relative to the
    logits' scale). Returns the graph with the measured difference in its notes."""
    with eval_mode(model), torch.no_grad():
        ref = logits_of(model(x))
        got = graph.forward(x)
    if not isinstance(ref, torch.Tensor) or got.shape != ref.shape:
        raise ModelError(
            f"the {family} graph gives shape {tuple(got.shape)}, the model {tuple(getattr(ref, 'shape', ()))}"
        )
    diff = float((got.float() - ref.float()).abs().max())
    scale = max(1.0, float(ref.float().abs().max()))
    if not diff <= TOLERANCE * scale:  # also catches NaN
        named = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items()) or "none recognised"
        raise ModelError(
            f"the {family} graph of {type(model).__name__} differs from the model's own forward by {diff:.3g} "
            f"on a probe input; config options that may be unsupported: {named}",
            hint="build the model without these options, or patch nodes by site (innerprobe.patch.patch_run)",
        )
    graph.notes.append(f"checked against the model on a probe input: max |graph - model| = {diff:.2g}")
    return graph


def nondefault(cfg, defaults: dict) -> dict:
    """The entries of ``defaults`` whose value in ``cfg`` differs (for naming options in errors)."""
    return {k: getattr(cfg, k, None) for k, v in defaults.items() if getattr(cfg, k, v) != v}


def head_site(layer: int, what: str, head: int) -> str:
    return str(Site(f"L{layer}.{what}", heads=(head,)))
