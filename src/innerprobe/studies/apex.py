"""APEX case studies (Ren, Luo, Li 2026, arXiv 2602.03586; plan in shared/methods/apex.md §5).

* ``apex-transition``  (claim T): D(sigma) for all-layer / first-layer / last-layer noise.
* ``apex-regularity``  (claims A, A', A''): escape noise vs a C-score proxy and flipped-label AUROC,
  next to input-noise escape and the clean logit margin; wall-clock vs the proxy.
* ``apex-random-labels`` (claim B): escape noise of true-label vs random-label models.
* ``apex-transitions`` (claim C): is the escape class the semantically nearest class?
* ``apex-backdoor``    (claim D): moved to :mod:`innerprobe.studies.apex_backdoor`.

Each ``run(out, seeds=3, quick=False)`` writes summary.json (headlines with seeds and 95% CIs),
section.json and PNGs. ``quick`` uses digits models only, one seed and fewer inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report.sections import Section
from .apex_common import GRID, GRID_QUICK, Headlines, available, boot_ci, data, finish, load, mean_rms, run_apex

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
    heads, rows, figs = Headlines(), [], []
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
                rows.append([arch, s, cfg, ", ".join(run["sites"]), round(mean_rms(run), 4), round(float(D[0]), 3), round(float(D[-1]), 3),
                             round(float(fl[-1]), 3), round(hw, 4), round(hw / mean_rms(run), 3)])
            if s == S[0]:
                figs.append(sample_dependence_plot(curves, grid, out / f"transition_{arch}.png", floors=floors,
                                                   title=f"D(sigma), {arch} seed {s}"))
        for cfg in per:
            heads.add(f"{arch} half-way sigma, {cfg}-layer noise", per[cfg], S)
            heads.add(f"{arch} half-way sigma / RMS, {cfg}-layer noise", rel[cfg], S)
        heads.add(f"{arch} half-way ratio last/all", [a / b for a, b in zip(per["last"], per["all"])], S)
        heads.add(f"{arch} half-way ratio first/all", [a / b for a, b in zip(per["first"], per["all"])], S)
    sec = Section("APEX: from sample-dependent to model-dependent (claim T)", order=31, paragraphs=[
        f"D(sigma) = mean over {N} test inputs of TV(p_sigma(.|x), pbar_sigma), K = {K}, absolute sigma grid "
        f"{grid[0]:.2g}..{grid[-1]:.3g} ({len(grid)} points). Dashed: Monte Carlo floor. 'Half-way' is where D crosses the "
        "midpoint between D at the smallest sigma and its floor; it is also given relative to the clean RMS of the noised activations."])
    sec.table("Per model and injection site", ["model", "seed", "noise", "sites", "RMS", "D(min)", "D(max)", "floor", "half-way", "half-way/RMS"], rows)
    for f in figs:
        sec.figure(f, f"D(sigma) for all-, first- and last-layer noise ({f.stem.split('_', 1)[1]})")
    return finish(out, "study:apex-transition", heads, sec, seeds=S, tables={"runs": [dict(zip(
        ["model", "seed", "noise", "sites", "rms", "D_min", "D_max", "floor", "half_way", "half_way_over_rms"], r)) for r in rows]},
        config={"grid": grid.tolist(), "K": K, "N": N, "archs": archs})


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
        tr, ho = perm[: int(0.75 * N)], perm[int(0.75 * N):]
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


def run_regularity(out: Path, seeds: int = 3, quick: bool = False):
    """Escape noise vs a C-score proxy (Spearman rho) and vs flipped labels (AUROC), with baselines."""
    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    base = data("digits-mlp", 0)
    n_probe = 300 if quick else len(base.x_train)
    x, y = base.x_train[:n_probe], base.y_train[:n_probe]
    M, epochs = (6, 15) if quick else (20, 60)
    cs, proxy_sec = cscore_proxy(base.x_train, base.y_train, M, epochs)
    cs = cs[:n_probe]
    ok = np.isfinite(cs)
    heads, rows = Headlines(), []
    methods = ("APEX escape", "input-noise escape", "logit margin")
    rho = {m: [] for m in methods}
    auc = {m: [] for m in methods}
    apex_sec, ln_rows = [], []
    scatter = None
    for s in S:
        run = run_apex("digits-mlp", s, x, grid, samples=K)
        inp = run_apex("digits-mlp", s, x, grid, samples=K, sites=[":input"])
        from ..perturb import logit_margin

        scores = {"APEX escape": _escape(run, grid).sigma, "input-noise escape": _escape(inp, grid).sigma,
                  "logit margin": logit_margin(run["clean_logits"], run["y0"])}
        apex_sec.append(run["seconds"])
        for m in methods:
            r, lo, hi = boot_ci(_spearman, scores[m][ok], cs[ok], n=300, seed=s)
            rho[m].append(r)
            rows.append(["clean labels", s, m, "Spearman rho vs C-score proxy", round(r, 3), f"[{lo:.3f}, {hi:.3f}]"])
        if scatter is None:
            scatter = (scores["APEX escape"][ok], cs[ok], _escape(run, grid).censor[ok])
        # label noise: flipped training samples should escape earlier
        ln = data("digits-mlp-label-noise", s)
        n_ln = n_probe
        xl = ln.x_train[:n_ln]
        flipped = np.zeros(n_ln, bool)
        fi = np.asarray(ln.meta["flipped_indices"], int)
        flipped[fi[fi < n_ln]] = True
        r1 = run_apex("digits-mlp-label-noise", s, xl, grid, samples=K)
        r2 = run_apex("digits-mlp-label-noise", s, xl, grid, samples=K, sites=[":input"])
        lscores = {"APEX escape": _escape(r1, grid).sigma, "input-noise escape": _escape(r2, grid).sigma,
                   "logit margin": logit_margin(r1["clean_logits"], r1["y0"])}
        for m in methods:
            a, lo, hi = boot_ci(_auroc, -lscores[m], flipped.astype(int), n=300, seed=s)
            auc[m].append(a)
            rows.append(["10% label noise", s, m, f"AUROC for the {int(flipped.sum())} flipped samples", round(a, 3), f"[{lo:.3f}, {hi:.3f}]"])
        e = _escape(r1, grid)
        ln_rows.append([s, float(np.median(e.sigma[~flipped])), float(np.median(e.sigma[flipped])), e.rates()["right_censored"]])
    for m in methods:
        heads.add(f"Spearman rho({m}, C-score proxy)", rho[m], S)
    for m in methods:
        heads.add(f"AUROC({m}) for flipped labels", auc[m], S)
    heads.add("median APEX escape, clean-label samples (label-noise model)", [r[1] for r in ln_rows], S)
    heads.add("median APEX escape, flipped samples (label-noise model)", [r[2] for r in ln_rows], S)
    heads.add("APEX seconds (one model, all probe inputs)", apex_sec, S)
    heads.add("C-score proxy seconds (all retrainings)", [proxy_sec], [0])
    best_rho = max(methods, key=lambda m: np.mean(rho[m]))
    best_auc = max(methods, key=lambda m: np.mean(auc[m]))
    from ..report.plots import new_figure, savefig, style_axes

    fig, ax = new_figure(size=(4.6, 3.2))
    sig, c, cen = scatter
    ax.scatter(sig[cen == 0], c[cen == 0], s=5, alpha=0.5, label="escaped")
    ax.scatter(sig[cen != 0], c[cen != 0], s=5, alpha=0.5, label="censored")
    ax.set_xscale("log")
    style_axes(ax, title=f"escape noise vs C-score proxy (seed {S[0]})", xlabel="APEX escape sigma", ylabel="held-out p(true label)")
    ax.legend(fontsize=7, frameon=False)
    f = savefig(fig, out / "regularity_scatter.png")
    sec = Section("APEX: escape noise and sample regularity (claims A, A', A'')", order=32, paragraphs=[
        f"digits-mlp, {n_probe} training samples, K = {K}, {len(grid)}-point grid {grid[0]:.2g}..{grid[-1]:.3g}. C-score proxy: held-out "
        f"p(true label) over {M} MLPs trained ({epochs} epochs) on random 75% subsets. Label noise: digits-mlp-label-noise (10% flipped).",
        f"Best rank correlation with the proxy: {best_rho} (mean rho {np.mean(rho[best_rho]):.3f}). Best flipped-label AUROC: "
        f"{best_auc} (mean {np.mean(auc[best_auc]):.3f}). Cost: APEX {np.mean(apex_sec):.1f} s per model vs {proxy_sec:.1f} s for the "
        "proxy's retrainings (on digits retraining is cheap, so this is no fair picture of large models)."])
    sec.table("Per seed (95% bootstrap CIs over samples)", ["setting", "seed", "score", "figure", "value", "95% CI"], rows)
    sec.figure(f, "APEX escape noise against the C-score proxy")
    return finish(out, "study:apex-regularity", heads, sec, seeds=S, data={"best_rank_correlation": best_rho, "best_auroc": best_auc},
                  tables={"per_seed": [dict(zip(["setting", "seed", "score", "figure", "value", "ci95"], r)) for r in rows]},
                  config={"grid": grid.tolist(), "K": K, "n_probe": n_probe, "proxy_models": M, "proxy_epochs": epochs})


# ============================================================================ B: random labels
PAIRS = [("digits-mlp", "digits-mlp-random-labels"), ("digits-cnn", "digits-cnn-random-labels"), ("fashion-cnn", "fashion-cnn-random-labels")]


SKIPPED: list[str] = []


def _pairs(quick, seeds=(0,)):
    pairs = PAIRS[:1] if quick else PAIRS
    keep = [p for p in pairs if all(available(n, s) for n in p for s in seeds)]
    SKIPPED.extend(f"{a} / {b}" for a, b in pairs if (a, b) not in keep)
    return keep


def run_random_labels(out: Path, seeds: int = 3, quick: bool = False):
    """Escape-noise distributions of true-label vs random-label models: medians, ratios, RMS-normalised."""
    from ..perturb.plots import new_figure_hist_pairs

    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    N = 150 if quick else 300
    heads, rows, figs = Headlines(), [], []
    SKIPPED.clear()
    for true_name, rand_name in _pairs(quick, S):
        stats = {k: [] for k in ("true_test", "rand_test", "ratio_test", "ratio_train", "ratio_test_rms")}
        hist = {}
        for s in S:
            med = {}
            for name in (true_name, rand_name):
                ds = data(name, s)
                for split, xs in (("train", ds.x_train[:N]), ("test", ds.x_test[:N])):
                    run = run_apex(name, s, xs, grid, samples=K)
                    e = _escape(run, grid)
                    cens = (e.censor != 0).mean()
                    m = float(np.median(e.sigma)) if cens <= 0.5 else float("nan")
                    med[(name, split)] = (m, m / mean_rms(run))
                    rows.append([name, s, split, round(m, 4), round(m / mean_rms(run), 4), round(mean_rms(run), 4),
                                 f"{e.rates()['left_censored']:.2f}/{e.rates()['right_censored']:.2f}"])
                    if s == S[0] and split == "test":
                        hist[name] = e.sigma
            stats["true_test"].append(med[(true_name, "test")][0])
            stats["rand_test"].append(med[(rand_name, "test")][0])
            stats["ratio_test"].append(med[(true_name, "test")][0] / med[(rand_name, "test")][0])
            stats["ratio_train"].append(med[(true_name, "train")][0] / med[(rand_name, "train")][0])
            stats["ratio_test_rms"].append(med[(true_name, "test")][1] / med[(rand_name, "test")][1])
        heads.add(f"{true_name}: median escape (test)", stats["true_test"], S)
        heads.add(f"{rand_name}: median escape (test)", stats["rand_test"], S)
        ci = None
        if len(S) == 1:
            a, b = hist[true_name], hist[rand_name]
            rng = np.random.default_rng(0)
            boots = [np.median(rng.choice(a, len(a))) / np.median(rng.choice(b, len(b))) for _ in range(1000)]
            ci = (stats["ratio_test"][0], float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
        heads.add(f"{true_name} / random-label median ratio (test)", stats["ratio_test"], S, ci=ci)
        heads.add(f"{true_name} / random-label median ratio (train)", stats["ratio_train"], S)
        heads.add(f"{true_name} / random-label median ratio, RMS-normalised (test)", stats["ratio_test_rms"], S)
        figs.append(new_figure_hist_pairs(hist, grid, out / f"random_labels_{true_name}.png", f"escape noise, test inputs, seed {S[0]}"))
    sec = Section("APEX: true-label vs random-label models (claim B)", order=33, paragraphs=[
        f"Escape noise (survival < 0.5, log-interpolated) on {N} train and {N} test inputs of each model's own data, K = {K}, "
        f"absolute grid {grid[0]:.2g}..{grid[-1]:.3g}. Medians are withheld (n/a) when more than half of a group is censored. "
        "RMS-normalised: escape noise divided by the mean clean activation RMS over the noise sites."]
        + ([f"Not run (models not trained; INNERPROBE_APEX_SKIP_UNCACHED=1): {', '.join(SKIPPED)}."] if SKIPPED else []))
    sec.table("Per model, seed and split", ["model", "seed", "split", "median escape", "median / RMS", "RMS", "censored left/right"], rows)
    for f in figs:
        sec.figure(f, "escape-noise distributions, true-label vs random-label model")
    return finish(out, "study:apex-random-labels", heads, sec, seeds=S,
                  tables={"per_model": [dict(zip(["model", "seed", "split", "median", "median_over_rms", "rms", "censored"], r)) for r in rows]},
                  config={"grid": grid.tolist(), "K": K, "N": N})


# ============================================================================ C: transitions
def _centroids(name, seed):
    ds = data(name.replace("-random-labels", ""), seed)  # true labels for the semantics
    x = ds.x_train.reshape(len(ds.x_train), -1).numpy()
    y = ds.y_train.numpy()
    return np.stack([x[y == c].mean(0) for c in range(10)]), list(ds.classes)


def run_transitions(out: Path, seeds: int = 3, quick: bool = False):
    """How often the escape class is the nearest other class centroid (input space), against chance."""
    from ..perturb import normalized_entropy
    from ..report.plots import heatmap, savefig

    out = Path(out)
    S = _seeds(seeds, quick)
    grid = GRID_QUICK if quick else GRID
    N = 150 if quick else 300
    heads, rows, figs = Headlines(), [], []
    SKIPPED.clear()
    for true_name, rand_name in _pairs(quick, S):
        for name in (true_name, rand_name):
            match, ent = [], []
            for s in S:
                cent, classes = _centroids(name, s)
                ds = data(name, s)
                xs = ds.x_test[:N]
                run = run_apex(name, s, xs, grid, samples=K)
                e = _escape(run, grid)
                y0 = run["y0"]
                d = ((xs.reshape(len(xs), -1).numpy()[:, None, :] - cent[None]) ** 2).sum(-1)
                d[np.arange(len(y0)), y0] = np.inf
                nearest = d.argmin(1)
                has = e.escape_class >= 0
                hit = (e.escape_class[has] == nearest[has]).astype(float)
                m, lo, hi = boot_ci(np.mean, hit, n=500, seed=s)
                T = np.zeros((10, 10))
                np.add.at(T, (y0[has], e.escape_class[has]), 1)
                Tn = T / np.maximum(T.sum(1, keepdims=True), 1)
                rent = float(np.mean([normalized_entropy(Tn[c][np.arange(10) != c]) for c in range(10) if T[c].sum() > 0]))
                match.append(m)
                ent.append(rent)
                rows.append([name, s, int(has.sum()), round(m, 3), f"[{lo:.3f}, {hi:.3f}]", round(1 / 9, 3), round(rent, 3)])
                if s == S[0]:
                    names = [c[:9] for c in classes]
                    fig = heatmap(Tn, row_labels=names, col_labels=names, title=f"clean -> escape class, {name}", vmin=0, vmax=1,
                                  fmt="{:.2f}", size=(8.0, 6.0))
                    figs.append(savefig(fig, out / f"transitions_{name}.png"))
            heads.add(f"{name}: escape class = nearest other centroid (chance 0.111)", match, S,
                      ci=(match[0], lo, hi) if len(S) == 1 else None)
            heads.add(f"{name}: normalised row entropy of transitions", ent, S)
    sec = Section("APEX: semantically coherent transitions (claim C)", order=34, paragraphs=[
        f"{N} test inputs per model, K = {K}. For each input the escape class (the class that takes over when the clean class's share "
        "drops below 0.5) is compared with the class whose training-set centroid (true labels, input space) is nearest to the input "
        "among the classes other than the clean prediction. Chance is 1/9. Row entropy is over the 9 off-diagonal classes, normalised."]
        + ([f"Not run (models not trained; INNERPROBE_APEX_SKIP_UNCACHED=1): {', '.join(SKIPPED)}."] if SKIPPED else []))
    sec.table("Per model and seed", ["model", "seed", "escaped inputs", "nearest-centroid match", "95% CI", "chance", "row entropy"], rows)
    for f in figs:
        sec.figure(f, "transition matrix: clean class (rows) to escape class (columns), row-normalised")
    return finish(out, "study:apex-transitions", heads, sec, seeds=S,
                  tables={"per_model": [dict(zip(["model", "seed", "escaped", "match", "ci95", "chance", "row_entropy"], r)) for r in rows]},
                  config={"grid": grid.tolist(), "K": K, "N": N})
