"""A small hand-written transformer whose every path-patching slot is a hookable site.

Attention-only by default (optional MLPs and pre-LayerNorm). The hook modules follow
TransformerLens's names, and every *read* has its own slot (Goldowsky-Dill et al. 2023,
arXiv 2304.05969, §2; "use_split_qkv_input" in TransformerLens):

``embed``, ``pos_embed``                          token / position embeddings [B, T, d]
``blocks.{l}.hook_resid_pre``                     residual stream entering block l
``blocks.{l}.attn.hook_{q,k,v}_input``            residual broadcast per head [B, T, H, d]; the
                                                  LayerNorm (if any) is applied *after* these, so
                                                  each head's input is a sum of upstream outputs
``blocks.{l}.attn.hook_pattern``                  attention pattern [B, H, Tq, Tk]
``blocks.{l}.attn.hook_z``                        per-head mixed values [B, T, H, d_head]
``blocks.{l}.attn.o_proj``                        nn.Linear(H*d_head, d): its input is per head
``blocks.{l}.hook_attn_out``, ``hook_mlp_in``, ``mlp``, ``hook_mlp_out``, ``hook_resid_post``
``unembed``                                       nn.Linear(d, vocab) -> logits [B, T, vocab]

``pos="shortformer"`` adds the positional embedding to the Q and K inputs of every layer and
never to V or the residual stream (Press et al. 2021; Redwood's attention_only_2 model).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

DEFAULTS = dict(
    vocab=64, n_ctx=64, d_model=64, n_heads=4, d_head=16, n_layers=2, ln=False, d_mlp=0, pos="standard", init_std=None
)


class HookPoint(nn.Identity):
    """An identity module: a named place for hooks (like TransformerLens's HookPoint)."""


class PosEmbed(nn.Module):
    """Learned positions; returns [B, T, d] (broadcast over the batch so it is patchable per example)."""

    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_ctx, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        return self.weight[:T].unsqueeze(0).expand(B, T, -1)


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        H, d, dh = cfg["n_heads"], cfg["d_model"], cfg["d_head"]
        self.n_heads, self.d_head = H, dh
        std = cfg["init_std"] or 1 / math.sqrt(d)
        self.W_Q = nn.Parameter(torch.randn(H, d, dh) * std)
        self.W_K = nn.Parameter(torch.randn(H, d, dh) * std)
        self.W_V = nn.Parameter(torch.randn(H, d, dh) * std)
        self.b_Q = nn.Parameter(torch.zeros(H, dh))
        self.b_K = nn.Parameter(torch.zeros(H, dh))
        self.b_V = nn.Parameter(torch.zeros(H, dh))
        self.ln1 = nn.LayerNorm(d) if cfg["ln"] else nn.Identity()
        self.hook_q_input = HookPoint()
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.o_proj = nn.Linear(H * dh, d)

    def mix(
        self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor, hooks: bool = True, heads: list | None = None
    ) -> torch.Tensor:
        """Per-head inputs [B, T, H, d] -> z [B, T, H, d_head] (LayerNorm belongs to each receiving slot).
        ``heads`` computes only those heads (inputs then hold just them, in that order). The stages
        (:meth:`project`, :meth:`attend`, :meth:`weigh`) are public so that path patching can reuse
        the clean keys, values or pattern when only some inputs of a head changed (docs/patching.md)."""
        q, k, v = (self.project(x, s, heads) for x, s in ((q_in, "q"), (k_in, "k"), (v_in, "v")))
        pattern = self.attend(q, k)
        if hooks:
            pattern = self.hook_pattern(pattern)
        z = self.weigh(pattern, v)
        return self.hook_z(z) if hooks else z

    def project(self, x: torch.Tensor, which: str, heads: list | None = None) -> torch.Tensor:
        """Per-head inputs [..., T, h, d] -> queries, keys or values (``which`` in q, k, v) [..., T, h, d_head]."""
        sel = slice(None) if heads is None else list(heads)
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[which]
        return torch.einsum("...thd,hde->...the", self.ln1(x), W[sel]) + b[sel]

    def attend(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Causal pattern [..., h, Tq, Tk] of queries and keys [..., T, h, d_head] (leading axes broadcast)."""
        T = q.shape[-3]
        scores = torch.matmul(q.transpose(-3, -2), k.transpose(-3, -2).transpose(-1, -2)) / math.sqrt(self.d_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        return scores.masked_fill(causal, float("-inf")).softmax(-1)

    def weigh(self, pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """z [..., T, h, d_head] = pattern [..., h, Tq, Tk] times values [..., T, h, d_head] (axes broadcast)."""
        return torch.matmul(pattern, v.transpose(-3, -2)).transpose(-3, -2)

    def head_outputs(self, z: torch.Tensor, heads: list | None = None) -> torch.Tensor:
        """z [B, T, H, d_head] -> each head's write to the residual [B, T, H, d] (without the o_proj bias)."""
        W = self.o_proj.weight.view(-1, self.n_heads, self.d_head)  # [d, H, dh]
        if heads is not None:
            W = W[:, list(heads)]
        return torch.einsum("bthe,dhe->bthd", z, W)

    def forward(self, resid: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, d = resid.shape
        x = resid.unsqueeze(2).expand(B, T, self.n_heads, d)
        qk = x if pos is None else x + pos.unsqueeze(2)
        z = self.mix(self.hook_q_input(qk), self.hook_k_input(qk), self.hook_v_input(x))
        return self.o_proj(z.reshape(B, T, self.n_heads * self.d_head))


class Block(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["d_model"]
        self.hook_resid_pre = HookPoint()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.has_mlp = bool(cfg["d_mlp"])
        if self.has_mlp:
            self.hook_mlp_in = HookPoint()
            self.ln2 = nn.LayerNorm(d) if cfg["ln"] else nn.Identity()
            self.mlp = nn.Sequential(nn.Linear(d, cfg["d_mlp"]), nn.GELU(), nn.Linear(cfg["d_mlp"], d))
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def mlp_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(x, pos))
        if self.has_mlp:
            x = x + self.hook_mlp_out(self.mlp_fn(self.hook_mlp_in(x)))
        return self.hook_resid_post(x)


class AttnTransformer(nn.Module):
    """GPT-style decoder (tokens [B, T] -> logits [B, T, vocab]); see the module docstring for sites."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        cfg = {**DEFAULTS, **(config or {})}
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise ConfigError(
                f"unknown transformer config keys {sorted(unknown)}", hint=f"known keys: {', '.join(DEFAULTS)}"
            )
        if cfg["pos"] not in ("standard", "shortformer"):
            raise ConfigError(f"pos must be 'standard' or 'shortformer', got {cfg['pos']!r}")
        for k in ("vocab", "n_ctx", "d_model", "n_heads", "d_head", "n_layers"):
            if not isinstance(cfg[k], int) or cfg[k] < 1:
                raise ConfigError(f"transformer config {k} must be a positive int, got {cfg[k]!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg["vocab"], cfg["d_model"])
        self.pos_embed = PosEmbed(cfg["n_ctx"], cfg["d_model"])
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.pos_embed.weight, std=1.0)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.ln_final = nn.LayerNorm(cfg["d_model"]) if cfg["ln"] else nn.Identity()
        self.unembed = nn.Linear(cfg["d_model"], cfg["vocab"])

    @property
    def shortformer(self) -> bool:
        return self.cfg["pos"] == "shortformer"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.dim() != 2
            or tokens.dtype not in (torch.long, torch.int, torch.int64)
        ):
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ConfigError(f"AttnTransformer takes integer tokens [batch, seq], got {got}")
        if tokens.shape[1] > self.cfg["n_ctx"]:
            raise ConfigError(f"sequence length {tokens.shape[1]} exceeds n_ctx={self.cfg['n_ctx']}")
        x = self.embed(tokens)
        pos = self.pos_embed(tokens)
        if self.shortformer:
            for b in self.blocks:
                x = b(x, pos)
        else:
            x = x + pos
            for b in self.blocks:
                x = b(x)
        return self.unembed(self.ln_final(x))

    def canonical_sites(self) -> dict:
        from ..core.sites import Site

        H = self.cfg["n_heads"]
        out = {"embed": Site("embed"), "pos_embed": Site("pos_embed"), "logits": Site("unembed")}
        for l, b in enumerate(self.blocks):
            p = f"blocks.{l}"
            out[f"L{l}.resid_pre"] = Site(f"{p}.hook_resid_pre")
            out[f"L{l}.resid_post"] = Site(f"{p}.hook_resid_post")
            for n in "qkv":
                out[f"L{l}.{n}"] = Site(f"{p}.attn.hook_{n}_input", head_axis=2)
            out[f"L{l}.z"] = Site(f"{p}.attn.o_proj", "input", 0, n_heads=H)
            out[f"L{l}.pattern"] = Site(f"{p}.attn.hook_pattern", head_axis=1)
            out[f"L{l}.attn_out"] = Site(f"{p}.hook_attn_out")
            if b.has_mlp:
                out[f"L{l}.mlp_in"] = Site(f"{p}.hook_mlp_in")
                out[f"L{l}.mlp_out"] = Site(f"{p}.hook_mlp_out")
        return out


def build_transformer(config: dict | None = None) -> AttnTransformer:
    """``build_transformer({"n_layers": 2, "n_heads": 4, "ln": True, "d_mlp": 128})``; defaults in ``DEFAULTS``."""
    return AttnTransformer(config)
