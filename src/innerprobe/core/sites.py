"""Sites: the one way to say *where* in a model, shared by every method.

A site names a module (exact dotted name, glob, or ``@TypeName``), a port (``output`` or
``input``), optionally one element of a tuple / dict / ModelOutput (``output.0``,
``output.logits``, ``input.1``, ``input.hidden_states`` for a keyword argument), and optionally a
selection of heads, positions or units. The short string form used by the CLI and config files::

    features.3                      output of module features.3 (port defaults to output)
    features.3:input                its first positional input
    transformer.h.*.attn:output.0   glob; first element of a tuple output
    @ReLU                           every module of type ReLU (or @torch.nn.ReLU)
    blocks.0.attn.o_proj:input[heads=0,3]   per-head output (see n_heads below)
    blocks.*.mlp                    glob over dotted names (* and ?; brackets are reserved for selectors)
    :input                          the model's own input ('' is the root module)
    L1.z[heads=2;pos=-1]            canonical transformer site from the model's family (innerprobe.core.families)
    blocks.1.attn.hook_z            a TransformerLens hook name (HookedTransformer and TransformerBridge)

Selectors, separated by ``;``: ``heads=0,2``, ``pos=-1`` or ``positions=3:7``, ``units=0:16``.
``units`` index the last axis of tensors of rank <= 3 and the channel axis (1) of rank-4 feature
maps; ``pos`` indexes axis 1; ``heads`` index ``head_axis`` or, when ``n_heads`` is set, blocks of
the last axis split into ``n_heads`` equal parts. Families set those layout fields for you (docs/sites.md).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from ..errors import SiteError, did_you_mean, nearest
from . import families
from .functional import format_call, split_call
from .site import Index, Site

__all__ = ["Index", "ResolvedSite", "Site", "module_names", "resolve", "suggest"]


# --------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class ResolvedSite:
    """A site bound to one concrete module of one model."""

    site: Site  # with .module the exact dotted name
    module: nn.Module = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.site.module

    def __str__(self) -> str:
        return str(self.site)


SiteLike = "str | Site | type[nn.Module]"


def module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules()]


def resolve(model: nn.Module, spec, *, allow_empty: bool = False) -> list[ResolvedSite]:
    """Resolve one site spec (string, Site, module type, or a list of those) to concrete modules.

    The family's canonical names and TransformerLens hook names come first
    (:func:`innerprobe.core.families.lookup`: a hook name resolves to the canonical site of the
    same place, with its head layout); then exact module names; then globs; ``@Type`` and
    classes match by module type. A spec that matches nothing raises :class:`SiteError` listing
    the nearest real names.
    """
    if isinstance(spec, (list, tuple)):
        out: list[ResolvedSite] = []
        for s in spec:
            for r in resolve(model, s, allow_empty=allow_empty):
                if r not in out:
                    out.append(r)
        return out
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        site = Site(module="@" + spec.__name__)
        return _by_type(model, site, lambda m: isinstance(m, spec), allow_empty)
    if isinstance(spec, str) and spec.lstrip().startswith("fn:"):
        spec = "/" + spec.lstrip()[3:]  # fn:relu#0 = /relu#0, a function called in the root's forward
    site = Site.parse(spec)
    modules = dict(model.named_modules())
    name = site.module
    if name in (".", "<model>"):
        name = ""
    if "/" in name or "#" in name:
        return _resolve_call(model, site, allow_empty)
    hit = families.lookup(model, name) if site.port == "output" and site.index is None else None
    if hit is not None:
        canon, base = hit
        merged = base.with_(
            heads=site.heads if site.heads is not None else base.heads,
            positions=site.positions if site.positions is not None else base.positions,
            units=site.units if site.units is not None else base.units,
            alias=canon,
        )
        if "/" in base.module or "#" in base.module:  # a functional-call site (e.g. an eager attention softmax)
            return [
                ResolvedSite(r.site.with_(alias=canon), r.module) for r in _resolve_call(model, merged, allow_empty)
            ]
        if base.module not in modules:
            raise SiteError(
                f"site {canon} maps to module {base.module!r}, which {type(model).__name__} does not have",
                hint="the model was changed after it was built; rebuild it or name the module directly",
            )
        return [ResolvedSite(merged, modules[base.module])]
    if name in modules:
        return [ResolvedSite(site.with_(module=name), modules[name])]
    if name.startswith("@"):
        tname = name[1:]
        return _by_type(
            model,
            site,
            lambda m: type(m).__name__ == tname or f"{type(m).__module__}.{type(m).__name__}".endswith(tname),
            allow_empty,
        )
    if any(c in name for c in "*?"):
        hits = [n for n in modules if n and fnmatch.fnmatchcase(n, name)]
        if hits or allow_empty:
            return [ResolvedSite(site.with_(module=n), modules[n]) for n in hits]
        raise SiteError(f"site pattern {name!r} matches no module", hint=did_you_mean(name.replace("*", ""), modules))
    if allow_empty:
        return []
    raise SiteError(
        f"no module named {name!r} in {type(model).__name__}",
        hint=did_you_mean(name, list(modules) + list(families.canonical_sites(model))),
    )


def _resolve_call(model: nn.Module, site: Site, allow_empty: bool) -> list[ResolvedSite]:
    """``MODULE#K`` / ``MODULE/FUNCTION[#K]`` (core/functional.py): resolve MODULE, keep the call part in the name."""
    base, function, call = split_call(site.module)
    hits = resolve(model, site.with_(module=base, alias=None), allow_empty=allow_empty)
    return [ResolvedSite(r.site.with_(module=format_call(r.name, function, call), alias=None), r.module) for r in hits]


def _by_type(model, site: Site, pred, allow_empty: bool) -> list[ResolvedSite]:
    hits = [ResolvedSite(site.with_(module=n), m) for n, m in model.named_modules() if pred(m)]
    if not hits and not allow_empty:
        types = sorted({type(m).__name__ for m in model.modules()})
        raise SiteError(
            f"no module of type {site.module[1:]!r} in {type(model).__name__}",
            hint=did_you_mean(site.module[1:], types) + f" (types present: {', '.join(types)})",
        )
    return hits


def suggest(model: nn.Module, name: str, n: int = 5) -> list[str]:
    return nearest(name, module_names(model), n)
