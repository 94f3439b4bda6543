"""Llama-family models: ``LlamaForCausalLM`` / ``LlamaModel`` and the models that share its structure
(Mistral, Qwen2; Qwen3's per-head q/k norms too). RMSNorm, rotary positions, grouped-query
attention, gated (SwiGLU) MLP.

Sites (layer ``l``): ``L{l}.q`` = ``q_proj`` output, per query head (``n_heads``); ``L{l}.k`` /
``L{l}.v`` = ``k_proj`` / ``v_proj`` outputs, indexed by **their own K/V heads** (``n_kv_heads``):
query head ``h`` reads K/V head ``h // (n_heads // n_kv_heads)``. ``L{l}.z`` = ``o_proj`` input per
query head. ``L{l}.mlp_post`` = ``act(gate) * up`` (the ``down_proj`` input). ``L{l}.pattern`` only
with ``attn_implementation="eager"`` (the softmax call inside attention, editable). No ``pos_embed``: positions are rotary, inside
attention. Graph nodes and the GQA convention: :mod:`.residual`.
Refused by name: ``attention_mask`` padding (graphs take unpadded token ids), models whose
check fails (the error names ``rope_parameters``, ``sliding_window``, ``layer_types``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..site import Site
from .attention import (
    apply_rotary_of,
    linear_heads,
    out_heads,
    project_heads,
    rotary_mix,
)
from .base import Family, token_probe
from .residual import normed, residual_graph

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def matches(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in MODEL_TYPES and hasattr(
        _base(model), "layers"
    )


def _base(model: nn.Module):
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


def _prefix(model: nn.Module) -> str:
    return "model." if _base(model) is not model else ""


def _heads(model: nn.Module) -> tuple[int, int, int]:
    cfg = model.config
    H = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or H
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    return H, n_kv, dh


def sites(model: nn.Module) -> dict[str, Site]:
    H, n_kv, _ = _heads(model)
    p = _prefix(model)
    out = {"embed": Site(f"{p}embed_tokens")}
    if hasattr(model, "lm_head"):
        out["logits"] = Site("lm_head")
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    for l in range(model.config.num_hidden_layers):
        b = f"{p}layers.{l}"
        out[f"L{l}.resid_pre"] = Site(b, "input", 0)
        out[f"L{l}.q"] = Site(f"{b}.self_attn.q_proj", n_heads=H)
        out[f"L{l}.k"] = Site(f"{b}.self_attn.k_proj", n_heads=n_kv)
        out[f"L{l}.v"] = Site(f"{b}.self_attn.v_proj", n_heads=n_kv)
        out[f"L{l}.z"] = Site(f"{b}.self_attn.o_proj", "input", 0, n_heads=H)
        if eager:
            out[f"L{l}.pattern"] = Site(f"{b}.self_attn/softmax#0", head_axis=1)
        out[f"L{l}.attn_out"] = Site(f"{b}.self_attn", "output", 0)
        out[f"L{l}.resid_mid"] = Site(f"{b}.post_attention_layernorm", "input", 0)
        out[f"L{l}.mlp_in"] = Site(f"{b}.mlp", "input", 0)
        out[f"L{l}.mlp_post"] = Site(f"{b}.mlp.down_proj", "input", 0)
        out[f"L{l}.mlp_out"] = Site(f"{b}.mlp")
        out[f"L{l}.resid_post"] = Site(b, "output", 0)
    return out


def _window(cfg, l: int) -> int | None:
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return cfg.sliding_window if types[l] == "sliding_attention" else None
    return getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None


def _mix(layer, cfg, H: int, n_kv: int, dh: int, rotary_emb, l: int):
    attn, norm = layer.self_attn, layer.input_layernorm
    rep = H // n_kv
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)

    def project(q_in, k_in, v_in, hs):
        kv = [h // rep for h in hs]
        q = project_heads(norm(q_in), *linear_heads(attn.q_proj, H, dh, hs))
        k = project_heads(norm(k_in), *linear_heads(attn.k_proj, n_kv, dh, kv))
        v = project_heads(norm(v_in), *linear_heads(attn.v_proj, n_kv, dh, kv))
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        return q, k, v

    return rotary_mix(
        project,
        rotary_emb=rotary_emb,
        apply_rotary=apply_rotary_of(attn),
        scaling=attn.scaling,
        window=_window(cfg, l),
        H=H,
    )


def graph(model: nn.Module):
    cfg, base = model.config, _base(model)
    H, n_kv, dh = _heads(model)
    layers = list(base.layers)

    def out_fn(r):
        r = base.norm(r)
        return model.lm_head(r) if hasattr(model, "lm_head") else r

    def b_O(layer):
        bias = layer.self_attn.o_proj.bias
        return torch.zeros(cfg.hidden_size) if bias is None else bias.detach()

    return residual_graph(
        f"{type(model).__name__}({cfg.num_hidden_layers}L x {H}H" + (f", {n_kv} KV heads" if n_kv != H else "") + ")",
        n_layers=cfg.num_hidden_layers,
        H=H,
        n_kv=n_kv,
        model=model,
        inputs=[("embed", "embed")],
        input_fn=lambda x: [base.embed_tokens(x)],
        mix=[_mix(layer, cfg, H, n_kv, dh, base.rotary_emb, l) for l, layer in enumerate(layers)],
        head_out=[out_heads(layer.self_attn.o_proj, H, dh) for layer in layers],
        subsets=True,
        mlp_fn=[normed(layer.post_attention_layernorm, layer.mlp) for layer in layers],
        out_fn=out_fn,
        b_O=[b_O(layer) for layer in layers],
        notes=["dropout ignored: evaluate in eval mode", "token ids without padding (no attention_mask)"],
    )


def options(model: nn.Module) -> dict:
    cfg = model.config
    keys = (
        "model_type",
        "num_key_value_heads",
        "rope_parameters",
        "sliding_window",
        "layer_types",
        "attention_bias",
        "mlp_bias",
        "hidden_act",
    )
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}


FAMILY = Family(
    "llama",
    matches,
    sites,
    graph,
    probe=lambda m: token_probe(m.config.vocab_size, m.config.max_position_embeddings),
    options=options,
    description="Llama family: LlamaForCausalLM, Mistral, Qwen2 (RMSNorm, rotary, GQA, SwiGLU)",
)
