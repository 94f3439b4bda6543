"""TransformerLens ``TransformerBridge`` (TransformerLens 3.9 and 4): a Hugging Face model wrapped
in TransformerLens hook points.

Sites: the canonical names resolve through the bridge's ``hook_dict`` (TransformerLens name ->
hook module) to the bridge's real module names (``blocks.1._original_component.attn.o.hook_in``
for ``L1.z``); every TransformerLens hook name and alias (``blocks.1.attn.hook_z``) is a site too,
printed under its canonical name. Graph: the graph of the wrapped Hugging Face model's family
(built on ``bridge.original_model``), checked against the bridge's own forward.
"""

from __future__ import annotations

from torch import nn

from ...errors import ModelError
from ..site import Site
from . import hf_gpt2, llama, neox
from .base import Family, token_probe
from .tl import tl_sites

INNER = (hf_gpt2.FAMILY, llama.FAMILY, neox.FAMILY)  # the Hugging Face families a bridge can wrap


def matches(model: nn.Module) -> bool:
    return type(model).__name__ == "TransformerBridge" and hasattr(model, "hook_dict") and hasattr(model, "cfg")


def where(model: nn.Module) -> dict[str, str]:
    """TransformerLens hook name -> real module name, for every hook (aliases included)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {k: names[id(v)] for k, v in model.hook_dict.items() if id(v) in names}
    if "unembed.hook_out" in out:
        out["unembed"] = out["unembed.hook_out"]
    return out


def layout(model: nn.Module):
    """Bridge hooks see Hugging Face tensors: q/z flat [B, T, H*d] (``n_heads``), k/v with the K/V heads,
    patterns [B, H, Tq, Tk]."""
    H = model.cfg.n_heads
    kv = getattr(model.cfg, "n_key_value_heads", None) or H
    by_name = {
        "hook_q": {"n_heads": H},
        "hook_z": {"n_heads": H},
        "hook_k": {"n_heads": kv},
        "hook_v": {"n_heads": kv},
        "hook_pattern": {"head_axis": 1},
        "hook_attn_scores": {"head_axis": 1},
    }
    return lambda hook: by_name.get(hook.rsplit(".", 1)[-1], {})


def sites(model: nn.Module) -> dict[str, Site]:
    w = where(model)
    out = tl_sites(model, w, split=False, layout=layout(model))
    if "rotary_emb" in out.get("pos_embed", Site("")).module:  # rotary: positions live inside attention
        del out["pos_embed"]
    for l in range(model.cfg.n_layers):
        mlp_in = w.get(f"blocks.{l}.mlp.hook_in")
        if mlp_in:
            out[f"L{l}.mlp_in"] = Site(mlp_in)
    return out


def aliases(model: nn.Module) -> dict:
    canon = {s.module: k for k, s in sites(model).items() if s.port == "output" and s.index is None}
    lay = layout(model)
    return {n: canon.get(m, Site(m, **lay(n))) for n, m in where(model).items()}


def graph(model: nn.Module):
    inner = model.original_model
    fam = next((f for f in INNER if f.matches(inner)), None)
    if fam is None:
        raise ModelError(
            f"no graph builder for the model inside this TransformerBridge ({type(inner).__name__})",
            hint=f"bridges over {', '.join(f.description for f in INNER)} have graphs",
        )
    g = fam.graph(inner)
    g.model = model
    g.name = f"TransformerBridge[{g.name}]"
    return g


FAMILY = Family(
    "transformer-bridge",
    matches,
    sites,
    graph,
    aliases=aliases,
    probe=lambda m: token_probe(m.cfg.d_vocab, m.cfg.n_ctx),
    options=lambda m: {"architecture": type(m.original_model).__name__},
    description="TransformerLens TransformerBridge (graph via the wrapped Hugging Face model)",
)
