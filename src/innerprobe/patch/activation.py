"""Activation (node) patching on any model, by sites (Vig et al. 2020; Meng et al. 2022).

Run the *base* input with the value at a site replaced by its value on the *source* input. With
base = x_r and source = x_c this is the path hypothesis "every path that avoids the site"
(Goldowsky-Dill et al. 2023, §3; tested against :func:`innerprobe.patch.path.avoid_node`).
TransformerLens's patching utilities use base = corrupted, source = clean ("denoising"): swap
the arguments to match them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..core.checks import check_inputs
from ..core.hooks import HookSession
from ..core.sites import Site, resolve
from ..core.trees import logits_of
from ..errors import ConfigError


@torch.no_grad()
def patch_run(model: nn.Module, site, base, source, *, source_value: torch.Tensor | None = None):
    """Model output on ``base`` with the value at ``site`` (selectors respected) taken from
    ``source`` (or from ``source_value``, a tensor captured earlier)."""
    base = check_inputs(base, model, name="base inputs")  # shape/dtype/device/NaN: one innerprobe error line
    rs = resolve(model, site)
    if len(rs) != 1:
        raise ConfigError(
            f"site {site} resolves to {len(rs)} places; patch one at a time", hint=", ".join(str(r) for r in rs[:5])
        )
    if source_value is None:
        with HookSession(model, eval=True) as hs:
            cap = hs.capture(rs[0])[0]
            hs.run(source)
        source_value = cap.value
    with HookSession(model, eval=True) as hs:

        def put(value, _rs):
            if value.shape != source_value.shape:
                raise ConfigError(
                    f"site {rs[0]}: base value has shape {tuple(value.shape)}, source {tuple(source_value.shape)}",
                    hint="base and source inputs must have the same shape",
                )
            return source_value

        hs.edit(rs[0], put)
        return hs.run(base)


@torch.no_grad()
def sweep(
    model: nn.Module, sites: Sequence, base, source, metric: Callable[[torch.Tensor], torch.Tensor]
) -> list[dict]:
    """``metric(logits)`` (a scalar) after patching each site in turn; one row per site plus the
    unpatched base and the source run."""
    rows = []
    with HookSession(model, eval=True) as hs:
        caps = {}
        for s in sites:
            caps[str(s)] = hs.capture(resolve(model, _without_selectors(s))[0])[0]
        src_out = hs.run(source)
    with HookSession(model, eval=True):
        base_out = model(base)
    rows.append({"site": "(none)", "metric": float(metric(logits_of(base_out)))})
    rows.append({"site": "(source run)", "metric": float(metric(logits_of(src_out)))})
    for s in sites:
        out = patch_run(model, s, base, source, source_value=caps[str(s)].value)
        rows.append({"site": str(s), "metric": float(metric(logits_of(out)))})
    return rows


@torch.no_grad()
def ablate_run(model: nn.Module, site, x, *, kind: str = "mean", reference=None, per_position: bool = True):
    """Model output on ``x`` with the value at ``site`` (selectors respected: ``L1.z[heads=0]`` ablates
    one head) replaced by its mean over ``reference`` (per position unless ``per_position=False``)
    or by zero. The graph counterpart is ``prepare(..., ablation=kind)`` + ``avoid_node`` (tested
    equal; docs/patching.md, "Counterfactuals")."""
    if kind not in ("mean", "zero"):
        raise ConfigError(f"unknown ablation {kind!r}", hint="'mean' or 'zero'")
    rs = resolve(model, site)
    if len(rs) != 1:
        raise ConfigError(f"site {site} resolves to {len(rs)} places; ablate one at a time")
    mean = None
    if kind == "mean":
        if reference is None:
            raise ConfigError("mean ablation needs reference inputs", hint="ablate_run(..., reference=x_ref)")
        with HookSession(model, eval=True) as hs:
            cap = hs.capture(_without_selectors(rs[0].site))[0]
            hs.run(reference)
        v = cap.value
        mean = v.mean(0, keepdim=True) if per_position or v.dim() < 3 else v.mean((0, 1), keepdim=True)

    def put(value, _rs):
        if mean is None:
            return torch.zeros_like(value)
        if per_position and mean.shape[1:] != value.shape[1:]:
            raise ConfigError(
                f"site {rs[0]}: reference has shape {tuple(mean.shape[1:])} per example, input "
                f"{tuple(value.shape[1:])}",
                hint="per-position means need inputs of the reference's length (or per_position=False)",
            )
        return mean.expand_as(value)

    with HookSession(model, eval=True) as hs:
        hs.edit(rs[0], put)
        return hs.run(x)


def _without_selectors(spec):
    s = Site.parse(spec) if not isinstance(spec, Site) else spec
    return s.with_(heads=None, positions=None, units=None)


def head_sites(model: nn.Module, *, positions: int | None = None) -> list[str]:
    """Per-head output sites ``L{l}.z[heads=h]`` (and ``;pos=p`` for p < positions) of a transformer."""
    from ..core.families import canonical_sites

    canon = canonical_sites(model)
    layers = sorted({int(k[1:].split(".")[0]) for k in canon if k.endswith(".z")})
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no canonical per-head sites",
            hint="use the zoo transformer, GPT-2 or a HookedTransformer, or pass sites",
        )
    out = []
    for l in layers:
        s = canon[f"L{l}.z"]
        H = s.n_heads or getattr(getattr(model, "cfg", None), "n_heads", None)
        if H is None:
            raise ConfigError("cannot tell the number of heads")
        for h in range(H):
            if positions is None:
                out.append(f"L{l}.z[heads={h}]")
            else:
                out += [f"L{l}.z[heads={h};pos={p}]" for p in range(positions)]
    return out


@torch.no_grad()
def freeze_patch(model: nn.Module, senders: Sequence, receivers: Sequence, freeze: Sequence, x_r, x_c):
    """IOI-style path patching (Wang et al. 2022; docs/patching.md, "IOI-style path patching"), two passes.

    Pass 1 runs x_r with the ``senders`` set to their x_c values and every ``freeze`` site held at
    its x_r value (senders win where they overlap), recording the ``receivers``. Pass 2 runs x_r
    with the receivers set to the recorded values. This equals the path hypothesis "every path
    except sender -> (direct) -> receiver" (tested against the path evaluators). Works with any
    model whose senders, receivers and frozen components are sites.
    """
    senders, receivers, freeze = list(senders), list(receivers), list(freeze)
    with HookSession(model, eval=True) as hs:
        src = [hs.capture(resolve(model, _without_selectors(s))[0])[0] for s in senders]
        hs.run(x_c)
    with HookSession(model, eval=True) as hs:
        frz = [hs.capture(resolve(model, _without_selectors(s))[0])[0] for s in freeze]
        hs.run(x_r)
    with HookSession(model, eval=True) as hs:
        for s, cap in zip(freeze, frz):
            hs.edit(s, lambda v, rs, c=cap: c.value)
        for s, cap in zip(senders, src):
            hs.edit(s, lambda v, rs, c=cap: c.value)
        rec = [hs.capture(resolve(model, _without_selectors(s))[0])[0] for s in receivers]
        hs.run(x_r)
    with HookSession(model, eval=True) as hs:
        for s, cap in zip(receivers, rec):
            hs.edit(s, lambda v, rs, c=cap: c.value)
        return hs.run(x_r)
