"""Adapters: canonical transformer sites for known architectures (data, not code paths).

Canonical names, for layer ``l``::

    embed, pos_embed, logits
    L{l}.resid_pre, L{l}.resid_post      residual stream before / after block l
    L{l}.q, L{l}.k, L{l}.v               per-head query / key / value *inputs* where the model has
                                         split inputs (zoo transformer; TransformerLens with
                                         use_split_qkv_input), else the per-head q / k / v vectors
    L{l}.z                               per-head output = input of the attention output projection
    L{l}.pattern                         attention pattern [batch, head, query, key]
    L{l}.attn_out, L{l}.mlp_in (the MLP module's input, after its LayerNorm), L{l}.mlp_out

Supported: any model with a ``canonical_sites()`` method (the zoo's transformer), Hugging Face
GPT-2-family models (``GPT2Model`` / ``GPT2LMHeadModel``), and TransformerLens ``HookedTransformer``.
"""
from __future__ import annotations

from torch import nn

from .sites import Site


def canonical_sites(model: nn.Module) -> dict[str, Site]:
    """Canonical name -> Site for ``model``; empty if the architecture is not recognised."""
    own = getattr(model, "canonical_sites", None)
    if callable(own):
        return dict(own())
    cls = type(model).__name__
    if cls == "HookedTransformer" and hasattr(model, "cfg"):
        return _transformer_lens(model)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None) == "gpt2":
        return _hf_gpt2(model)
    return {}


def _hf_gpt2(model: nn.Module) -> dict[str, Site]:
    cfg = model.config
    p = "transformer." if hasattr(model, "transformer") else ""
    H = cfg.n_head
    out = {"embed": Site(f"{p}wte"), "pos_embed": Site(f"{p}wpe")}
    if hasattr(model, "lm_head"):
        out["logits"] = Site("lm_head")
    for l in range(cfg.n_layer):
        b = f"{p}h.{l}"
        out[f"L{l}.resid_pre"] = Site(b, "input", 0)
        out[f"L{l}.resid_post"] = Site(b, "output", 0)
        for i, n in enumerate("qkv"):  # HF fuses Q/K/V in c_attn: these are the projected vectors
            out[f"L{l}.{n}"] = Site(f"{b}.attn.c_attn", "output", n_heads=H, chunk=(i, 3))
        out[f"L{l}.z"] = Site(f"{b}.attn.c_proj", "input", 0, n_heads=H)
        out[f"L{l}.attn_out"] = Site(f"{b}.attn", "output", 0)
        out[f"L{l}.mlp_in"] = Site(f"{b}.mlp", "input", 0)
        out[f"L{l}.mlp_out"] = Site(f"{b}.mlp", "output")
    return out


def _transformer_lens(model: nn.Module) -> dict[str, Site]:
    cfg = model.cfg
    split = bool(getattr(cfg, "use_split_qkv_input", False))
    out = {"embed": Site("hook_embed"), "pos_embed": Site("hook_pos_embed"), "logits": Site("unembed")}
    names = {n for n, _ in model.named_modules()}
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        out[f"L{l}.resid_pre"] = Site(f"{b}.hook_resid_pre")
        out[f"L{l}.resid_post"] = Site(f"{b}.hook_resid_post")
        for n in "qkv":
            name = f"{b}.hook_{n}_input" if split else f"{b}.attn.hook_{n}"
            out[f"L{l}.{n}"] = Site(name, head_axis=2)
        out[f"L{l}.z"] = Site(f"{b}.attn.hook_z", head_axis=2)
        out[f"L{l}.pattern"] = Site(f"{b}.attn.hook_pattern", head_axis=1)
        out[f"L{l}.attn_out"] = Site(f"{b}.hook_attn_out")
        if f"{b}.hook_mlp_out" in names:
            out[f"L{l}.mlp_in"] = Site(f"{b}.mlp", "input")  # after ln2, as in HF (hook_mlp_in fires only with use_hook_mlp_in)
            out[f"L{l}.mlp_out"] = Site(f"{b}.hook_mlp_out")
    return {k: v for k, v in out.items() if v.module in names}
