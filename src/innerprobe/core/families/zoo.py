"""The zoo's hand-written transformer (``innerprobe.zoo.transformer.AttnTransformer``), duck-typed.

Detected by ``model.canonical_sites()`` plus ``model.blocks[i].attn.mix``; core never imports
the zoo. Attention that also exposes ``project``/``attend``/``weigh`` gives its head function in
stages, so path patching reuses the clean keys, values or pattern. Every read has its own hook,
so q/k/v sites are the per-head *inputs* (before ln1).
Config options: ``ln``, ``d_mlp``, ``pos`` in (standard, shortformer), all supported.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Family, token_probe
from .residual import Stages, residual_graph


def matches(model: nn.Module) -> bool:
    cfg, blocks = getattr(model, "cfg", None), getattr(model, "blocks", None)
    return (
        isinstance(cfg, dict)
        and blocks is not None
        and len(blocks) > 0
        and hasattr(blocks[0].attn, "mix")
        and callable(getattr(model, "canonical_sites", None))
    )


def sites(model: nn.Module) -> dict:
    return dict(model.canonical_sites())


def _mix(attn):
    return lambda q, k, v, heads=None: attn.mix(q, k, v, hooks=False, heads=heads)


def _stages(attn) -> Stages | None:
    """The head function in stages when the model's attention exposes them (``project``, ``attend``, ``weigh``)."""
    if not all(callable(getattr(attn, f, None)) for f in ("project", "attend", "weigh")):
        return None
    return Stages(attn.project, attn.attend, attn.weigh)


def graph(model: nn.Module):
    cfg = model.cfg
    blocks = list(model.blocks)
    B_O = [
        b.attn.o_proj.bias.detach() if b.attn.o_proj.bias is not None else torch.zeros(cfg["d_model"]) for b in blocks
    ]
    short = cfg["pos"] == "shortformer"
    name = (
        f"{type(model).__name__}({cfg['n_layers']}L x {cfg['n_heads']}H"
        + (", LN" if cfg["ln"] else "")
        + (", MLP" if cfg["d_mlp"] else "")
        + ")"
    )
    return residual_graph(
        name,
        n_layers=cfg["n_layers"],
        H=cfg["n_heads"],
        model=model,
        inputs=[("embed", "embed"), ("pos", "pos_embed")],
        input_fn=lambda x: [model.embed(x), model.pos_embed(x)],
        mix=[_mix(b.attn) for b in blocks],
        head_out=[b.attn.head_outputs for b in blocks],
        subsets=True,
        stages=[_stages(b.attn) for b in blocks],
        head_sum=[(lambda W: lambda z: z.reshape(*z.shape[:2], -1) @ W.T)(b.attn.o_proj.weight) for b in blocks],
        mlp_fn=[b.mlp_fn if b.has_mlp else None for b in blocks],
        out_fn=lambda r: model.unembed(model.ln_final(r)),
        b_O=B_O,
        qk_inputs=("pos",) if short else (),
        notes=["pos -> q/k slots only (shortformer)"] if short else [],
    )


FAMILY = Family(
    "zoo",
    matches,
    sites,
    graph,
    probe=lambda m: token_probe(m.cfg["vocab"], m.cfg["n_ctx"]),
    options=lambda m: {k: m.cfg[k] for k in ("ln", "d_mlp", "pos")},
    description="innerprobe's zoo transformer (AttnTransformer)",
)
