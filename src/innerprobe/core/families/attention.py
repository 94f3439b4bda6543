"""Per-head attention math shared by the rotary families (Llama, Mistral, Qwen2, GPT-NeoX).

``rotary_mix`` returns the ``mix(q_in, k_in, v_in, heads=None)`` of :mod:`.residual`: per-head
slot values ``[B, T, h, d]`` -> z ``[B, T, h, d_head]``, computed with the model's own modules
(its rotary embedding and its ``apply_rotary_pos_emb``), causal mask and optional sliding window.
``project(q_in, k_in, v_in, heads)`` maps slot values to q, k, v ``[B, T, h, d_head]``; under
grouped-query attention it projects query head ``h``'s k/v slots with the weights of K/V head
``h // (n_heads // n_kv_heads)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from .residual import causal_mask


def unwrap(module):
    """The Hugging Face module inside TransformerBridge wrappers (``_original_component`` chains)."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def apply_rotary_of(module) -> Callable:
    """The ``apply_rotary_pos_emb`` of the Hugging Face modelling file that defines ``module``."""
    return sys.modules[type(unwrap(module)).__module__].apply_rotary_pos_emb


def rotary_mix(
    project: Callable, *, rotary_emb, apply_rotary: Callable, scaling: float, window: int | None = None, H: int
) -> Callable:
    def mix(q_in, k_in, v_in, heads=None):
        hs = list(range(H)) if heads is None else list(heads)
        q, k, v = project(q_in, k_in, v_in, hs)
        T = q.shape[1]
        position_ids = torch.arange(T, device=q.device)[None]
        cos, sin = rotary_emb(v, position_ids)
        q, k = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [B, h, T, dh]
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling
        scores = scores.masked_fill(causal_mask(T, q.device, window), torch.finfo(scores.dtype).min)
        pattern = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)  # [B, T, h, dh]

    return mix


def linear_heads(linear, n: int, d_head: int, heads) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight [h, d_head, d_model] and bias [h, d_head] of the given heads of a per-head Linear."""
    W = linear.weight.view(n, d_head, -1)[heads]
    b = None if linear.bias is None else linear.bias.view(n, d_head)[heads]
    return W, b


def project_heads(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, h, d] (one row per head) times W [h, e, d] -> [B, T, h, e]."""
    y = torch.einsum("bthd,hed->bthe", x, W)
    return y if b is None else y + b


def out_heads(linear, n: int, d_head: int) -> Callable:
    """``head_out(z, heads=None)``: z [B, T, h, d_head] -> per-head writes of an output Linear (no bias)."""

    def head_out(z, heads=None):
        W = linear.weight.view(-1, n, d_head)  # [d, H, dh]
        if heads is not None:
            W = W[:, list(heads)]
        return torch.einsum("bthe,dhe->bthd", z, W)

    return head_out
