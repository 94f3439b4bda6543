"""The zoo's IOI language model: a small Hugging Face ``LlamaForCausalLM`` trained on the CPU.

Architecture (Touvron et al. 2023, arXiv 2302.13971; grouped-query attention: Ainslie et al.
2023, arXiv 2305.13245): RMSNorm, rotary position embeddings, SwiGLU MLPs, 8 query heads sharing
2 key/value heads, 4 layers, built from a ``LlamaConfig`` with random weights (nothing is
downloaded; loading reads the zoo cache's safetensors only). ``attn_implementation="eager"`` so
attention probabilities are real tensors that hooks and ``output_attentions`` see.

Training is next-token prediction on a mixture of IOI prompts of the *train* split
(:mod:`innerprobe.zoo.ioi`; loss on every token plus ``end_weight`` x the loss of the answer at
END) and background sentences over every name (``background_frac`` of each batch). Floors
(Wang et al. 2022's metric, on held-out names and held-out templates, the ``test`` split):
logit difference IO - S positive on >= 90% of prompts and the IO name the top token of the whole
vocabulary on >= 80%. Docs: docs/zoo.md ("IOI").
"""

from __future__ import annotations

import hashlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import ioi
from .recipes import Floor, Recipe, Trained
from .training import default_threads, num_threads

MODEL_DEFAULTS = {
    "d_model": 64,
    "n_layers": 4,
    "n_heads": 8,
    "n_kv_heads": 2,
    "head_dim": 16,
    "d_mlp": 192,
    "rope_theta": 10000.0,
}
TRAIN_DEFAULTS = {
    "steps": 1500,
    "batch": 64,
    "lr": 3e-3,
    "weight_decay": 0.05,
    "warmup": 100,
    "background_frac": 0.4,
    "end_weight": 1.0,
    "eval_size": 400,
    "log_every": 250,
}
FLOORS = (("test_logit_diff_positive", 0.9), ("test_io_top1", 0.8))


def vocab_hash() -> str:
    """Short hash of the IOI vocabulary: a model trained on another vocabulary is another model."""
    return hashlib.sha256("\n".join(ioi.VOCAB).encode()).hexdigest()[:12]


def model_config(params: dict) -> dict:
    """The card's config: ``LlamaConfig`` keyword arguments plus the vocabulary it was trained on."""
    p = {**MODEL_DEFAULTS, **{k: v for k, v in params.items() if k in MODEL_DEFAULTS}}
    if p["n_heads"] % p["n_kv_heads"]:
        raise ConfigError(
            f"n_heads={p['n_heads']} is not a multiple of n_kv_heads={p['n_kv_heads']}",
            hint="grouped-query attention shares each K/V head among n_heads/n_kv_heads query heads",
        )
    llama = {
        "vocab_size": len(ioi.VOCAB),
        "hidden_size": p["d_model"],
        "intermediate_size": p["d_mlp"],
        "num_hidden_layers": p["n_layers"],
        "num_attention_heads": p["n_heads"],
        "num_key_value_heads": p["n_kv_heads"],
        "head_dim": p["head_dim"],
        "max_position_embeddings": 64,
        "rope_theta": p["rope_theta"],
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "use_cache": False,
        "pad_token_id": ioi.PAD_ID,
        "bos_token_id": ioi.BOS_ID,
        "eos_token_id": None,
    }
    return {"llama": llama, "vocab_sha": vocab_hash(), "vocab_size": len(ioi.VOCAB)}


def build_llama(config: dict) -> nn.Module:
    """A ``LlamaForCausalLM`` from the card's config (random weights; eval mode)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ModuleNotFoundError:
        raise ConfigError(
            "the IOI zoo model needs the 'transformers' package", hint="pip install 'innerprobe[hf]' (or: make setup)"
        ) from None
    if config.get("vocab_sha") != vocab_hash():
        raise ConfigError(
            "this IOI model was trained on another vocabulary than innerprobe.zoo.ioi's",
            hint="retrain it: innerprobe zoo train ioi-llama --force",
        )
    cfg = LlamaConfig(**config["llama"], attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens).logits


def _batch(step: int, seed: int, train: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, ioi.IOIBatch]:
    n_bg = round(train["batch"] * train["background_frac"])
    b = ioi.sample(train["batch"] - n_bg, seed=seed * 1_000_003 + step, split="train")
    toks = [b.tokens] + ([ioi.background(n_bg, gen)] if n_bg else [])
    T = max(t.shape[1] for t in toks)
    x = torch.cat([F.pad(t, (0, T - t.shape[1]), value=ioi.PAD_ID) for t in toks])
    return x, b.positions["end"], b


def _loss(logits: torch.Tensor, x: torch.Tensor, b: ioi.IOIBatch, end_weight: float) -> torch.Tensor:
    V = logits.shape[-1]
    tgt = x[:, 1:].clone()
    tgt[tgt == ioi.PAD_ID] = -100
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    if not end_weight:
        return lm
    n = len(b)
    end = logits[torch.arange(n), b.positions["end"]]
    return lm + end_weight * F.cross_entropy(end, b.io)


@torch.no_grad()
def evaluate(model: nn.Module, batch: ioi.IOIBatch) -> dict:
    """IOI metrics of ``model`` on ``batch`` (see :func:`innerprobe.zoo.ioi.accuracy_metrics`)."""
    from ..core.hooks import preserved_state

    with preserved_state(model, eval=True):
        return ioi.accuracy_metrics(logits_of(model, batch.tokens), batch)


def _schedule(train: dict):
    steps, warm = train["steps"], max(1, train["warmup"])
    return lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def train_ioi_model(seed: int, params: dict, progress: bool | None = None):
    """Train the IOI Llama for ``seed``; returns ``(model, metrics, curve, config, cpu_seconds, wall_seconds)``."""
    from ..progress import track

    config = model_config(params)
    train = {**TRAIN_DEFAULTS, **{k: v for k, v in params.items() if k in TRAIN_DEFAULTS}}
    dev, test = (
        ioi.sample(train["eval_size"], 50_000 + seed, "dev"),
        ioi.sample(train["eval_size"], 60_000 + seed, "test"),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    with num_threads(default_threads()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_llama(config)
        gen = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.AdamW(
            model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"], betas=(0.9, 0.98)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(train))
        curve = []
        model.train()
        for step in track(range(train["steps"]), f"training ioi-llama (seed {seed})", enable=progress):
            x, _, b = _batch(step, seed, train, gen)
            loss = _loss(logits_of(model, x), x, b, train["end_weight"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if (step + 1) % train["log_every"] == 0 or step + 1 == train["steps"]:
                ev = evaluate(model, dev[:200])
                curve.append(
                    {
                        "step": step + 1,
                        "loss": float(loss.detach()),
                        **{f"dev_{k}": v for k, v in ev.items() if k != "n"},
                    }
                )
                model.train()
        model.eval()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        trn = ioi.sample(train["eval_size"], 70_000 + seed, "train")
        metrics = {
            **{f"test_{k}": v for k, v in evaluate(model, test).items()},
            **{f"dev_{k}": v for k, v in evaluate(model, dev).items()},
            **{f"train_{k}": v for k, v in evaluate(model, trn).items()},
        }
    return model, metrics, curve, {**config, "train": train}, cpu, wall


class IOIRecipe(Recipe):
    """A zoo recipe whose model is the IOI Llama (``kind="ioi"``); data: :func:`innerprobe.zoo.ioi.sample`."""

    def data(self, seed, params):
        raise ConfigError(
            f"recipe {self.name!r} makes its data on the fly", hint="use innerprobe.zoo.ioi.sample(n, seed, split)"
        )

    def config(self, params: dict) -> dict:
        train = {**TRAIN_DEFAULTS, **{k: v for k, v in params.items() if k in TRAIN_DEFAULTS}}
        return {**model_config(params), "train": train}

    def build(self, config: dict) -> nn.Module:
        return build_llama(config)

    def train(self, seed: int, params: dict, progress: bool | None = None) -> Trained:
        model, metrics, curve, config, cpu, wall = train_ioi_model(int(seed), params, progress)
        data = {
            "dataset": "templated IOI prompts (innerprobe.zoo.ioi) + background sentences over every name",
            "train_split": "train names x train templates",
            "floors_split": "test: held-out names x held-out templates",
            "n_templates": {s: len(ioi.TEMPLATES[s]) for s in ioi.SPLITS},
            "n_names": {s: len(ioi.split_names(s)) for s in ioi.SPLITS},
            "eval_seeds": {"dev": 50_000 + int(seed), "test": 60_000 + int(seed), "train": 70_000 + int(seed)},
        }
        return Trained(model, metrics, curve, config, data, wall, cpu)


def _floors(params: dict, config: dict) -> list[Floor]:
    return [Floor(m, ">=", t) for m, t in FLOORS]


def ioi_recipes() -> list[Recipe]:
    """``ioi-llama`` (GQA, 8 query over 2 K/V heads) and ``ioi-llama-mha`` (8 K/V heads: no sharing)."""
    base = {**MODEL_DEFAULTS, **TRAIN_DEFAULTS}
    return [
        IOIRecipe(
            "ioi-llama",
            "4-layer Llama (RMSNorm, rotary, GQA 8q/2kv, SwiGLU) trained on IOI prompts (held-out names/templates)",
            "ioi",
            1,
            dict(base),
            None,
            _floors,
        ),
        IOIRecipe(
            "ioi-llama-mha",
            "as ioi-llama with multi-head attention (8 K/V heads, no grouping): does GQA change the circuit?",
            "ioi",
            1,
            {**base, "n_kv_heads": 8},
            None,
            _floors,
        ),
    ]
