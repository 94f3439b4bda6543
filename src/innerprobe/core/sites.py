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
    L1.z[heads=2;pos=-1]            canonical transformer site from an adapter (innerprobe.core.adapters)

Selectors, separated by ``;``: ``heads=0,2``, ``pos=-1`` or ``positions=3:7``, ``units=0:16``.
``units`` index the last axis of tensors of rank <= 3 and the channel axis (1) of rank-4 feature
maps; ``pos`` indexes axis 1; ``heads`` index ``head_axis`` or, when ``n_heads`` is set, blocks of
the last axis split into ``n_heads`` equal parts. Adapters set those layout fields for you.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import SiteError, did_you_mean, nearest

Index = tuple[int, ...]


@dataclass(frozen=True)
class Site:
    """A place in a model. ``Site.parse('layer1:output[units=0:4]')`` or build it directly."""

    module: str
    port: str = "output"
    index: int | str | None = None
    heads: Index | None = None
    positions: Index | None = None
    units: Index | None = None
    n_heads: int | None = None  # layout: last axis is n_heads blocks (e.g. o_proj / c_proj input)
    head_axis: int | None = None  # layout: heads live on this axis (e.g. [B, T, H, D] hook tensors)
    chunk: tuple[int, int] | None = None  # layout: (i, n): the i-th of n equal parts of the last axis
    alias: str | None = field(default=None, compare=False)  # canonical name it came from, if any

    def __post_init__(self):
        if self.port not in ("output", "input"):
            raise SiteError(f"site port must be 'output' or 'input', got {self.port!r}")

    # ----------------------------------------------------------------- text form
    @classmethod
    def parse(cls, text: "str | Site") -> "Site":
        if isinstance(text, Site):
            return text
        if not isinstance(text, str):
            raise SiteError(f"a site is a string or Site, got {type(text).__name__}")
        m = re.fullmatch(r"\s*([^:\[\]]*?)\s*(?::\s*(output|input)(?:\.([A-Za-z_0-9]+))?)?\s*(?:\[(.*)\])?\s*", text)
        if not m:
            raise SiteError(
                f"cannot parse site {text!r}",
                hint="write MODULE[:output|:input][.ELEMENT][[heads=..;pos=..;units=..]], e.g. 'features.3:output[units=0:8]'",
            )
        module, port, element, selectors = m.groups()
        index: int | str | None = None
        if element is not None:
            index = int(element) if element.lstrip("-").isdigit() else element
        kwargs: dict = {}
        for part in (selectors or "").split(";"):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise SiteError(f"selector {part!r} in site {text!r} needs the form key=values", hint="e.g. heads=0,2 or pos=-1 or units=0:16")
            key, value = (s.strip() for s in part.split("=", 1))
            key = {"pos": "positions", "position": "positions", "head": "heads", "unit": "units"}.get(key, key)
            if key not in ("heads", "positions", "units"):
                raise SiteError(f"unknown selector {key!r} in site {text!r}", hint="selectors are heads, pos (positions) and units")
            kwargs[key] = _parse_indices(value, text)
        return cls(module=module, port=port or "output", index=index, **kwargs)

    def __str__(self) -> str:
        text = self.alias or self.module
        if self.alias is None and (self.port != "output" or self.index is not None):
            text += f":{self.port}" + (f".{self.index}" if self.index is not None else "")
        sel = [f"{k}={_fmt_indices(v)}" for k, v in (("heads", self.heads), ("pos", self.positions), ("units", self.units)) if v is not None]
        return text + (f"[{';'.join(sel)}]" if sel else "")

    def with_(self, **changes) -> "Site":
        return dataclasses.replace(self, **changes)

    @property
    def selects(self) -> bool:
        return any(v is not None for v in (self.heads, self.positions, self.units, self.chunk))

    # ----------------------------------------------------------------- selection
    def mask_like(self, value: torch.Tensor) -> torch.Tensor | None:
        """A boolean mask, broadcastable to ``value``, of the selected elements; None means all."""
        if not self.selects:
            return None
        shape = value.shape
        mask = torch.ones(shape, dtype=torch.bool, device=value.device)
        nd = value.dim()

        def restrict(axis: int, idx: Sequence[int], size: int, what: str) -> torch.Tensor:
            keep = torch.zeros(size, dtype=torch.bool, device=value.device)
            for i in idx:
                if not -size <= i < size:
                    raise SiteError(f"{what} index {i} out of range for size {size} at site {self}")
                keep[i] = True
            view = [1] * nd
            view[axis] = size
            return keep.view(view)

        last = shape[-1]
        if self.chunk is not None:
            i, n = self.chunk
            if last % n:
                raise SiteError(f"site {self}: last axis {last} does not split into {n} parts")
            w = last // n
            mask = mask & restrict(nd - 1, range(i * w, (i + 1) * w), last, "chunk")
        if self.positions is not None:
            if nd < 3:
                raise SiteError(f"site {self} selects positions but its tensor has shape {tuple(shape)}", hint="positions need a [batch, pos, ...] tensor")
            mask = mask & restrict(1, self.positions, shape[1], "position")
        if self.units is not None:
            axis = 1 if nd == 4 else nd - 1
            mask = mask & restrict(axis, self.units, shape[axis], "unit")
        if self.heads is not None:
            if self.n_heads is not None:
                width = last // (self.chunk[1] if self.chunk else 1)
                offset = (self.chunk[0] * width) if self.chunk else 0
                if width % self.n_heads:
                    raise SiteError(f"site {self}: width {width} does not split into {self.n_heads} heads")
                d_head = width // self.n_heads
                cols = [offset + h * d_head + j for h in _norm(self.heads, self.n_heads) for j in range(d_head)]
                mask = mask & restrict(nd - 1, cols, last, "head")
            elif self.head_axis is not None:
                mask = mask & restrict(self.head_axis % nd, self.heads, shape[self.head_axis], "head")
            else:
                raise SiteError(
                    f"site {self} selects heads but has no head layout",
                    hint="use a canonical transformer site (e.g. 'L0.z[heads=1]') or set Site(n_heads=...) / Site(head_axis=...)",
                )
        return mask


def _norm(idx: Iterable[int], size: int) -> list[int]:
    out = []
    for i in idx:
        if not -size <= i < size:
            raise SiteError(f"head {i} out of range for {size} heads")
        out.append(i % size)
    return out


def _parse_indices(value: str, text: str) -> Index:
    out: list[int] = []
    try:
        for tok in value.split(","):
            tok = tok.strip()
            if ":" in tok:
                a, b = tok.split(":")
                out.extend(range(int(a), int(b)))
            elif tok:
                out.append(int(tok))
    except ValueError:
        raise SiteError(f"bad index list {value!r} in site {text!r}", hint="use integers, commas and ranges: 0,2,5:8") from None
    if not out:
        raise SiteError(f"empty index list in site {text!r}")
    return tuple(out)


def _fmt_indices(idx: Index) -> str:
    return ",".join(str(i) for i in idx)


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

    Exact names win; then canonical aliases from the model's adapter; then globs; ``@Type`` and
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
    site = Site.parse(spec)
    modules = dict(model.named_modules())
    name = site.module
    if name in (".", "<model>"):
        name = ""
    if name in modules:
        return [ResolvedSite(site.with_(module=name), modules[name])]
    if name.startswith("@"):
        tname = name[1:]
        return _by_type(model, site, lambda m: type(m).__name__ == tname or f"{type(m).__module__}.{type(m).__name__}".endswith(tname), allow_empty)
    from .adapters import canonical_sites  # lazy: adapters import this module

    canon = canonical_sites(model)
    if name in canon:
        base = canon[name]
        merged = base.with_(
            heads=site.heads if site.heads is not None else base.heads,
            positions=site.positions if site.positions is not None else base.positions,
            units=site.units if site.units is not None else base.units,
            alias=name,
        )
        return [ResolvedSite(merged, modules[base.module])]
    if any(c in name for c in "*?"):
        hits = [n for n in modules if n and fnmatch.fnmatchcase(n, name)]
        if hits or allow_empty:
            return [ResolvedSite(site.with_(module=n), modules[n]) for n in hits]
        raise SiteError(f"site pattern {name!r} matches no module", hint=did_you_mean(name.replace("*", ""), modules))
    if allow_empty:
        return []
    raise SiteError(f"no module named {name!r} in {type(model).__name__}", hint=did_you_mean(name, list(modules) + list(canon)))


def _by_type(model, site: Site, pred, allow_empty: bool) -> list[ResolvedSite]:
    hits = [ResolvedSite(site.with_(module=n), m) for n, m in model.named_modules() if pred(m)]
    if not hits and not allow_empty:
        types = sorted({type(m).__name__ for m in model.modules()})
        raise SiteError(f"no module of type {site.module[1:]!r} in {type(model).__name__}", hint=did_you_mean(site.module[1:], types) + f" (types present: {', '.join(types)})")
    return hits


def suggest(model: nn.Module, name: str, n: int = 5) -> list[str]:
    return nearest(name, module_names(model), n)
