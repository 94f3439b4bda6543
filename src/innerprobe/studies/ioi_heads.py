"""Head-level IOI analysis of a Hugging Face Llama: attention scores, node and path patching, circuits.

The machinery of the ``path-ioi`` study (docs/ioi.md), on the HF modules through
:class:`~innerprobe.core.hooks.HookSession` (every hook removed, train/eval flags restored):

* a head's *output* z is its slice of ``o_proj``'s input ([N, T, H, d_head]); node patching
  replaces z of chosen heads at chosen per-prompt positions (END, S2, S1+1, ...) by its value on
  the counterfactual prompt;
* path patching is Wang et al. 2022's three-step algorithm (arXiv 2211.00593, §3.1 and App. B):
  (1) record every head's z on x_r and x_c; (2) run x_r with the senders' z from x_c and every
  other head frozen at its x_r value (MLPs recompute), recording the receivers' query / key /
  value projections; (3) run x_r with only those receiver inputs, at the receiver positions,
  replaced. Receivers "logits" read step 2's output (the senders' direct effect and its path
  through MLPs). With grouped-query attention one key/value head serves n_heads / n_kv_heads query
  heads, so a key or value receiver is that whole group;
* effects are on the logit difference LD = logit(IO) - logit(S) at END, normalised by the ABC
  effect: ``(mean LD_patched - mean LD_clean) / (mean LD_clean - mean LD_abc)`` (-1: as damaging as
  replacing every name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.hooks import HookSession
from ..errors import ModelError
from ..zoo import ioi

KINDS = ("q", "k", "v")


@dataclass
class Shape:
    n_layers: int
    n_heads: int
    n_kv: int
    d_head: int

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv


def shape_of(model) -> Shape:
    """Layers, query heads, key/value heads and head size of a ``LlamaForCausalLM`` (ModelError otherwise)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(getattr(model, "model", None), "layers") or getattr(cfg, "model_type", "") != "llama":
        raise ModelError(
            f"the IOI analysis needs a Hugging Face LlamaForCausalLM, got {type(model).__name__}",
            hint="use innerprobe.zoo.load('ioi-llama')",
        )
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return Shape(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, d_head)


def _attn(model, layer: int):
    return model.model.layers[layer].self_attn


@torch.no_grad()
def forward(
    model,
    tokens,
    *,
    z_edit=None,
    proj_edit=None,
    capture_z=False,
    capture_proj=(),
    attentions=False,
    capture_final=False,
) -> dict:
    """One forward pass with optional edits; returns ``{"logits", "z", "proj", "attn", "final"}``.

    ``z_edit[layer](z [N,T,H,dh]) -> z`` edits head outputs before ``o_proj``; ``proj_edit[(layer, kind)](out)``
    edits the q / k / v projection outputs ([N, T, heads*dh]); ``capture_proj`` lists (layer, kind) to
    record; ``capture_final`` records the input of the final RMSNorm.
    """
    sh = shape_of(model)
    z_edit, proj_edit = z_edit or {}, proj_edit or {}
    got = {"z": {}, "proj": {}, "final": None}
    with HookSession(model, eval=True) as hs:
        for layer in range(sh.n_layers):
            hs.pre_hook(
                _attn(model, layer).o_proj, _z_hook(layer, sh, z_edit.get(layer), got["z"] if capture_z else None)
            )
            for kind in KINDS:
                fn, cap = proj_edit.get((layer, kind)), (layer, kind) in capture_proj
                if fn is not None or cap:
                    hs.forward_hook(
                        getattr(_attn(model, layer), f"{kind}_proj"),
                        _proj_hook((layer, kind), fn, got["proj"] if cap else None),
                    )
        if capture_final:
            hs.pre_hook(model.model.norm, lambda m, args: got.__setitem__("final", args[0].detach().clone()))
        out = model(input_ids=tokens, output_attentions=attentions, use_cache=False)
    logits = out.logits
    if not torch.isfinite(logits).all():
        raise ModelError(
            "the IOI model produced non-finite logits", hint="the cached weights may be corrupt: retrain with --force"
        )
    return {"logits": logits, "attn": out.attentions if attentions else None, **got}


def _z_hook(layer, sh: Shape, fn, store):
    def hook(module, args):
        x = args[0]
        z = x.view(*x.shape[:-1], sh.n_heads, sh.d_head)
        if store is not None:
            store[layer] = z.detach().clone()
        if fn is None:
            return None
        return (fn(z).reshape(x.shape), *args[1:])

    return hook


def _proj_hook(key, fn, store):
    def hook(module, args, output):
        if store is not None:
            store[key] = output.detach().clone()
        return None if fn is None else fn(output)

    return hook


def pos_mask(batch: ioi.IOIBatch, where: str | None) -> torch.Tensor:
    """[N, T] bool: each prompt's position ``where`` (a key of ``batch.positions``), or every position (None)."""
    N, T = batch.tokens.shape
    if where is None:
        return torch.ones(N, T, dtype=torch.bool)
    m = torch.zeros(N, T, dtype=torch.bool)
    m[torch.arange(N), batch.positions[where]] = True
    return m


def replace_heads(z_src: dict, masks: dict):
    """``z_edit`` that puts ``z_src[layer]`` where ``masks[layer]`` [N, T, H] is True."""

    def make(layer):
        return lambda z: torch.where(masks[layer][..., None], z_src[layer], z)

    return {layer: make(layer) for layer in masks}


class IOIRuns:
    """Clean (x_r) and counterfactual (x_c) runs of one model on one prompt set, and the LD metric."""

    def __init__(self, model, x_r: ioi.IOIBatch, x_c: ioi.IOIBatch):
        if x_r.tokens.shape != x_c.tokens.shape or any(
            not torch.equal(x_r.positions[k], x_c.positions[k]) for k in x_r.positions
        ):
            raise ModelError(
                "x_r and x_c must be aligned prompt by prompt (same shapes and positions)",
                hint="use batch.abc(seed) or batch.swap()",
            )
        self.model, self.x_r, self.x_c, self.shape = model, x_r, x_c, shape_of(model)
        self.clean = forward(model, x_r.tokens, capture_z=True, attentions=True, capture_final=True)
        self.cf = forward(model, x_c.tokens, capture_z=True)
        self.ld_clean = self.ld(self.clean["logits"])
        self.ld_cf = self.ld(self.cf["logits"])
        self.z_mean = {layer: template_mean(z, x_c) for layer, z in self.cf["z"].items()}
        self.scale = float(self.ld_clean.mean() - self.ld_cf.mean())
        if not self.scale > 0:
            raise ModelError(
                f"the model's logit difference is not larger on x_r than on x_c ({self.scale:.3f})",
                hint="the model has not learned IOI; check its card's floors",
            )

    def ld(self, logits) -> torch.Tensor:
        return ioi.logit_diff(logits, self.x_r)

    def effect(self, logits) -> float:
        return float((self.ld(logits).mean() - self.ld_clean.mean()) / self.scale)

    def head_mask(self, heads, where: str | None) -> dict:
        """{layer: [N, T, H] mask} selecting ``heads`` [(layer, head)] at position ``where``."""
        N, T = self.x_r.tokens.shape
        pm = pos_mask(self.x_r, where)
        out = {}
        for layer, head in heads:
            m = out.setdefault(layer, torch.zeros(N, T, self.shape.n_heads, dtype=torch.bool))
            m[:, :, head] |= pm
        return out


def template_mean(z: torch.Tensor, batch: ioi.IOIBatch) -> torch.Tensor:
    """[N, T, ...]: for each prompt, the mean of ``z`` over the prompts of its template (same words at the
    same positions), position by position -- Wang et al.'s mean ablation over the ABC distribution."""
    out = torch.empty_like(z)
    for t in batch.template.unique():
        sel = batch.template == t
        out[sel] = z[sel].mean(0, keepdim=True)
    return out


# ---------------------------------------------------------------------------- attention and DLA

SCORES = {  # name: (query position, key position) -- Wang et al. §3 head classes
    "end_to_io": ("end", "io"),
    "end_to_s2": ("end", "s2"),
    "end_to_s1": ("end", "s1"),
    "s2_to_s1": ("s2", "s1"),
    "s2_to_s1p1": ("s2", "s1p1"),
    "s1p1_to_s1": ("s1p1", "s1"),
}


def attention_scores(runs: IOIRuns) -> dict:
    """Mean attention [L, H] for every :data:`SCORES` pair, and ``chance``: the mean of 1/(q+1), what
    uniform causal attention would give (the level a head must beat to be named after the score)."""
    pos, N = runs.x_r.positions, len(runs.x_r)
    out, chance = {}, {}
    for name, (q, k) in SCORES.items():
        per_layer = [a[torch.arange(N), :, pos[q], pos[k]].mean(0) for a in runs.clean["attn"]]
        out[name] = torch.stack(per_layer).numpy()
        chance[name] = float((1.0 / (pos[q].float() + 1)).mean())
    return {"scores": out, "chance": chance}


def direct_logit_attribution(runs: IOIRuns) -> np.ndarray:
    """[L, H]: each head's output at END through ``o_proj``, the final RMSNorm (scale frozen at the clean
    run) and the unembedding, along W_U[IO] - W_U[S]; mean over prompts (in logits)."""
    m, sh, b = runs.model, runs.shape, runs.x_r
    r = torch.arange(len(b))
    resid = runs.clean["final"][r, b.positions["end"]]  # [N, d]
    norm = m.model.norm
    scale = norm.weight / resid.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()  # [N, d]
    W_U = m.lm_head.weight
    direction = (W_U[b.io] - W_U[b.s]) * scale  # [N, d]
    out = np.zeros((sh.n_layers, sh.n_heads))
    with torch.no_grad():
        for layer in range(sh.n_layers):
            z = runs.clean["z"][layer][r, b.positions["end"]]  # [N, H, dh]
            W_O = _attn(m, layer).o_proj.weight.view(-1, sh.n_heads, sh.d_head)  # [d, H, dh]
            head_out = torch.einsum("nhe,dhe->nhd", z, W_O)
            out[layer] = (head_out * direction[:, None]).sum(-1).mean(0).numpy()
    return out


# ---------------------------------------------------------------------------- node and path patching


def node_patching(runs: IOIRuns, positions=("end", "s2", "s1p1", None)) -> dict:
    """Normalised LD effect [L, H] of patching one head's output from x_c at one position (None: all)."""
    sh = runs.shape
    out = {}
    for where in positions:
        eff = np.zeros((sh.n_layers, sh.n_heads))
        for layer in range(sh.n_layers):
            for head in range(sh.n_heads):
                res = forward(
                    runs.model,
                    runs.x_r.tokens,
                    z_edit=replace_heads(runs.cf["z"], runs.head_mask([(layer, head)], where)),
                )
                eff[layer, head] = runs.effect(res["logits"])
        out[where or "all"] = eff
    return out


def _frozen_senders(runs: IOIRuns, senders) -> dict:
    """z_edit for step 2: every head at its x_r value, the ``senders`` at their x_c value (all positions)."""
    sh = runs.shape
    z = {}
    for layer in range(sh.n_layers):
        zl = runs.clean["z"][layer].clone()
        for sl, sh_ in senders:
            if sl == layer:
                zl[:, :, sh_] = runs.cf["z"][layer][:, :, sh_]
        z[layer] = zl
    return {layer: (lambda _z, v=v: v) for layer, v in z.items()}


def receiver_slices(runs: IOIRuns, receivers, kind: str) -> dict:
    """{layer: [projection column indices]} read by query heads ``receivers`` in slot ``kind``
    (a key / value receiver is its whole GQA group's shared K/V head)."""
    sh = runs.shape
    cols: dict[int, set] = {}
    for layer, head in receivers:
        unit = head if kind == "q" else head // sh.group
        cols.setdefault(layer, set()).update(range(unit * sh.d_head, (unit + 1) * sh.d_head))
    return {layer: sorted(c) for layer, c in cols.items()}


def path_patch(runs: IOIRuns, senders, receivers=None, kind: str = "q", where: str | None = "end") -> float:
    """Normalised LD effect of the paths senders -> receivers (their ``kind`` input at position ``where``);
    ``receivers=None``: senders -> logits (direct and through MLPs, other heads frozen)."""
    senders = list(senders)
    step2 = forward(
        runs.model,
        runs.x_r.tokens,
        z_edit=_frozen_senders(runs, senders),
        capture_proj=[] if receivers is None else [(layer, kind) for layer, _ in receivers],
    )
    if receivers is None:
        return runs.effect(step2["logits"])
    pm = pos_mask(runs.x_r, where)[..., None]
    edits = {}
    for layer, cols in receiver_slices(runs, receivers, kind).items():
        new = step2["proj"][(layer, kind)]

        def edit(out, new=new, cols=torch.tensor(cols)):
            colmask = torch.zeros(out.shape[-1], dtype=torch.bool)
            colmask[cols] = True
            return torch.where(pm & colmask, new, out)

        edits[(layer, kind)] = edit
    return runs.effect(forward(runs.model, runs.x_r.tokens, proj_edit=edits)["logits"])


def path_patch_all(runs: IOIRuns, receivers=None, kind: str = "q", where: str | None = "end") -> np.ndarray:
    """[L, H]: :func:`path_patch` with each head as the only sender (heads at or above the receivers'
    lowest layer cannot send to them and get NaN)."""
    sh = runs.shape
    lowest = min((layer for layer, _ in receivers), default=sh.n_layers) if receivers else sh.n_layers
    out = np.full((sh.n_layers, sh.n_heads), np.nan)
    for layer in range(min(lowest, sh.n_layers)):
        for head in range(sh.n_heads):
            out[layer, head] = path_patch(runs, [(layer, head)], receivers, kind, where)
    return out


def circuit_ld(runs: IOIRuns, keep: dict, drop: dict | None = None, ablation: str = "mean") -> torch.Tensor:
    """Per-prompt LD with every head output ablated except the (head, position) nodes in ``keep``
    ({position name: [(layer, head)]}; position None = every position) and not in ``drop``.
    ``ablation="mean"``: replaced by its mean over the ABC prompts of the same template (Wang et al.
    §3); ``"resample"``: by its value on the paired ABC prompt (which injects other names)."""
    sh = runs.shape
    N, T = runs.x_r.tokens.shape
    kept = {layer: torch.zeros(N, T, sh.n_heads, dtype=torch.bool) for layer in range(sh.n_layers)}
    for where, heads in keep.items():
        for layer, m in runs.head_mask(heads, where).items():
            kept[layer] |= m
    for where, heads in (drop or {}).items():
        for layer, m in runs.head_mask(heads, where).items():
            kept[layer] &= ~m
    masks = {layer: ~m for layer, m in kept.items()}
    if ablation not in ("mean", "resample"):
        raise ModelError(f"ablation must be 'mean' or 'resample', got {ablation!r}")
    src = runs.z_mean if ablation == "mean" else runs.cf["z"]
    return runs.ld(forward(runs.model, runs.x_r.tokens, z_edit=replace_heads(src, masks))["logits"])
