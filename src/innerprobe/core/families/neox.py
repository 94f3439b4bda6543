"""GPT-NeoX (Pythia): ``GPTNeoXForCausalLM`` / ``GPTNeoXModel``. LayerNorm, partial rotary
(``rope_parameters["partial_rotary_factor"]``), attention and MLP in parallel by default
(``use_parallel_residual=True``: both read the block's input; ``False`` is sequential, also supported).

Sites: q/k/v are parts of the fused ``query_key_value`` output, which GPT-NeoX lays out *per
head* (``[q_h, k_h, v_h]`` blocks of ``3 * d_head``): ``Site(part=(i, 3))``. ``z`` = ``dense`` input.
With the parallel residual there is no ``resid_mid``. ``L{l}.pattern`` only with eager attention (the softmax call, editable).
"""

from __future__ import annotations

import torch
from torch import nn

from ..site import Site
from .attention import apply_rotary_of, out_heads, project_heads, rotary_mix
from .base import Family, token_probe
from .residual import normed, residual_graph


def matches(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "gpt_neox"


def _base(model):
    return model.gpt_neox if hasattr(model, "gpt_neox") else model


def _prefix(model):
    return "gpt_neox." if hasattr(model, "gpt_neox") else ""


def _unembed(model):
    for name in ("embed_out", "lm_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def sites(model: nn.Module) -> dict[str, Site]:
    cfg, p = model.config, _prefix(model)
    H = cfg.num_attention_heads
    out = {"embed": Site(f"{p}embed_in")}
    if _unembed(model):
        out["logits"] = Site(_unembed(model))
    eager = getattr(cfg, "_attn_implementation", None) == "eager"
    for l in range(cfg.num_hidden_layers):
        b = f"{p}layers.{l}"
        out[f"L{l}.resid_pre"] = Site(b, "input", 0)
        for i, n in enumerate("qkv"):
            out[f"L{l}.{n}"] = Site(f"{b}.attention.query_key_value", n_heads=H, part=(i, 3))
        out[f"L{l}.z"] = Site(f"{b}.attention.dense", "input", 0, n_heads=H)
        if eager:
            out[f"L{l}.pattern"] = Site(f"{b}.attention/softmax#0", head_axis=1)
        out[f"L{l}.attn_out"] = Site(f"{b}.attention", "output", 0)
        if not cfg.use_parallel_residual:
            out[f"L{l}.resid_mid"] = Site(f"{b}.post_attention_layernorm", "input", 0)
        out[f"L{l}.mlp_in"] = Site(f"{b}.mlp", "input", 0)
        out[f"L{l}.mlp_post"] = Site(f"{b}.mlp.dense_4h_to_h", "input", 0)
        out[f"L{l}.mlp_out"] = Site(f"{b}.mlp")
        out[f"L{l}.resid_post"] = Site(b, "output", 0)
    return out


def _mix(layer, H, dh, rotary_emb):
    attn, norm = layer.attention, layer.input_layernorm

    def project(q_in, k_in, v_in, hs):
        W = attn.query_key_value.weight.view(H, 3, dh, -1)[hs]
        b = attn.query_key_value.bias
        b = None if b is None else b.view(H, 3, dh)[hs]
        return tuple(
            project_heads(norm(x), W[:, i], None if b is None else b[:, i]) for i, x in enumerate((q_in, k_in, v_in))
        )

    return rotary_mix(project, rotary_emb=rotary_emb, apply_rotary=apply_rotary_of(attn), scaling=attn.scaling, H=H)


def graph(model: nn.Module):
    cfg, base = model.config, _base(model)
    H = cfg.num_attention_heads
    dh = cfg.hidden_size // H
    layers = list(base.layers)
    unembed = _unembed(model)

    def out_fn(r):
        r = base.final_layer_norm(r)
        return getattr(model, unembed)(r) if unembed else r

    def b_O(layer):
        bias = layer.attention.dense.bias
        return torch.zeros(cfg.hidden_size) if bias is None else bias.detach()

    parallel = bool(cfg.use_parallel_residual)
    return residual_graph(
        f"{type(model).__name__}({cfg.num_hidden_layers}L x {H}H" + (", parallel" if parallel else "") + ")",
        n_layers=cfg.num_hidden_layers,
        H=H,
        model=model,
        parallel=parallel,
        inputs=[("embed", "embed")],
        input_fn=lambda x: [base.embed_in(x)],
        mix=[_mix(layer, H, dh, base.rotary_emb) for layer in layers],
        head_out=[out_heads(layer.attention.dense, H, dh) for layer in layers],
        subsets=True,
        mlp_fn=[normed(layer.post_attention_layernorm, layer.mlp) for layer in layers],
        out_fn=out_fn,
        b_O=[b_O(layer) for layer in layers],
        notes=["dropout ignored: evaluate in eval mode", "token ids without padding (no attention_mask)"]
        + (["parallel residual: m{l} reads what the heads of layer l read"] if parallel else []),
    )


def options(model):
    cfg = model.config
    return {
        k: getattr(cfg, k)
        for k in ("use_parallel_residual", "rope_parameters", "attention_bias", "hidden_act")
        if getattr(cfg, k, None) is not None
    }


FAMILY = Family(
    "gpt-neox",
    matches,
    sites,
    graph,
    probe=lambda m: token_probe(m.config.vocab_size, m.config.max_position_embeddings),
    options=options,
    description="GPT-NeoX / Pythia (parallel attention + MLP, partial rotary)",
)
