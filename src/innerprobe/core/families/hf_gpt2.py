"""Hugging Face GPT-2 family (``GPT2Model`` / ``GPT2LMHeadModel``, ``config.model_type == "gpt2"``).

Sites: q/k/v are the projected per-head vectors (chunks of the fused ``c_attn`` output), ``z`` the
``c_proj`` input; ``L{l}.pattern`` only with ``attn_implementation="eager"``: the output of the
attention's softmax call (a functional-call site, core/functional.py), so it can be read and edited.
Graph: the eager attention math re-expressed per head from the model's own weights.
Refused by name: ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``, cross-attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ModelError
from ..site import Site
from .base import Family, nondefault, token_probe
from .residual import causal_mask, normed, residual_graph

REFUSED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False}


def matches(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "gpt2" and hasattr(model, "config")


def eager(model: nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) == "eager"


def sites(model: nn.Module) -> dict[str, Site]:
    cfg = model.config
    p = "transformer." if hasattr(model, "transformer") else ""
    H = cfg.n_head
    out = {"embed": Site(f"{p}wte"), "pos_embed": Site(f"{p}wpe")}
    if hasattr(model, "lm_head"):
        out["logits"] = Site("lm_head")
    for l in range(cfg.n_layer):
        b = f"{p}h.{l}"
        out[f"L{l}.resid_pre"] = Site(b, "input", 0)
        for i, n in enumerate("qkv"):  # HF fuses Q/K/V in c_attn: these are the projected vectors
            out[f"L{l}.{n}"] = Site(f"{b}.attn.c_attn", "output", n_heads=H, chunk=(i, 3))
        out[f"L{l}.z"] = Site(f"{b}.attn.c_proj", "input", 0, n_heads=H)
        if eager(model):
            out[f"L{l}.pattern"] = Site(f"{b}.attn/softmax#0", head_axis=1)
        out[f"L{l}.attn_out"] = Site(f"{b}.attn", "output", 0)
        out[f"L{l}.resid_mid"] = Site(f"{b}.ln_2", "input", 0)
        out[f"L{l}.mlp_in"] = Site(f"{b}.mlp", "input", 0)
        out[f"L{l}.mlp_post"] = Site(f"{b}.mlp.c_proj", "input", 0)
        out[f"L{l}.mlp_out"] = Site(f"{b}.mlp", "output")
        out[f"L{l}.resid_post"] = Site(b, "output", 0)
    return out


def graph(model: nn.Module):
    cfg = model.config
    bad = nondefault(cfg, REFUSED)
    if bad:
        raise ModelError(
            f"GPT-2 graphs do not support {', '.join(f'{k}={v}' for k, v in bad.items())}",
            hint="these change the attention math; patch nodes by site instead (innerprobe.patch.patch_run)",
        )
    tr = model.transformer if hasattr(model, "transformer") else model
    H, d = cfg.n_head, cfg.n_embd
    dh = d // H
    blocks = list(tr.h)

    def mix_fn(b):
        def mix(q_in, k_in, v_in, heads=None):
            hs = list(range(H)) if heads is None else list(heads)
            W, bias = b.attn.c_attn.weight, b.attn.c_attn.bias  # Conv1D: [d, 3d]
            Wq, Wk, Wv = (W[:, i * d : (i + 1) * d].view(d, H, dh)[:, hs] for i in range(3))
            bq, bk, bv = (bias[i * d : (i + 1) * d].view(H, dh)[hs] for i in range(3))
            q = torch.einsum("bthd,dhe->bthe", b.ln_1(q_in), Wq) + bq
            k = torch.einsum("bthd,dhe->bthe", b.ln_1(k_in), Wk) + bk
            v = torch.einsum("bthd,dhe->bthe", b.ln_1(v_in), Wv) + bv
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k)
            if getattr(cfg, "scale_attn_weights", True):
                scores = scores / math.sqrt(dh)
            scores = scores.masked_fill(causal_mask(q.shape[1], q.device), torch.finfo(scores.dtype).min)
            return torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v)

        return mix

    def head_out_fn(b):
        def head_out(z, heads=None):
            W = b.attn.c_proj.weight.view(H, dh, d)
            return torch.einsum("bthe,hed->bthd", z, W if heads is None else W[list(heads)])

        return head_out

    def out_fn(r):
        r = tr.ln_f(r)
        return model.lm_head(r) if hasattr(model, "lm_head") else r

    def input_fn(x):
        return [tr.wte(x), tr.wpe(torch.arange(x.shape[1], device=x.device)).expand(x.shape[0], -1, -1)]

    return residual_graph(
        f"{type(model).__name__}({cfg.n_layer}L x {H}H)",
        n_layers=cfg.n_layer,
        H=H,
        model=model,
        inputs=[("embed", "embed"), ("pos", "pos_embed")],
        input_fn=input_fn,
        mix=[mix_fn(b) for b in blocks],
        head_out=[head_out_fn(b) for b in blocks],
        subsets=True,
        mlp_fn=[normed(b.ln_2, b.mlp) for b in blocks],
        out_fn=out_fn,
        b_O=[b.attn.c_proj.bias.detach() for b in blocks],
        notes=["dropout ignored: evaluate in eval mode"],
    )


def probe(model: nn.Module) -> torch.Tensor:
    return token_probe(model.config.vocab_size, model.config.n_positions)


FAMILY = Family(
    "hf-gpt2",
    matches,
    sites,
    graph,
    probe=probe,
    options=lambda m: nondefault(m.config, REFUSED),
    description="Hugging Face GPT-2 (GPT2Model, GPT2LMHeadModel)",
)
