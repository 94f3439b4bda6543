"""TransformerLens ``HookedTransformer`` (3.9): canonical sites, TransformerLens hook names as sites,
and the graph.

Sites: TransformerLens's own hooks (``q``/``k``/``v`` are the split per-head inputs
``hook_{q,k,v}_input`` when ``use_split_qkv_input`` is on, else ``attn.hook_{q,k,v}``; under
grouped-query attention ``k``/``v`` have ``n_key_value_heads`` heads). Every TransformerLens hook
name (``blocks.1.attn.hook_z``) is accepted as a site and printed under its canonical name.

Graph config options: ``parallel_attn_mlp`` supported; ``normalization_type`` None / LN / LNPre /
RMS / RMSPre supported; ``positional_embedding_type`` standard, rotary and shortformer supported
(shortformer: TransformerLens adds the position embedding *after* ``ln1``, so each head gets a
``pos`` slot read outside the norm); refused by name: ``use_normalization_before_and_after``,
post-norm architectures, grouped-query attention (``n_key_value_heads``), ``use_attn_in``,
``alibi``. The graph calls each block's own attention with split per-head inputs (the config's
``use_split_qkv_input`` is switched on for the call and restored).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn

from ...errors import ModelError
from ..site import Site
from .base import Family, grab_output, token_probe
from .residual import Stages, normed, residual_graph

HEAD_AXIS = {
    "hook_q": 2,
    "hook_k": 2,
    "hook_v": 2,
    "hook_z": 2,
    "hook_result": 2,
    "hook_rot_q": 2,
    "hook_rot_k": 2,
    "hook_q_input": 2,
    "hook_k_input": 2,
    "hook_v_input": 2,
    "hook_attn_in": 2,
    "hook_pattern": 1,
    "hook_attn_scores": 1,
}


def matches(model: nn.Module) -> bool:
    return type(model).__name__ == "HookedTransformer" and hasattr(model, "cfg") and hasattr(model, "blocks")


def tl_layout(hook: str) -> dict:
    """HookedTransformer hooks hold heads on an axis: [B, T, H, d] (axis 2) or [B, H, Tq, Tk] (axis 1)."""
    axis = HEAD_AXIS.get(hook.rsplit(".", 1)[-1])
    return {} if axis is None else {"head_axis": axis}


def tl_sites(model: nn.Module, where: dict[str, str], split: bool, layout=tl_layout) -> dict[str, Site]:
    """Canonical sites from TransformerLens hook names; ``where`` maps a hook name to the real module
    name, ``layout(hook)`` gives the Site layout fields of that hook's tensor."""
    cfg = model.cfg
    out: dict[str, Site] = {}

    def put(canon, hook, module=None):
        real = module if module is not None else where.get(hook)
        if real is not None:
            out[canon] = Site(real, **layout(hook))

    put("embed", "hook_embed")
    put("pos_embed", "hook_pos_embed")
    put("logits", "unembed", module=where.get("unembed"))
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        put(f"L{l}.resid_pre", f"{b}.hook_resid_pre")
        for n in "qkv":
            put(f"L{l}.{n}", f"{b}.hook_{n}_input" if split else f"{b}.attn.hook_{n}")
        put(f"L{l}.z", f"{b}.attn.hook_z")
        put(f"L{l}.pattern", f"{b}.attn.hook_pattern")
        put(f"L{l}.attn_out", f"{b}.hook_attn_out")
        put(f"L{l}.resid_mid", f"{b}.hook_resid_mid")
        put(f"L{l}.mlp_post", f"{b}.mlp.hook_post")
        put(f"L{l}.mlp_out", f"{b}.hook_mlp_out")
        put(f"L{l}.resid_post", f"{b}.hook_resid_post")
    return out


def _where(model: nn.Module) -> dict[str, str]:
    names = {n for n, _ in model.named_modules()}
    out = {n: n for n in names if n.rsplit(".", 1)[-1].startswith("hook_")}
    if "unembed" in names:
        out["unembed"] = "unembed"
    return out


def sites(model: nn.Module) -> dict[str, Site]:
    where = _where(model)
    out = tl_sites(model, where, bool(getattr(model.cfg, "use_split_qkv_input", False)))
    names = {n for n, _ in model.named_modules()}
    if not model.cfg.attn_only:
        for l in range(model.cfg.n_layers):
            if f"blocks.{l}.mlp" in names:  # after ln2, as in HF (hook_mlp_in fires only with use_hook_mlp_in)
                out[f"L{l}.mlp_in"] = Site(f"blocks.{l}.mlp", "input")
    return out


def aliases(model: nn.Module) -> dict:
    """TransformerLens hook names -> canonical name (where one exists) or a Site with its head layout."""
    canon = {(s.module, s.port, s.index): k for k, s in sites(model).items()}
    return {n: canon.get((m, "output", None), Site(m, **tl_layout(n))) for n, m in _where(model).items()}


REFUSED = {"use_normalization_before_and_after": False, "use_attn_in": False}


def refusals(cfg) -> list[str]:
    bad = [f"{k}=True" for k, v in REFUSED.items() if getattr(cfg, k, v) != v]
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        bad.append(f"n_key_value_heads={cfg.n_key_value_heads} (grouped-query attention; use a Hugging Face Llama)")
    if getattr(cfg, "positional_embedding_type", "standard") not in ("standard", "shortformer", "rotary"):
        bad.append(f"positional_embedding_type={cfg.positional_embedding_type!r}")
    if getattr(cfg, "normalization_type", None) not in (None, "LN", "LNPre", "RMS", "RMSPre"):
        bad.append(f"normalization_type={cfg.normalization_type!r}")
    if getattr(cfg, "original_architecture", None) in ("Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        bad.append(f"post-norm architecture {cfg.original_architecture}")
    return bad


@contextlib.contextmanager
def _split_inputs(cfg, on: bool = True):
    old = cfg.use_split_qkv_input
    cfg.use_split_qkv_input = on
    try:
        yield
    finally:
        cfg.use_split_qkv_input = old


def _plain_attention(cfg, b) -> bool:
    """Whether :func:`_heads_math` is this block's attention: causal softmax attention with learned
    absolute positions, no rotary, QK norm, soft cap or grouped K/V heads."""
    return (
        cfg.positional_embedding_type == "standard"
        and not getattr(cfg, "use_qk_norm", False)
        and (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
        and getattr(cfg, "n_key_value_heads", None) is None
        and (getattr(b.attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
        and getattr(cfg, "attn_types", None) is None
    )


def _normed(ln1, t: torch.Tensor) -> torch.Tensor:
    """ln1 of per-head inputs; a stride-0 head axis (one residual for every head) is normalised once."""
    if t.dim() == 4 and t.stride(2) == 0:
        return ln1(t[:, :, :1]).expand_as(t)
    return ln1(t)


def _heads_math(b, q_in, k_in, v_in, heads: list) -> torch.Tensor:
    """z [B, T, h, d_head] of the given heads from normalised per-head inputs, TransformerLens's
    attention restricted to those heads (head-subset recomputation, issue 12)."""
    a = b.attn
    q, k, v = (_project(a, x, s, heads) for x, s in ((q_in, "q"), (k_in, "k"), (v_in, "v")))
    return _weigh(_attend(a, q, k), v)


def _project(a, x: torch.Tensor, which: str, heads) -> torch.Tensor:
    """Normalised per-head inputs [..., T, h, d] -> queries, keys or values [..., T, h, d_head]."""
    sel = slice(None) if heads is None else list(heads)
    W, bias = {"q": (a.W_Q, a.b_Q), "k": (a.W_K, a.b_K), "v": (a.W_V, a.b_V)}[which]
    return torch.einsum("...thd,hde->...the", x, W[sel]) + bias[sel]


def _attend(a, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax pattern [..., h, Tq, Tk] (leading axes broadcast)."""
    T = q.shape[-3]
    scores = torch.matmul(q.transpose(-3, -2), k.transpose(-3, -2).transpose(-1, -2)) / a.attn_scale
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores.softmax(-1)


def _weigh(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.matmul(pattern, v.transpose(-3, -2)).transpose(-3, -2)


def _stages(cfg, b, ln1) -> Stages | None:
    """The head function in stages (reuse of clean keys, values, pattern) where :func:`_heads_math` is
    the block's attention; None elsewhere (rotary, shortformer, ...: the fast path recomputes whole heads)."""
    if not _plain_attention(cfg, b):
        return None
    a = b.attn
    return Stages(lambda x, which, heads: _project(a, ln1(x), which, heads), partial(_attend, a), _weigh)


def graph(model: nn.Module):
    cfg = model.cfg
    bad = refusals(cfg)
    if bad:
        raise ModelError(
            f"TransformerLens graphs do not support {'; '.join(bad)}",
            hint="patch nodes by site instead (innerprobe.patch.patch_run), or build the model without it",
        )
    blocks = list(model.blocks)
    short = cfg.positional_embedding_type == "shortformer"
    ident = nn.Identity()

    def mix_fn(b):
        ln1 = getattr(b, "ln1", ident)
        per_head = _plain_attention(cfg, b)

        def full(q, k, v, pos=None):
            if pos is None and q is k and k is v and q.stride(2) == 0:  # one residual for every head: normalise once
                x = ln1(q[:, :, 0])
                with _split_inputs(cfg, False):
                    return grab_output(b.attn.hook_z, lambda: b.attn(x, x, x))
            extra = 0.0 if pos is None else pos.unsqueeze(2)
            with _split_inputs(cfg):
                return grab_output(b.attn.hook_z, lambda: b.attn(ln1(q) + extra, ln1(k) + extra, ln1(v)))

        def mix(q, k, v, pos=None, heads=None):
            if heads is None:
                return full(q, k, v, pos)
            if per_head and pos is None:
                return _heads_math(b, *(_normed(ln1, t) for t in (q, k, v)), list(heads))
            # other configs: TransformerLens on every head (unselected heads get a selected head's inputs)
            spread = [t[:, :, :1].expand(*t.shape[:2], cfg.n_heads, t.shape[-1]).clone() for t in (q, k, v)]
            for t, x in zip(spread, (q, k, v)):
                t[:, :, list(heads)] = x
            return full(*spread, pos)[:, :, list(heads)]

        return mix

    def head_out_fn(b):
        return lambda z, heads=None: torch.einsum(
            "bthe,hed->bthd", z, b.attn.W_O if heads is None else b.attn.W_O[list(heads)]
        )

    ln_final = getattr(model, "ln_final", ident)
    has_pos = cfg.positional_embedding_type in ("standard", "shortformer")
    inputs = [("embed", "embed")] + ([("pos", "pos_embed")] if has_pos else [])

    def input_fn(x):
        return [model.embed(x)] + ([model.pos_embed(x)] if has_pos else [])

    return residual_graph(
        f"HookedTransformer({cfg.n_layers}L x {cfg.n_heads}H" + (", parallel" if cfg.parallel_attn_mlp else "") + ")",
        n_layers=cfg.n_layers,
        H=cfg.n_heads,
        model=model,
        inputs=inputs,
        input_fn=input_fn,
        mix=[mix_fn(b) for b in blocks],
        head_out=[head_out_fn(b) for b in blocks],
        subsets=True,
        stages=[_stages(cfg, b, getattr(b, "ln1", ident)) for b in blocks],
        head_sum=[(lambda b: lambda z: torch.einsum("bthe,hed->btd", z, b.attn.W_O))(b) for b in blocks],
        mlp_fn=[None if cfg.attn_only else normed(getattr(b, "ln2", ident), b.mlp) for b in blocks],
        out_fn=lambda r: model.unembed(ln_final(r)),
        b_O=[b.attn.b_O.detach() for b in blocks],
        parallel=bool(cfg.parallel_attn_mlp),
        pos_slot="pos" if short else None,
        notes=["shortformer: pos enters each head's 'pos' slot, added after ln1 as TransformerLens does"]
        if short
        else [],
    )


def options(model: nn.Module) -> dict:
    cfg = model.cfg
    keys = (
        "normalization_type",
        "positional_embedding_type",
        "parallel_attn_mlp",
        "use_normalization_before_and_after",
        "attn_only",
        "n_key_value_heads",
        "use_attn_scale",
        "attn_scores_soft_cap",
        "output_logits_soft_cap",
    )
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) not in (None, False)}


FAMILY = Family(
    "transformer-lens",
    matches,
    sites,
    graph,
    aliases=aliases,
    probe=lambda m: token_probe(m.cfg.d_vocab, m.cfg.n_ctx),
    options=options,
    description="TransformerLens HookedTransformer",
)
