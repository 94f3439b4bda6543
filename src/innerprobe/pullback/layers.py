"""Layer attribution: take the gradient with respect to the value at a site instead of the inputs.

captum's ``LayerIntegratedGradients`` / ``LayerGradientXActivation`` idea (docs/pullback.md,
"Layer attribution"): a hook at the site replaces its value ``v`` by ``transform(v)``, a fresh leaf
that requires grad, and the attribution is read from the gradient at that leaf. Token models need
it (the inputs are integer ids; the embedding output is the first float tensor), and it works for
every method, pullbacks included. The site is any innerprobe site (``'transformer.wte'``,
``'L0.resid_pre'``, ``'blocks.0.mlp:input'``, a module object); a site that runs more than once
per forward is refused, and selectors (``[units=0:4]``, ``[pos=-1]``) zero the map outside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..core.hooks import HookSession
from ..core.sites import ResolvedSite, Site, resolve
from ..core.trees import get_element, replace_element
from ..errors import ConfigError, SiteError


def resolve_layer(model: nn.Module, layer, layer_input: bool = False) -> ResolvedSite:
    """One site for ``layer`` (site string, Site or module object); ``layer_input`` = captum's attribute_to_layer_input."""
    if isinstance(layer, nn.Module):
        names = [n for n, m in model.named_modules() if m is layer]
        if not names:
            raise SiteError(
                f"layer {type(layer).__name__} is not a submodule of the model",
                hint="pass a module of this model or a site string",
            )
        layer = names[0]
    if not isinstance(layer, (str, Site)):
        raise ConfigError(
            f"layer must be a site string, Site or submodule, got {type(layer).__name__}",
            hint="e.g. layer='transformer.wte', layer='L0.resid_pre' or layer=model.embed",
        )
    hits = resolve(model, layer)
    if len(hits) != 1:
        raise SiteError(
            f"layer {str(layer)!r} names {len(hits)} modules; layer attribution needs exactly one",
            hint=f"pick one of {', '.join(str(h) for h in hits[:5])}",
        )
    rs = hits[0]
    if layer_input and rs.site.port == "output":
        rs = ResolvedSite(rs.site.with_(port="input", index=None), rs.module)
    return rs


def default_layer(model: nn.Module) -> ResolvedSite | None:
    """The token-embedding site of a language model (HF ``get_input_embeddings()``, TransformerLens
    ``hook_embed``, else the canonical ``embed`` site), or None."""
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Module):
            return resolve_layer(model, emb)
    try:
        hits = resolve(model, "embed", allow_empty=True)
    except SiteError:
        hits = []
    return hits[0] if len(hits) == 1 else None


class LayerTap:
    """Inside ``with tap.active(transform):`` the site's value ``v`` is replaced by ``leaf = transform(v)``
    (detached, requires grad); ``tap.value`` is the original ``v`` and ``tap.leaf`` the leaf."""

    def __init__(self, model: nn.Module, rsite: ResolvedSite):
        self.model, self.rsite = model, rsite
        self.value: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None
        self.calls = 0

    def _swap(self, v, transform):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise SiteError(
                f"layer {self.rsite} holds {type(v).__name__ if not isinstance(v, torch.Tensor) else v.dtype}, "
                "not a float tensor",
                hint="pick a site whose value is a float tensor (e.g. an embedding output)",
            )
        self.calls += 1
        if self.calls > 1:
            raise SiteError(
                f"layer {self.rsite} runs more than once per forward pass; layer attribution needs a site that runs "
                f"once",
                hint="pick a module that is called once (a reused module's calls are not separate sites here)",
            )
        self.value = v.detach()
        new = transform(self.value) if transform is not None else self.value
        self.leaf = new.detach().clone().requires_grad_(True)
        return self.leaf

    @contextlib.contextmanager
    def active(self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.value = self.leaf = None
        self.calls = 0
        s = self.rsite.site
        with HookSession(self.model) as hs:
            if s.port == "output":

                def hook(module, args, output):
                    return replace_element(
                        output, s.index, self._swap(get_element(output, s.index, str(s)), transform), str(s)
                    )

                hs.forward_hook(self.rsite.module, hook)
            else:

                def pre(module, args, kwargs):
                    if isinstance(s.index, str):
                        kwargs = {**kwargs, s.index: self._swap(kwargs.get(s.index), transform)}
                        return args, kwargs
                    i = s.index or 0
                    if i >= len(args):
                        raise SiteError(
                            f"layer {s} has no positional input {i}", hint="name a keyword input as ':input.NAME'"
                        )
                    args = (*args[:i], self._swap(args[i], transform), *args[i + 1 :])
                    return args, kwargs

                hs.pre_hook(self.rsite.module, pre, with_kwargs=True)
            yield self
        if self.leaf is None:
            raise SiteError(
                f"layer {s} was never reached in the forward pass", hint="check the site name and that its module runs"
            )

    def mask(self, like: torch.Tensor) -> torch.Tensor | None:
        return self.rsite.site.mask_like(like)
