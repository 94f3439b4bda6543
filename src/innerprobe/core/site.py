"""The :class:`Site` value: *where* in a model, as data (parsing, printing, selection masks).

Resolution against a model (exact names, canonical family names, TransformerLens hook names,
globs, ``@Type``) lives in :mod:`innerprobe.core.sites`, which re-exports :class:`Site`; this
module imports nothing from the family registry, so families can build sites without a cycle.
The text grammar is documented in :mod:`innerprobe.core.sites` and docs/sites.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import SiteError

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
    part: tuple[int, int] | None = None  # layout: (i, n): the i-th of n equal parts of each head's block (GPT-NeoX qkv)
    alias: str | None = field(default=None, compare=False)  # canonical name it came from, if any

    def __post_init__(self):
        if self.port not in ("output", "input"):
            raise SiteError(f"site port must be 'output' or 'input', got {self.port!r}")

    # ----------------------------------------------------------------- text form
    @classmethod
    def parse(cls, text: str | Site) -> Site:
        if isinstance(text, Site):
            return text
        if not isinstance(text, str):
            raise SiteError(f"a site is a string or Site, got {type(text).__name__}")
        m = re.fullmatch(r"\s*([^:\[\]]*?)\s*(?::\s*(output|input)(?:\.([A-Za-z_0-9]+))?)?\s*(?:\[(.*)\])?\s*", text)
        if not m:
            raise SiteError(
                f"cannot parse site {text!r}",
                hint="write MODULE[:output|:input][.ELEMENT][[heads=..;pos=..;units=..]], e.g. "
                "'features.3:output[units=0:8]'",
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
                raise SiteError(
                    f"selector {part!r} in site {text!r} needs the form key=values",
                    hint="e.g. heads=0,2 or pos=-1 or units=0:16",
                )
            key, value = (s.strip() for s in part.split("=", 1))
            key = {"pos": "positions", "position": "positions", "head": "heads", "unit": "units"}.get(key, key)
            if key not in ("heads", "positions", "units"):
                raise SiteError(
                    f"unknown selector {key!r} in site {text!r}", hint="selectors are heads, pos (positions) and units"
                )
            kwargs[key] = _parse_indices(value, text)
        return cls(module=module, port=port or "output", index=index, **kwargs)

    def __str__(self) -> str:
        text = self.alias or self.module
        if self.alias is None and (self.port != "output" or self.index is not None):
            text += f":{self.port}" + (f".{self.index}" if self.index is not None else "")
        sel = [
            f"{k}={_fmt_indices(v)}"
            for k, v in (("heads", self.heads), ("pos", self.positions), ("units", self.units))
            if v is not None
        ]
        return text + (f"[{';'.join(sel)}]" if sel else "")

    def with_(self, **changes) -> Site:
        return dataclasses.replace(self, **changes)

    @property
    def selects(self) -> bool:
        return any(v is not None for v in (self.heads, self.positions, self.units, self.chunk, self.part))

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
        if self.chunk is not None or self.part is not None:
            mask = mask & restrict(nd - 1, self._layout_columns(last, None), last, "chunk")
        if self.positions is not None:
            if nd < 3:
                raise SiteError(
                    f"site {self} selects positions but its tensor has shape {tuple(shape)}",
                    hint="positions need a [batch, pos, ...] tensor",
                )
            mask = mask & restrict(1, self.positions, shape[1], "position")
        if self.units is not None:
            axis = 1 if nd == 4 else nd - 1
            mask = mask & restrict(axis, self.units, shape[axis], "unit")
        if self.heads is not None:
            if self.n_heads is not None:
                mask = mask & restrict(nd - 1, self._layout_columns(last, self.heads), last, "head")
            elif self.head_axis is not None:
                mask = mask & restrict(self.head_axis % nd, self.heads, shape[self.head_axis], "head")
            else:
                raise SiteError(
                    f"site {self} selects heads but has no head layout",
                    hint="use a canonical transformer site (e.g. 'L0.z[heads=1]') or set Site(n_heads=...) / "
                    "Site(head_axis=...)",
                )
        return mask

    def _layout_columns(self, last: int, heads) -> list[int]:
        """Columns of the last axis selected by the layout (chunk, heads of ``n_heads``, part)."""
        i, n = self.chunk or (0, 1)
        if last % n:
            raise SiteError(f"site {self}: last axis {last} does not split into {n} parts")
        width = last // n
        offset = i * width
        H = self.n_heads or 1
        if width % H:
            raise SiteError(f"site {self}: width {width} does not split into {H} heads")
        block = width // H
        pi, pn = self.part or (0, 1)
        if block % pn:
            raise SiteError(f"site {self}: head width {block} does not split into {pn} parts")
        d = block // pn
        hs = range(H) if heads is None else _norm(heads, H)
        return [offset + h * block + pi * d + j for h in hs for j in range(d)]


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
        raise SiteError(
            f"bad index list {value!r} in site {text!r}", hint="use integers, commas and ranges: 0,2,5:8"
        ) from None
    if not out:
        raise SiteError(f"empty index list in site {text!r}")
    return tuple(out)


def _fmt_indices(idx: Index) -> str:
    return ",".join(str(i) for i in idx)
