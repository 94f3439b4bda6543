"""Study ``lm-probes``: APEX and excitation pullbacks on the IOI zoo model (docs/apex.md "Language models").

On ``ioi-llama`` (a 4-layer HF Llama trained on indirect-object-identification prompts) and
held-out test prompts, with the answer read at each prompt's END position:

* **APEX regularity** (Ren, Luo, Li 2026, arXiv 2602.03586; docs/apex.md, 'Definitions' and the digits
  ``apex-regularity`` study): escape noise per prompt, with noise after every MLP SiLU and the
  readout "IO vs S" (the two candidate names), against a regularity proxy, the clean per-prompt
  loss -log p(IO | prompt) over the whole vocabulary. Same baselines as the digits study: input
  (token-embedding) noise escape and the clean logit margin (here IO - S). Spearman rho with the
  negative loss, bootstrap CIs over prompts, and the paired difference APEX - baseline.
* **Large-noise bias** (docs/apex.md, 'Definitions'): at the largest sigma, the share of passes predicting S,
  and the share predicting the name mentioned first (position bias), each against 0.5.
* **Token attributions on IO - S** (Satkiewicz 2025, arXiv 2507.22832; docs/pullback.md): the
  pullback (successor preset, functional gates), gradient (L2 norm per token), input x gradient and
  integrated gradients (per-token sums), all on the logit difference at END. Pointing game (the
  top token is the IO name) and relevance mass (share of the positive relevance on the IO token),
  with paired CIs of pullback minus each baseline (core/stats.py).

``run(out, seeds=3, quick=False)``: 200 prompts, 16 sigmas, K = 32 per seed; quick: seed 0, 32 prompts,
8 sigmas, K = 16 (the APEX sweeps take most of its time; see docs/apex.md for measured times).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core.stats import bootstrap, paired_difference, proportion
from ..report.sections import Section
from ..results import Result, provenance, row

MODEL = "ioi-llama"


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _rho_diff(a, b, proxy) -> float:
    return _spearman(a, proxy) - _spearman(b, proxy)


def _clean(model, batch) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt loss -log p(IO) at END (whole vocabulary) and logit difference IO - S."""
    from ..zoo import ioi

    with torch.no_grad():
        logits = model(batch.tokens, use_cache=False).logits
    end = ioi.end_logits(logits, batch)
    loss = -end.log_softmax(-1)[torch.arange(len(batch)), batch.io]
    return loss.numpy().astype(float), ioi.logit_diff(logits, batch).numpy().astype(float)


def _apex_part(model, batch, grid, K: int, seed: int, rows: list, quick: bool) -> dict:
    """Escape noise (MLP noise and input noise) vs the loss proxy; large-noise name / position bias."""
    from ..perturb import Engine, escape_early_exit

    cand = torch.stack([batch.io, batch.s], 1)  # column 0 = IO, 1 = S
    kw = dict(samples=K, relative=True, position=batch.positions["end"], tokens=cand, seed=seed, noise_cache_mb=256)
    t0 = time.perf_counter()
    engines = {"mlp": Engine(model, batch.tokens, **kw), "input": Engine(model, batch.tokens, sites=[":input"], **kw)}
    # early exit: a prompt leaves once its escape is known (identical to the full sweep, apex.md §4.4)
    esc = {k: escape_early_exit(model, batch.tokens, grid, engine=e) for k, e in engines.items()}
    last = engines["mlp"].counts(grid[-1:])[:, 0]  # [N, C'] at the largest sigma, same noise as a full sweep
    seconds = time.perf_counter() - t0
    loss, ld = _clean(model, batch)
    proxy = -loss
    scores = {"apex_escape": esc["mlp"].sigma, "input_noise_escape": esc["input"].sigma, "logit_margin": ld}
    m = {"model": MODEL, "seeds": [seed]}
    out = {"rho": {}}
    for name, sc in scores.items():
        ci = bootstrap(sc, _spearman, paired=(proxy,), n_resamples=600 if quick else 2000, seed=seed)
        rows.append(row("spearman_vs_neg_loss", ci, condition={"score": name}, **m))
        out["rho"][name] = ci.estimate
    for base in ("input_noise_escape", "logit_margin"):
        ci = bootstrap(
            scores["apex_escape"],
            _rho_diff,
            paired=(scores[base], proxy),
            n_resamples=600 if quick else 2000,
            seed=seed,
        )
        rows.append(row("spearman_difference_apex_minus_baseline", ci, condition={"baseline": base}, **m))
    for name, e in esc.items():
        rates = e.rates()
        rows.append(row("right_censored_share", rates["right_censored"], condition={"noise": name}, **m))
        rows.append(row("left_censored_share", rates["left_censored"], condition={"noise": name}, **m))
    cls = np.asarray(engines["mlp"].classes)
    share = np.zeros((len(batch), 2))
    for j in (0, 1):  # candidate columns (a non-finite column, if any, counts for neither)
        share[:, j] = last[:, : len(cls)][:, cls == j].sum(-1) / K
    first_is_io = (batch.positions["io"] < batch.positions["s1"]).numpy()
    p_first = np.where(first_is_io, share[:, 0], share[:, 1])
    sig_max = {"sigma_over_rms": float(grid[-1])}
    rows.append(row("large_noise_share_S", bootstrap(share[:, 1], seed=seed), condition=sig_max, **m))
    rows.append(row("large_noise_share_first_named", bootstrap(p_first, seed=seed), condition=sig_max, **m))
    rows.append(row("apex_seconds", seconds, condition={"prompts": len(batch), "sigmas": len(grid), "K": K}, **m))
    out.update(
        scores=scores,
        proxy=proxy,
        share_S=float(share[:, 1].mean()),
        share_first=float(p_first.mean()),
        sites=[str(r) for r in engines["mlp"].rsites],
        input_site=[str(r) for r in engines["input"].rsites],
        seconds=seconds,
    )
    return out


def _relevance(model, batch, quick: bool) -> dict[str, np.ndarray]:
    """Per-token relevance [N, T] of IO - S at END for each method (padding after END set to NaN)."""
    from ..pullback import ExcitationPullback, Gradient, InputXGradient, IntegratedGradients, LogitDiff

    target = LogitDiff(batch.io, batch.s, position=batch.positions["end"])
    methods = {
        "pullback": (ExcitationPullback(model, preset="successor", functional=True), "dot"),
        "gradient": (Gradient(model), "norm"),
        "input_x_gradient": (InputXGradient(model), "sum"),
        "integrated_gradients": (IntegratedGradients(model, steps=8 if quick else 32), "sum"),
    }
    T = batch.tokens.shape[1]
    valid = torch.arange(T)[None] <= batch.positions["end"][:, None]
    out = {}
    for name, (method, how) in methods.items():
        r = method.attribute(batch.tokens, target=target, reduce=how)
        out[name] = torch.where(valid, r.double(), torch.nan).numpy()
    return out


def _pointing(rel: np.ndarray, io_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit: top token is IO [N], mass: IO's share of the positive relevance [N])."""
    filled = np.where(np.isnan(rel), -np.inf, rel)
    hit = (filled.argmax(1) == io_pos).astype(float)
    pos = np.where(np.isnan(rel), 0.0, np.clip(rel, 0, None))
    mass = pos[np.arange(len(rel)), io_pos] / np.maximum(pos.sum(1), 1e-30)
    return hit, mass


def _attribution_part(model, batch, seed: int, rows: list, quick: bool) -> dict:
    rel = _relevance(model, batch, quick)
    io_pos = batch.positions["io"].numpy()
    m = {"model": MODEL, "seeds": [seed]}
    hits, masses = {}, {}
    for name, r in rel.items():
        hits[name], masses[name] = _pointing(r, io_pos)
        rows.append(
            row("pointing_game_io", proportion(int(hits[name].sum()), len(io_pos)), condition={"method": name}, **m)
        )
        rows.append(row("relevance_mass_io", bootstrap(masses[name], seed=seed), condition={"method": name}, **m))
    for base in ("gradient", "input_x_gradient", "integrated_gradients"):
        for metric, vals in (("pointing_game_io", hits), ("relevance_mass_io", masses)):
            ci = paired_difference(vals["pullback"], vals[base], method="bootstrap", seed=seed)
            rows.append(row(f"{metric}_difference_pullback_minus_baseline", ci, condition={"baseline": base}, **m))
    return {
        "hit": {k: float(v.mean()) for k, v in hits.items()},
        "mass": {k: float(v.mean()) for k, v in masses.items()},
    }


def _figure(apx: dict, att: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].scatter(apx["proxy"], apx["scores"]["apex_escape"], s=10)
    ax[0].set(
        xscale="linear",
        yscale="log",
        xlabel="-loss (log p(IO))",
        ylabel="APEX escape sigma / RMS",
        title=f"rho = {apx['rho']['apex_escape']:.2f}",
    )
    names = list(att["hit"])
    ax[1].bar(range(len(names)), [att["hit"][n] for n in names])
    ax[1].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax[1].set(ylabel="pointing game: top token = IO", ylim=(0, 1))
    fig.tight_layout()
    path = out / "lm_probes.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run(out: Path, seeds: int = 3, quick: bool = False) -> Result:
    """APEX regularity and name bias, and token attributions on IO - S, on ioi-llama (see the module docstring)."""
    from .. import zoo
    from ..zoo import ioi

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    S = [0] if quick else list(range(max(1, int(seeds))))
    n, K = (32, 16) if quick else (200, 32)
    grid = np.geomspace(0.1, 200, 8 if quick else 16)
    rows: list[dict] = []
    per = []
    t0 = time.perf_counter()
    for s in S:
        model, _ = zoo.load(MODEL, seed=s)
        batch = ioi.sample(n, seed=1000 + s, split="test")
        apx = _apex_part(model, batch, grid, K, s, rows, quick)
        att = _attribution_part(model, batch, s, rows, quick)
        per.append((s, apx, att))
    seconds = time.perf_counter() - t0
    s0, apx0, att0 = per[0]
    fig = _figure(apx0, att0, out)
    sec = Section(
        f"APEX and pullbacks on a language model: {MODEL}",
        order=36,
        paragraphs=[
            f"{n} held-out IOI test prompts per seed (seeds {S}), readout at each prompt's END over the two names (IO, "
            f"S); "
            f"APEX noise after every MLP SiLU ({len(apx0['sites'])} sites), sigma relative to each site's RMS, "
            f"{len(grid)}-point grid {grid[0]:.3g}..{grid[-1]:.3g}, K = {K}; input noise at "
            f"{', '.join(apx0['input_site'])}.",
            "Regularity proxy: the clean per-prompt loss -log p(IO). Seed "
            + str(s0)
            + ": Spearman rho with -loss: APEX "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in apx0["rho"].items())
            + ".",
            f"Largest sigma: share of passes predicting S {apx0['share_S']:.3f}, predicting the first-named person "
            f"{apx0['share_first']:.3f} (0.5 = no bias).",
            "Pointing game (top token is IO), seed "
            + str(s0)
            + ": "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in att0["hit"].items())
            + "; relevance mass on IO: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in att0["mass"].items())
            + ".",
        ],
    )
    sec.figure(fig, "APEX escape noise against -loss per prompt, and pointing-game hit rates per attribution method")
    sec.rows = rows
    sec.save(out)
    res = Result(
        "study:lm-probes",
        rows=rows,
        data={"seeds": S, "seconds": seconds, "prompts": n},
        provenance=provenance(
            seed=S[0], model=MODEL, config={"grid": grid.tolist(), "K": K, "prompts": n, "quick": quick}
        ),
    )
    res.save(out / "summary.json")
    return res
