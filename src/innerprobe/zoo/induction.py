"""Synthetic induction task and its training recipe (the zoo's ``induction-attn2l``).

Each sequence is random filler tokens in which one segment of random length (``seg_min`` to
``seg_max``) is copied from a random earlier offset to a random later offset. The targets of the
second copy, except its first token, are *predictable* by induction (find the earlier occurrence
of the current token, copy the token after it); every other target is uniform random, so its
best loss is ln(vocab). Random offsets keep a model from cheating with a fixed positional lookup.
This is the CPU stand-in for the induction-head experiments of Goldowsky-Dill et al. 2023
(arXiv 2304.05969, §4) and Olsson et al. 2022.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .transformer import DEFAULTS as MODEL_DEFAULTS
from .transformer import AttnTransformer, build_transformer

TASK_DEFAULTS = dict(vocab=64, seq_len=40, seg_min=10, seg_max=20)
TRAIN_DEFAULTS = dict(steps=1000, batch=64, lr=1e-2, weight_decay=0.01, log_every=100, eval_size=512)
MODEL_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "ln", "d_mlp", "pos")


@dataclass
class InductionBatch:
    """tokens [N, T]; ``predictable`` / ``unpredictable`` [N, T-1] flag the *target* of position p
    (token p+1); ``s1``, ``s2``, ``length`` [N]: the segment's two offsets and its length."""

    tokens: torch.Tensor
    predictable: torch.Tensor
    unpredictable: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    length: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx) -> "InductionBatch":
        return InductionBatch(
            self.tokens[idx],
            self.predictable[idx],
            self.unpredictable[idx],
            self.s1[idx],
            self.s2[idx],
            self.length[idx],
        )


def task_config(**params) -> dict:
    cfg = {**TASK_DEFAULTS, **{k: v for k, v in params.items() if k in TASK_DEFAULTS}}
    if not 2 <= cfg["seg_min"] <= cfg["seg_max"] or 2 * cfg["seg_max"] > cfg["seq_len"]:
        raise ConfigError(f"induction task needs 2 <= seg_min <= seg_max and 2*seg_max <= seq_len, got {cfg}")
    return cfg


def sample_induction(
    n: int, generator: torch.Generator, *, structure: InductionBatch | None = None, **task
) -> InductionBatch:
    """``n`` sequences of the induction task. With ``structure``, reuse its offsets and lengths
    (a structure-preserving resample: same positions repeat, different tokens)."""
    cfg = task_config(**task)
    T, V = cfg["seq_len"], cfg["vocab"]
    if structure is not None:
        if len(structure) != n or structure.tokens.shape[1] != T:
            raise ConfigError(f"structure batch has shape {tuple(structure.tokens.shape)}, expected [{n}, {T}]")
        L, s1, s2 = structure.length, structure.s1, structure.s2
    else:
        L = torch.randint(cfg["seg_min"], cfg["seg_max"] + 1, (n,), generator=generator)
        s1 = (torch.rand(n, generator=generator) * (T - 2 * L + 1)).floor().long()
        room = T - L - (s1 + L) + 1
        s2 = s1 + L + (torch.rand(n, generator=generator) * room).floor().long()
    raw = torch.randint(0, V, (n, T), generator=generator)
    pos = torch.arange(T).unsqueeze(0)
    second = (pos >= s2[:, None]) & (pos < (s2 + L)[:, None])
    idx = torch.where(second, pos - s2[:, None] + s1[:, None], pos)
    tokens = raw.gather(1, idx)
    tgt = pos[:, 1:]  # target index of position p is p+1
    predictable = (tgt > s2[:, None]) & (tgt < (s2 + L)[:, None])
    return InductionBatch(tokens, predictable, ~predictable, s1, s2, L)


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy [N, T-1]."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none").view(
        tokens.shape[0], -1
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1)


@torch.no_grad()
def head_scores(model: AttnTransformer, batch: InductionBatch) -> dict:
    """Per-head previous-token score (mean attention from i to i-1), induction score (mean
    attention, at predictable positions, to the token after the earlier copy) and duplicate-token
    score (to the earlier copy itself), as [layer][head]."""
    from ..core.hooks import HookSession

    with HookSession(model, eval=True) as hs:
        caps = [hs.capture(f"L{l}.pattern")[0] for l in range(len(model.blocks))]  # canonical site (docs/sites.md)
        hs.run(batch.tokens)
    prev, ind, dup = [], [], []
    T = batch.tokens.shape[1]
    for cap in caps:
        pat = cap.value  # [N, H, T, T]
        prev.append(pat[:, :, torch.arange(1, T), torch.arange(0, T - 1)].mean((0, 2)).tolist())
        # induction: query p in the second copy attends to p - (s2 - s1) + 1
        N = pat.shape[0]
        p = torch.arange(T - 1).unsqueeze(0).expand(N, -1)
        key = (p - (batch.s2 - batch.s1)[:, None] + 1).clamp(0, T - 1)
        mask = batch.predictable  # [N, T-1], query positions p with predictable targets
        att = pat[:, :, : T - 1, :].gather(3, key[:, None, :, None].expand(N, pat.shape[1], T - 1, 1)).squeeze(-1)
        ind.append(masked_mean(att, mask[:, None, :].expand_as(att), dim=(0, 2)).tolist())
        # duplicate-token: query p in the second copy attends to the earlier copy of its own token
        key_d = (p - (batch.s2 - batch.s1)[:, None]).clamp(0, T - 1)
        att_d = pat[:, :, : T - 1, :].gather(3, key_d[:, None, :, None].expand(N, pat.shape[1], T - 1, 1)).squeeze(-1)
        dup.append(masked_mean(att_d, mask[:, None, :].expand_as(att_d), dim=(0, 2)).tolist())
    return {"prev_token_scores": prev, "induction_scores": ind, "duplicate_scores": dup}


@torch.no_grad()
def evaluate(model: AttnTransformer, batch: InductionBatch) -> dict:
    from ..core.hooks import preserved_state

    with preserved_state(model, eval=True):
        losses = token_losses(model(batch.tokens), batch.tokens)
    V = model.cfg["vocab"]
    return {
        "loss_predictable": float(masked_mean(losses, batch.predictable)),
        "loss_unpredictable": float(masked_mean(losses, batch.unpredictable)),
        "ln_vocab": math.log(V),
    }


def train_induction_model(seed: int, progress: bool = True, **params):
    """Train the induction transformer; returns ``(model, metrics, curve, config)``.

    ``params`` override task keys (vocab, seq_len, seg_min, seg_max), model keys (n_layers,
    n_heads, d_model, d_head, ln, d_mlp, pos) and training keys (steps, batch, lr, weight_decay,
    log_every, eval_size). ``config`` = {"model": build_transformer config, "task", "train",
    "seed"}; rebuild with ``build_transformer(config["model"])``. Reproducible from ``seed``.
    """
    known = set(TASK_DEFAULTS) | set(TRAIN_DEFAULTS) | set(MODEL_KEYS)
    unknown = set(params) - known
    if unknown:
        raise ConfigError(f"unknown induction params {sorted(unknown)}", hint=f"known: {', '.join(sorted(known))}")
    task = task_config(**params)
    train = {**TRAIN_DEFAULTS, **{k: v for k, v in params.items() if k in TRAIN_DEFAULTS}}
    mcfg = {
        **MODEL_DEFAULTS,
        **{k: v for k, v in params.items() if k in MODEL_KEYS},
        "vocab": task["vocab"],
        "n_ctx": task["seq_len"],
    }
    from ..progress import track

    old_threads = torch.get_num_threads()
    # one thread by default: on a shared 2-core machine two threads ran ~20x slower, and a fixed
    # thread count keeps the run reproducible; INNERPROBE_TRAIN_THREADS overrides it
    torch.set_num_threads(int(os.environ.get("INNERPROBE_TRAIN_THREADS", "1")))
    try:
        torch.manual_seed(seed)
        model = build_transformer(mcfg)
        gen = torch.Generator().manual_seed(seed)
        eval_batch = sample_induction(train["eval_size"], torch.Generator().manual_seed(10_000 + seed), **task)
        opt = torch.optim.AdamW(
            model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"], betas=(0.9, 0.98)
        )
        steps = train["steps"]
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        )
        curve = []
        model.train()
        for step in track(range(steps), f"training induction (seed {seed})", enable=None if progress else False):
            b = sample_induction(train["batch"], gen, **task)
            loss = token_losses(model(b.tokens), b.tokens).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if (step + 1) % train["log_every"] == 0 or step == steps - 1:
                ev = evaluate(model, eval_batch[:128])
                curve.append(
                    {"step": step + 1, "loss": float(loss.detach()), **{k: v for k, v in ev.items() if k != "ln_vocab"}}
                )
                model.train()
        model.eval()
        metrics = {**evaluate(model, eval_batch), **head_scores(model, eval_batch)}
    finally:
        torch.set_num_threads(old_threads)
    config = {"model": dict(model.cfg), "task": task, "train": train, "seed": seed}
    return model, metrics, curve, config
