"""APEX case studies (Ren, Luo, Li 2026, arXiv 2602.03586; definitions in docs/apex.md).

* ``apex-transition``  (claim T): D(sigma) for all-layer / first-layer / last-layer noise.
* ``apex-regularity``  (claims A, A', A''): escape noise vs a C-score proxy and flipped-label AUROC,
  next to input-noise escape and the clean logit margin; wall-clock vs the proxy.
* ``apex-random-labels`` (claim B): escape noise of true-label vs random-label models.
* ``apex-transitions`` (claim C): is the escape class the semantically nearest class?
* ``apex-backdoor``    (claim D): moved to :mod:`innerprobe.studies.apex_backdoor`.

Each ``run(out, seeds=3, quick=False)`` writes summary.json (``{"rows": [...]}``: headline rows with
seeds and 95% CIs, docs/results.md), section.json and PNGs. ``quick`` uses digits models only, one seed and fewer inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.plotting import heatmap, new_figure, savefig, style_axes
from ..core.stats import bootstrap, proportion
from ..report.sections import Section
from .apex_common import GRID, GRID_QUICK, Rows, available, data, finish, load, mean_rms, run_apex

K = 32


def _seeds(seeds: int, quick: bool) -> list[int]:
    return [0] if quick else list(range(max(1, int(seeds))))


def _escape(run, sigmas):
    from ..perturb import escape_noise

    return escape_noise(run["counts"], sigmas, run["y0"])


# ============================================================================ T: transition
def run_transition(out: Path, seeds: int = 3, quick: bool = False):
    """D(sigma) for noise after all / the first / the last hidden nonlinearity; half-way points vs RMS."""
    from ..perturb import default_sites, half_way, sample_dependence
    from ..perturb.plots import sample_dependence_plot

    out = Path(out)
    archs = ["digits-mlp"] if quick else ["digits-mlp", "digits-cnn"]
    S = _seeds(seeds, quick)
    grid = np.geomspace(0.02, 500, 16 if quick else 31)
    N = 100 if quick else 300
    heads, rows, figs = Rows(), [], []
    for arch in archs:
        per = {c: [] for c in ("all", "first", "last")}
        rel = {c: [] for c in ("all", "first", "last")}
        for s in S:
            model, _ = load(arch, s)
            x = data(arch, s).x_test[:N]
            names = [str(t) for t in default_sites(model)]
            curves, floors = {}, {}
            for cfg, sites in (("all", None), ("first", [names[0]]), ("last", [names[-1]])):
                run = run_apex(arch, s, x, grid, samples=K, sites=sites)
                D, fl = sample_dependence(run["counts"])
                hw = half_way(grid, D, fl)
                per[cfg].append(hw)
                rel[cfg].append(hw / mean_rms(run))
                curves[f"{cfg} ({', '.join(run['sites'])})"], floors[f"{cfg} ({', '.join(run['sites'])})"] = D, fl
                rows.append(
                    [
                        arch,
                        s,
                        cfg,
                        ", ".join(run["sites"]),
                        round(mean_rms(run), 4),
                        round(float(D[0]), 3),
                        round(float(D[-1]), 3),
                        round(float(fl[-1]), 3),
                        round(hw, 4),
                        round(hw / mean_rms(run), 3),
                    ]
                )
            if s == S[0]:
                figs.append(
                    sample_dependence_plot(
                        curves, grid, out / f"transition_{arch}.png", floors=floors, title=f"D(sigma), {arch} seed {s}"
                    )
                )
        for cfg in per:
            heads.add("half_way_sigma", per[cfg], S, model=arch, condition={"noise": cfg})
            heads.add("half_way_sigma_over_rms", rel[cfg], S, model=arch, condition={"noise": cfg})
        for cfg in ("last", "first"):
            heads.add(
                "half_way_ratio",
                [a / b for a, b in zip(per[cfg], per["all"])],
                S,
                model=arch,
                condition={"noise": cfg, "reference": "all"},
            )
    sec = Section(
        "APEX: from sample-dependent to model-dependent (claim T)",
        order=31,
        paragraphs=[
            f"D(sigma) = mean over {N} test inputs of TV(p_sigma(.|x), pbar_sigma), K = {K}, absolute sigma grid "
            f"{grid[0]:.2g}..{grid[-1]:.3g} ({len(grid)} points). Dashed: Monte Carlo floor. 'Half-way' is where D "
            f"crosses the "
            "midpoint between D at the smallest sigma and its floor; it is also given relative to the clean RMS of the "
            "noised activations."
        ],
    )
    sec.table(
        "Per model and injection site",
        ["model", "seed", "noise", "sites", "RMS", "D(min)", "D(max)", "floor", "half-way", "half-way/RMS"],
        rows,
    )
    for f in figs:
        sec.figure(f, f"D(sigma) for all-, first- and last-layer noise ({f.stem.split('_', 1)[1]})")
    return finish(
        out,
        "study:apex-transition",
        heads,
        sec,
        seeds=S,
        tables={
            "runs": [
                dict(
                    zip(
                        [
                            "model",
                            "seed",
                            "noise",
                            "sites",
                            "rms",
                            "D_min",
                            "D_max",
                            "floor",
                            "half_way",
                            "half_way_over_rms",
                        ],
                        r,
                    )
                )
                for r in rows
            ]
        },
        config={"grid": grid.tolist(), "K": K, "N": N, "archs": archs},
    )


# ============================================================================ A: regularity
def cscore_proxy(x, y, n_models: int, epochs: int, seed: int = 1234):
    """Held-out probability of the true label over ``n_models`` MLPs each trained on a random 75% subset
    (a C-score proxy, Jiang et al. 2021). Returns (score [N] with NaN where never held out, seconds)."""
    import time

    import torch

    from ..zoo import models as zm
    from ..zoo.training import fit

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    N = len(x)
    tot, cnt = np.zeros(N), np.zeros(N)
    for m in range(n_models):
        perm = rng.permutation(N)
        tr, ho = perm[: int(0.75 * N)], perm[int(0.75 * N) :]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + m)
            net = zm.mlp(in_shape=tuple(x.shape[1:]), hidden=(128, 128))
        fit(net, x[tr], y[tr], epochs=epochs, lr=2e-3, batch_size=64, seed=seed + m, progress=False)
        net.eval()
        with torch.no_grad():
            p = torch.softmax(net(x[ho]), -1)[torch.arange(len(ho)), y[ho]].numpy()
        tot[ho] += p
        cnt[ho] += 1
    with np.errstate(invalid="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan), time.perf_counter() - t0


def _spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


def _auroc(score, label):
    from sklearn.metrics import roc_auc_score

    if len(np.unique(label)) < 2:
        raise ValueError("one class")
    return roc_auc_score(label, score)


SCORES = {"apex_escape": "APEX escape", "input_noise_escape": "input-noise escape", "logit_margin": "logit margin"}


def _regularity_scores(name: str, s: int, x, grid) -> tuple[dict, dict]:
    """Per-sample scores (APEX escape, input-noise escape, clean logit margin) and the APEX run."""
    from ..perturb import logit_margin

    run = run_apex(name, s, x, grid, samples=K)
    inp = run_apex(name, s, x, grid, samples=K, sites=[":input"])
    return {
        "apex_escape": _escape(run, grid).sigma,
        "input_noise_escape": _escape(inp, grid).sigma,
        "logit_margin": logit_margin(run["clean_logits"], run["y0"]),
    }, run


def _flipped_mask(ln, n: int) -> np.ndarray:
    flipped = np.zeros(n, bool)
    fi = np.asarray(ln.meta["flipped_indices"], int)
    flipped[fi[fi < n]] = True
    return flipped


def _regularity_seed(s: int, x, cs, ok, grid, n_probe: int, rows: list) -> dict:
    """One seed: Spearman rho of each score with the C-score proxy, flipped-label AUROC, escape medians."""
    scores, run = _regularity_scores("digits-mlp", s, x, grid)
    out = {
        "seconds": run["seconds"],
        "rho": {},
        "auc": {},
        "scatter": (scores["apex_escape"][ok], cs[ok], _escape(run, grid).censor[ok]),
    }
    for m in SCORES:
        c = bootstrap(scores[m][ok], _spearman, paired=(cs[ok],), n_resamples=300, seed=s)
        out["rho"][m] = c.estimate
        rows.append(
            {
                "setting": "clean_labels",
                "seed": s,
                "score": m,
                "figure": "spearman_vs_cscore_proxy",
                "value": c.estimate,
                "lo": c.lo,
                "hi": c.hi,
            }
        )
    ln = data("digits-mlp-label-noise", s)  # label noise: flipped training samples should escape earlier
    xl, flipped = ln.x_train[:n_probe], _flipped_mask(ln, n_probe)
    lscores, r1 = _regularity_scores("digits-mlp-label-noise", s, xl, grid)
    for m in SCORES:
        c = bootstrap(-lscores[m], _auroc, paired=(flipped.astype(int),), n_resamples=300, seed=s)
        out["auc"][m] = c.estimate
        rows.append(
            {
                "setting": "label_noise_10pct",
                "seed": s,
                "score": m,
                "figure": "flipped_label_auroc",
                "value": c.estimate,
                "lo": c.lo,
                "hi": c.hi,
                "flipped": int(flipped.sum()),
            }
        )
    e = _escape(r1, grid)
    out["median_clean"], out["median_flipped"] = float(np.median(e.sigma[~flipped])), float(np.median(e.sigma[flipped]))
    return out


def _regularity_figure(scatter, seed: int, out: Path) -> Path:
    fig, ax = new_figure(size=(4.6, 3.2))
    sig, c, cen = scatter
    ax.scatter(sig[cen == 0], c[cen == 0], s=5, alpha=0.5, label="escaped")
    ax.scatter(sig[cen != 0], c[cen != 0], s=5, alpha=0.5, label="censored")
    ax.set_xscale("log")
    style_axes(
        ax,
        title=f"escape noise vs C-score proxy (seed {seed})",
        xlabel="APEX escape sigma",
        ylabel="held-out p(true label)",
    )
    ax.legend(fontsize=7, frameon=False)
    return savefig(fig, out / "regularity_scatter.png")


def run_regularity(out: Path, seeds: int = 3, quick: bool = False):
    """Escape noise vs a C-score proxy (Spearman rho) and vs flipped labels (AUROC), with baselines."""
    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    base = data("digits-mlp", 0)
    n_probe = 300 if quick else len(base.x_train)
    x = base.x_train[:n_probe]
    M, epochs = (6, 15) if quick else (20, 60)
    cs, proxy_sec = cscore_proxy(base.x_train, base.y_train, M, epochs)
    cs = cs[:n_probe]
    ok = np.isfinite(cs)
    rows: list[dict] = []
    per = [_regularity_seed(s, x, cs, ok, grid, n_probe, rows) for s in S]
    heads = Rows()
    for m in SCORES:
        heads.add("spearman_vs_cscore_proxy", [p["rho"][m] for p in per], S, model="digits-mlp", condition={"score": m})
    for m in SCORES:
        heads.add(
            "flipped_label_auroc", [p["auc"][m] for p in per], S, model="digits-mlp-label-noise", condition={"score": m}
        )
    for group in ("clean", "flipped"):
        heads.add(
            "median_escape_sigma",
            [p[f"median_{group}"] for p in per],
            S,
            model="digits-mlp-label-noise",
            condition={"samples": group},
        )
    heads.add("apex_seconds", [p["seconds"] for p in per], S, model="digits-mlp", condition={"inputs": n_probe})
    heads.add("cscore_proxy_seconds", [proxy_sec], [], condition={"models": M, "epochs": epochs})
    best_rho = max(SCORES, key=lambda m: np.mean([p["rho"][m] for p in per]))
    best_auc = max(SCORES, key=lambda m: np.mean([p["auc"][m] for p in per]))
    f = _regularity_figure(per[0]["scatter"], S[0], out)
    sec = Section(
        "APEX: escape noise and sample regularity (claims A, A', A'')",
        order=32,
        paragraphs=[
            f"digits-mlp, {n_probe} training samples, K = {K}, {len(grid)}-point grid {grid[0]:.2g}..{grid[-1]:.3g}. "
            f"C-score proxy: held-out p(true label) over {M} MLPs trained ({epochs} epochs) on random 75% subsets. "
            "Label noise: digits-mlp-label-noise (10% flipped).",
            f"Best rank correlation with the proxy: {SCORES[best_rho]} (mean rho "
            f"{np.mean([p['rho'][best_rho] for p in per]):.3f}). Best flipped-label AUROC: {SCORES[best_auc]} (mean "
            f"{np.mean([p['auc'][best_auc] for p in per]):.3f}). Cost: APEX {np.mean([p['seconds'] for p in per]):.1f} "
            f"s "
            f"per model vs {proxy_sec:.1f} s for the proxy's retrainings (on digits retraining is cheap, so this is no "
            "fair picture of large models).",
        ],
    )
    sec.table(
        "Per seed (95% bootstrap CIs over samples)",
        ["setting", "seed", "score", "figure", "value", "95% CI"],
        [[r["setting"], r["seed"], SCORES[r["score"]], r["figure"], _r3(r["value"]), _ci_text(r)] for r in rows],
    )
    sec.figure(f, "APEX escape noise against the C-score proxy")
    return finish(
        out,
        "study:apex-regularity",
        heads,
        sec,
        seeds=S,
        data={"best_rank_correlation": best_rho, "best_auroc": best_auc},
        tables={"per_seed": rows},
        config={"grid": grid.tolist(), "K": K, "n_probe": n_probe, "proxy_models": M, "proxy_epochs": epochs},
    )


def _r3(v):
    return None if v is None else round(v, 3)


def _ci_text(r: dict) -> str:
    return "no CI" if r.get("lo") is None else f"[{r['lo']:.3f}, {r['hi']:.3f}]"


# ============================================================================ B: random labels
PAIRS = [
    ("digits-mlp", "digits-mlp-random-labels"),
    ("digits-cnn", "digits-cnn-random-labels"),
    ("fashion-cnn", "fashion-cnn-random-labels"),
]


SKIPPED: list[str] = []


def _pairs(quick, seeds=(0,)):
    pairs = PAIRS[:1] if quick else PAIRS
    keep = [p for p in pairs if all(available(n, s) for n in p for s in seeds)]
    SKIPPED.extend(f"{a} / {b}" for a, b in pairs if (a, b) not in keep)
    return keep


def _median_escape(name: str, s: int, xs, grid, split: str, rows: list) -> tuple[float, float, np.ndarray]:
    """(median escape or NaN when > half censored, median / RMS, per-input escape sigmas); appends a table row."""
    run = run_apex(name, s, xs, grid, samples=K)
    e = _escape(run, grid)
    m = float(np.median(e.sigma)) if (e.censor != 0).mean() <= 0.5 else float("nan")
    rates, rms = e.rates(), mean_rms(run)
    rows.append(
        {
            "model": name,
            "seed": s,
            "split": split,
            "median": m,
            "median_over_rms": m / rms,
            "rms": rms,
            "left_censored": rates["left_censored"],
            "right_censored": rates["right_censored"],
        }
    )
    return m, m / rms, e.sigma


def _random_label_pair(true_name: str, rand_name: str, S, grid, N: int, rows: list):
    """Per seed: medians of both models on train/test inputs and their ratios; test escape sigmas of seed S[0]."""
    stats = {k: [] for k in ("true_test", "rand_test", "ratio_test", "ratio_train", "ratio_test_rms")}
    hist = {}
    for s in S:
        med = {}
        for name in (true_name, rand_name):
            ds = data(name, s)
            for split, xs in (("train", ds.x_train[:N]), ("test", ds.x_test[:N])):
                *med[(name, split)], sig = _median_escape(name, s, xs, grid, split, rows)
                if s == S[0] and split == "test":
                    hist[name] = sig
        stats["true_test"].append(med[(true_name, "test")][0])
        stats["rand_test"].append(med[(rand_name, "test")][0])
        stats["ratio_test"].append(med[(true_name, "test")][0] / med[(rand_name, "test")][0])
        stats["ratio_train"].append(med[(true_name, "train")][0] / med[(rand_name, "train")][0])
        stats["ratio_test_rms"].append(med[(true_name, "test")][1] / med[(rand_name, "test")][1])
    return stats, hist


def run_random_labels(out: Path, seeds: int = 3, quick: bool = False):
    """Escape-noise distributions of true-label vs random-label models: medians, ratios, RMS-normalised."""
    from ..perturb.plots import new_figure_hist_pairs

    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    N = 150 if quick else 300
    heads, rows, figs = Rows(), [], []
    SKIPPED.clear()
    for true_name, rand_name in _pairs(quick, S):
        stats, hist = _random_label_pair(true_name, rand_name, S, grid, N, rows)
        heads.add("median_escape_sigma", stats["true_test"], S, model=true_name, condition={"split": "test"})
        heads.add("median_escape_sigma", stats["rand_test"], S, model=rand_name, condition={"split": "test"})
        ci = None
        if len(S) == 1:  # one seed: bootstrap the ratio of medians over the two models' test inputs
            ci = bootstrap(
                hist[true_name],
                lambda a, b: np.median(a) / np.median(b),
                independent=(hist[rand_name],),
                n_resamples=1000,
                seed=0,
            )
        ratio = {"reference": rand_name}
        heads.add(
            "median_escape_ratio", stats["ratio_test"], S, model=true_name, condition={**ratio, "split": "test"}, ci=ci
        )
        heads.add(
            "median_escape_ratio", stats["ratio_train"], S, model=true_name, condition={**ratio, "split": "train"}
        )
        heads.add(
            "median_escape_ratio",
            stats["ratio_test_rms"],
            S,
            model=true_name,
            condition={**ratio, "split": "test", "scale": "rms"},
        )
        figs.append(
            new_figure_hist_pairs(
                hist, grid, out / f"random_labels_{true_name}.png", f"escape noise, test inputs, seed {S[0]}"
            )
        )
    sec = Section(
        "APEX: true-label vs random-label models (claim B)",
        order=33,
        paragraphs=[
            f"Escape noise (survival < 0.5, log-interpolated) on {N} train and {N} test inputs of each model's own "
            f"data, "
            f"K = {K}, absolute grid {grid[0]:.2g}..{grid[-1]:.3g}. Medians are withheld (n/a) when more than half of "
            f"a "
            "group is censored. RMS-normalised: escape noise divided by the mean clean activation RMS over the noise "
            "sites."
        ]
        + (
            [f"Not run (models not trained; INNERPROBE_APEX_SKIP_UNCACHED=1): {', '.join(SKIPPED)}."] if SKIPPED else []
        ),
    )
    sec.table(
        "Per model, seed and split",
        ["model", "seed", "split", "median escape", "median / RMS", "RMS", "censored left", "censored right"],
        [
            [
                r["model"],
                r["seed"],
                r["split"],
                round(r["median"], 4),
                round(r["median_over_rms"], 4),
                round(r["rms"], 4),
                round(r["left_censored"], 2),
                round(r["right_censored"], 2),
            ]
            for r in rows
        ],
    )
    for f in figs:
        sec.figure(f, "escape-noise distributions, true-label vs random-label model")
    return finish(
        out,
        "study:apex-random-labels",
        heads,
        sec,
        seeds=S,
        tables={"per_model": rows},
        config={"grid": grid.tolist(), "K": K, "N": N},
    )


# ============================================================================ C: transitions
def _centroids(name, seed):
    ds = data(name.replace("-random-labels", ""), seed)  # true labels for the semantics
    x = ds.x_train.reshape(len(ds.x_train), -1).numpy()
    y = ds.y_train.numpy()
    return np.stack([x[y == c].mean(0) for c in range(10)]), list(ds.classes)


def _transition_seed(name: str, s: int, grid, N: int):
    """Nearest-centroid match of the escape class (a proportion with its CI), the row-normalised transition
    matrix and its mean normalised off-diagonal row entropy, for one model and seed."""
    from ..perturb import normalized_entropy

    cent, classes = _centroids(name, s)
    xs = data(name, s).x_test[:N]
    run = run_apex(name, s, xs, grid, samples=K)
    e, y0 = _escape(run, grid), run["y0"]
    d = ((xs.reshape(len(xs), -1).numpy()[:, None, :] - cent[None]) ** 2).sum(-1)
    d[np.arange(len(y0)), y0] = np.inf
    has = e.escape_class >= 0
    hits = int((e.escape_class[has] == d.argmin(1)[has]).sum())
    T = np.zeros((10, 10))
    np.add.at(T, (y0[has], e.escape_class[has]), 1)
    Tn = T / np.maximum(T.sum(1, keepdims=True), 1)
    rent = float(np.mean([normalized_entropy(Tn[c][np.arange(10) != c]) for c in range(10) if T[c].sum() > 0]))
    return proportion(hits, int(has.sum())), Tn, rent, classes


def run_transitions(out: Path, seeds: int = 3, quick: bool = False):
    """How often the escape class is the nearest other class centroid (input space), against chance."""
    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    N = 150 if quick else 300
    heads, rows, figs = Rows(), [], []
    SKIPPED.clear()
    for true_name, rand_name in _pairs(quick, S):
        for name in (true_name, rand_name):
            match, ent = [], []
            for s in S:
                c, Tn, rent, classes = _transition_seed(name, s, grid, N)
                match.append(c.estimate)
                ent.append(rent)
                rows.append(
                    {
                        "model": name,
                        "seed": s,
                        "escaped": c.n,
                        "match": c.estimate,
                        "lo": c.lo,
                        "hi": c.hi,
                        "ci_method": c.method,
                        "chance": 1 / 9,
                        "row_entropy": rent,
                    }
                )
                if s == S[0]:
                    names = [k[:9] for k in classes]
                    fig = heatmap(
                        Tn,
                        row_labels=names,
                        col_labels=names,
                        title=f"clean -> escape class, {name}",
                        vmin=0,
                        vmax=1,
                        fmt="{:.2f}",
                        size=(8.0, 6.0),
                    )
                    figs.append(savefig(fig, out / f"transitions_{name}.png"))
            heads.add("escape_to_nearest_centroid", match, S, model=name, ci=c if len(S) == 1 else None, chance=1 / 9)
            heads.add("transition_row_entropy", ent, S, model=name)
    sec = Section(
        "APEX: semantically coherent transitions (claim C)",
        order=34,
        paragraphs=[
            f"{N} test inputs per model, K = {K}. For each input the escape class (the class that takes over when the "
            "clean class's share drops below 0.5) is compared with the class whose training-set centroid (true labels, "
            "input space) is nearest to the input among the classes other than the clean prediction. Chance is 1/9. "
            "Per seed, the match rate has a Clopper-Pearson interval; over seeds, a t-interval. Row entropy is over "
            "the "
            "9 off-diagonal classes, normalised."
        ]
        + (
            [f"Not run (models not trained; INNERPROBE_APEX_SKIP_UNCACHED=1): {', '.join(SKIPPED)}."] if SKIPPED else []
        ),
    )
    sec.table(
        "Per model and seed",
        ["model", "seed", "escaped inputs", "nearest-centroid match", "95% CI", "chance", "row entropy"],
        [
            [
                r["model"],
                r["seed"],
                r["escaped"],
                _r3(r["match"]),
                _ci_text(r),
                round(1 / 9, 3),
                round(r["row_entropy"], 3),
            ]
            for r in rows
        ],
    )
    for f in figs:
        sec.figure(f, "transition matrix: clean class (rows) to escape class (columns), row-normalised")
    return finish(
        out,
        "study:apex-transitions",
        heads,
        sec,
        seeds=S,
        tables={"per_model": rows},
        config={"grid": grid.tolist(), "K": K, "N": N},
    )
