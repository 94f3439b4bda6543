"""Study ``pullback-digits``: are excitation pullbacks more faithful than gradients on small nets?

Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832) at T in {0.1, 0.3, 0.6, 1, 3} against
the plain gradient, input x gradient, SmoothGrad and integrated gradients, on ``digits-cnn``
(conv-BN-ReLU-maxpool, the paper's regime), ``digits-deep-mlp`` (6 hidden ReLU layers) and
``fashion-cnn``, over zoo seeds; plus localisation on planted-stamp digits and 2x2 mosaics (models
trained here), and sanity checks (cascading randomisation, random logit, Guided Backprop as the
failing control). Every comparison is paired on the same images; CIs are two-level bootstraps
over seeds and images (:func:`innerprobe.pullback.metrics.paired_bootstrap`). The verdict is
computed from the CIs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

TEMPS = (0.1, 0.3, 0.6, 1.0, 3.0)
BASELINES = ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients")
FAITH = (("deletion", -1), ("insertion", +1), ("infidelity", -1), ("faith_corr", +1))  # (metric, +1 higher is better)
LOC = (("relevance_mass", +1), ("rank_accuracy", +1), ("pointing_game", +1))
MODELS = ("digits-cnn", "digits-deep-mlp", "fashion-cnn")


def _pb(T):
    return f"pullback T={T:g}"


def _methods(model, quick: bool) -> dict:
    from ..pullback import ExcitationPullback, Gradient, InputXGradient, IntegratedGradients, SmoothGrad

    m = {"gradient": Gradient(model), "input_x_gradient": InputXGradient(model),
         "smoothgrad": SmoothGrad(model, n_samples=8 if quick else 16, sigma=0.15, seed=0),
         "integrated_gradients": IntegratedGradients(model, steps=16 if quick else 32)}
    for T in TEMPS:
        m[_pb(T)] = ExcitationPullback(model, T)
    return m


def _attributions(methods: dict, x, t, chunk: int) -> dict:
    out = {}
    for name, meth in methods.items():
        meth.chunk_size = chunk
        out[name] = meth.attribute(x, t)
    return out


def _faithfulness(model, x, t, maps: dict, methods: dict, n_classes: int, chunk: int, quick: bool) -> dict:
    from ..pullback import metrics as M

    steps, nper = (8, 16) if quick else (16, 32)
    res = {}
    for name, a in maps.items():
        r = {"deletion": M.deletion_auc(model, x, a, t, steps=steps, chunk_size=chunk),
             "insertion": M.insertion_auc(model, x, a, t, steps=steps, chunk_size=chunk),
             "infidelity": M.infidelity(model, x, a, t, n_perturb=nper, chunk_size=chunk),
             "faith_corr": M.faithfulness_correlation(model, x, a, t, n_subsets=nper, chunk_size=chunk),
             "random_logit": M.random_logit(lambda xx, tt, m=methods[name]: m.attribute(xx, tt), x, t, n_classes),
             "template_sim": _template_sim(a, t)}
        res[name] = {k: v.numpy() for k, v in r.items()}
    return res


def _template_sim(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per image: mean Pearson correlation of its map with the maps of the *other* images of the same
    target class. High values mean the map is close to a class template, insensitive to the input
    (at T -> inf a pullback is the input-independent linear-network backward)."""
    f = a.flatten(1).double()
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-30)
    c = f @ f.T
    same = (t[:, None] == t[None]) & ~torch.eye(len(t), dtype=torch.bool)
    cnt = same.sum(1)
    return torch.where(cnt > 0, (c * same).sum(1) / cnt.clamp_min(1), torch.full((len(t),), float("nan"), dtype=c.dtype)).float()


def _stack(per_seed: list[dict]) -> dict:
    """[{method: {metric: [N]}}] per seed -> {method: {metric: [S, N]}}."""
    return {m: {k: np.stack([s[m][k] for s in per_seed]) for k in per_seed[0][m]} for m in per_seed[0]}


def _fmt(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def _fmt_mean(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _load_zoo(name: str, seed: int, quick: bool):
    from .. import zoo

    if quick and name == "fashion-cnn" and zoo.status(name, seed)[0] != "cached":
        return None, None
    return zoo.load(name, seed=seed)


def run(out: Path, seeds: int = 3, quick: bool = False):
    from ..pullback import ExcitationPullback, Gradient, GuidedBackprop, gradient_rules, pullback_ascent, pullback_rules
    from ..pullback import metrics as M
    from ..report.plots import new_figure, savefig, style_axes, PALETTE
    from ..report.sections import Section
    from ..results import Result, provenance
    from .. import zoo
    from .pullback_data import mosaics, planted, train_local
    from .pullback_plots import image_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    n_img = 40 if quick else 100
    n_seeds = 1 if quick else max(1, int(seeds))
    chunk = 256
    torch.manual_seed(0)
    notes: list[str] = []
    faith: dict = {}
    model_info: dict = {}
    sanity_rows: list = []
    digits = zoo.recipe_data("digits-cnn", seed=0)

    # ------------------------------------------------------------------ localisation (models trained here)
    loc: dict = {}
    loc_info: dict = {}
    for lname in ("planted-cnn", "planted-deep-mlp", "mosaic-cnn"):
        per_seed = []
        for seed in range(n_seeds):
            model, info = train_local(lname, seed, quick)
            loc_info.setdefault(lname, []).append(info)
            split = digits
            if lname == "mosaic-cnn":
                x, t, mask = mosaics(split.x_test, split.y_test, n_img, 99)
            else:
                x, t, mask = planted(split.x_test[:n_img], 99, "random" if lname == "planted-cnn" else "corners")
            methods = _methods(model, quick)
            methods["guided_backprop"] = GuidedBackprop(model)
            maps = _attributions(methods, x, t, chunk)
            r = {}
            for mname, a in maps.items():
                if lname == "mosaic-cnn":
                    r[mname] = {"focus": M.mosaic_focus(a, x, mask).numpy()}
                else:
                    r[mname] = {k: v.numpy() for k, v in M.localisation(a, mask).items()}
            per_seed.append(r)
            if seed == 0:
                loc_info[lname][0]["example"] = (x[:4], t[:4], mask[:4], {k: maps[k][:4] for k in ("gradient", _pb(0.3))})
        loc[lname] = _stack(per_seed)

    # ------------------------------------------------------------------ faithfulness on zoo models
    for name in MODELS:
        per_seed = []
        for seed in range(n_seeds):
            model, card = _load_zoo(name, seed, quick)
            if model is None:
                notes.append(f"{name} skipped in --quick mode (not cached; run the full study or 'innerprobe zoo train {name}')")
                break
            split = digits if name != "fashion-cnn" else zoo.recipe_data(name, seed=seed)  # clean recipes: same test set per seed
            gen = torch.Generator().manual_seed(1234)
            idx = torch.randperm(len(split.x_test), generator=gen)[:n_img]
            x, y = split.x_test[idx].float(), split.y_test[idx]
            with torch.no_grad():
                pred = model(x).argmax(-1)
            t = y  # explain the true class
            methods = _methods(model, quick)
            maps = _attributions(methods, x, t, chunk)
            per_seed.append(_faithfulness(model, x, t, maps, methods, 10, chunk, quick))
            model_info.setdefault(name, []).append({"seed": seed, "test_accuracy": (card.get("metrics") or {}).get("test_accuracy"),
                                                    "accuracy_on_images": float((pred == y).float().mean())})
            if seed == 0:  # sanity: cascading randomisation on a subset, pullback vs gradient vs guided backprop
                xs, ts = x[:24], t[:24]
                for label, fn in (("gradient", lambda m, xx, tt: Gradient(m).attribute(xx, tt)),
                                  (_pb(0.3), lambda m, xx, tt: ExcitationPullback(m, 0.3).attribute(xx, tt)),
                                  ("guided_backprop", lambda m, xx, tt: GuidedBackprop(m).attribute(xx, tt))):
                    rows = M.cascading_randomisation(model, xs, ts, fn, seed=0)
                    rl = M.random_logit(lambda xx, tt: fn(model, xx, tt), xs, ts, 10)
                    sanity_rows.append({"model": name, "method": label, "spearman_top_layer": rows[0]["spearman"],
                                        "spearman_all_layers": rows[-1]["spearman"], "random_logit": float(torch.nanmean(rl))})
                if name == "digits-cnn":
                    fig_model, fig_x, fig_y = model, x, y
        if per_seed:
            faith[name] = _stack(per_seed)

    # ------------------------------------------------------------------ tables
    tables: dict = {"faithfulness": [], "paired": [], "localisation": [], "paired_localisation": [], "sanity": sanity_rows}
    for name, res in faith.items():
        for meth, ms in res.items():
            row = {"model": name, "method": meth}
            for metric, arr in ms.items():
                ci = M.mean_ci(arr)
                row.update({metric: ci["mean"], f"{metric}_lo": ci["lo"], f"{metric}_hi": ci["hi"]})
            tables["faithfulness"].append(row)
        for T in TEMPS:
            for base in BASELINES:
                row = {"model": name, "T": T, "vs": base}
                for metric, _ in FAITH + (("random_logit", -1),):
                    row[metric] = M.paired_bootstrap(res[_pb(T)][metric], res[base][metric])
                tables["paired"].append(row)
    for lname, res in loc.items():
        for meth, ms in res.items():
            row = {"model": lname, "method": meth}
            for metric, arr in ms.items():
                ci = M.mean_ci(arr)
                row.update({metric: ci["mean"], f"{metric}_lo": ci["lo"], f"{metric}_hi": ci["hi"]})
            tables["localisation"].append(row)
        for T in TEMPS:
            for base in BASELINES:
                row = {"model": lname, "T": T, "vs": base}
                for metric in res[base]:
                    row[metric] = M.paired_bootstrap(res[_pb(T)][metric], res[base][metric])
                tables["paired_localisation"].append(row)

    # ------------------------------------------------------------------ verdict (computed)
    def better(d, sign):  # CI excludes 0 in the favourable direction
        return (d["lo"] > 0) if sign > 0 else (d["hi"] < 0)

    def worse(d, sign):
        return (d["hi"] < 0) if sign > 0 else (d["lo"] > 0)

    verdict_lines, headline = [], {}
    for name in faith:
        rows = {(r["T"], r["vs"]): r for r in tables["paired"] if r["model"] == name}
        score = {T: sum(better(rows[(T, "gradient")][m], s) - worse(rows[(T, "gradient")][m], s) for m, s in FAITH) for T in TEMPS}
        score_all = {T: sum(better(rows[(T, b)][m], s) - worse(rows[(T, b)][m], s) for m, s in FAITH for b in BASELINES) for T in TEMPS}
        best_T = max(TEMPS, key=lambda T: (score[T], score_all[T], -abs(T - 0.3)))  # ties: more wins over all baselines
        r = rows[(best_T, "gradient")]
        nb = sum(better(r[m], s) for m, s in FAITH)
        nw = sum(worse(r[m], s) for m, s in FAITH)
        beats_all = [m for m, s in FAITH if all(better(rows[(best_T, b)][m], s) for b in BASELINES)]
        verdict_lines.append(f"{name}: best T = {best_T:g}; vs the gradient better on {nb}/4 faithfulness metrics and worse on {nw}/4 "
                             f"(95% CIs excluding 0); better than all four baselines on {len(beats_all)}/4"
                             + (f" ({', '.join(beats_all)})" if beats_all else "") + ".")
        tg = M.mean_ci(faith[name]["gradient"]["template_sim"])["mean"]
        tp = M.mean_ci(faith[name][_pb(best_T)]["template_sim"])["mean"]
        verdict_lines.append(f"Caveat for {name}: at T = {best_T:g} a pullback map correlates {tp:.2f} on average with the maps of other "
                             f"images of the same class (gradient: {tg:.2f}), i.e. it moves towards an input-independent class template as T grows.")
        headline[name] = {"best_T": best_T, "template_sim_best_T": tp, "template_sim_gradient": tg, "better_vs_gradient": nb, "worse_vs_gradient": nw, "beats_all_baselines": beats_all,
                          **{f"{m}_diff_vs_gradient": r[m] for m, _ in FAITH}}
    for lname in loc:
        rows = {(r["T"], r["vs"]): r for r in tables["paired_localisation"] if r["model"] == lname}
        mets = list(loc[lname]["gradient"])
        r = rows[(0.3, "gradient")]
        nb = sum(better(r[m], 1) for m in mets)
        nw = sum(worse(r[m], 1) for m in mets)
        verdict_lines.append(f"{lname}: pullback T=0.3 vs gradient better on {nb}/{len(mets)} localisation metrics, worse on {nw}/{len(mets)}.")
        headline[lname] = {m + "_diff_vs_gradient_T0.3": r[m] for m in mets}
    n_models_better = sum(1 for n in faith if headline[n]["better_vs_gradient"] > headline[n]["worse_vs_gradient"])
    overall = (f"Pullbacks are more faithful than plain gradients (more metrics better than worse) on {n_models_better} of {len(faith)} "
               f"zoo models here")
    deep = headline.get("digits-deep-mlp")
    if deep is not None and "digits-cnn" in headline:
        overall += (f"; on the deep MLP the best T is {deep['best_T']:g} ({deep['better_vs_gradient']} better / {deep['worse_vs_gradient']} worse), "
                    f"on the CNN {headline['digits-cnn']['best_T']:g} ({headline['digits-cnn']['better_vs_gradient']} better / "
                    f"{headline['digits-cnn']['worse_vs_gradient']} worse)")
    overall += "."

    # ------------------------------------------------------------------ figures
    figures = []
    if "digits-cnn" in faith:
        xs, ys = fig_x[:4], fig_y[:4]
        cf = [(int(c) + k) % 10 for c in ys for k in (3, 5, 7)]
        cells, rlab = [], []
        for i in range(4):
            targets = [int(ys[i])] + cf[3 * i:3 * i + 3]
            for label, rules, meth in (("pullback", pullback_rules(0.3), ExcitationPullback(fig_model, 0.3)), ("gradient", gradient_rules(), Gradient(fig_model))):
                row = [("input", xs[i].numpy())] + [("map", meth.attribute(xs[i:i + 1], c)[0].numpy()) for c in targets]
                asc = pullback_ascent(fig_model, xs[i:i + 1], targets[1], steps=5, rules=rules)
                row += [("delta", asc.delta[0].numpy()), ("input", asc.x[0].numpy())]
                cells.append(row)
                rlab.append(f"{label} (y={int(ys[i])})")
        image_grid(cells, out / "pullback_grid.png", row_labels=rlab,
                   col_labels=["input", "own class", "counterfact. 1", "counterfact. 2", "counterfact. 3", "ascent Δ → cf 1", "ascent result"],
                   title="digits-cnn seed 0: excitation pullback (T=0.3) vs gradient; own and counterfactual targets; 5-step ascent")
        figures.append(("pullback_grid.png", "digits-cnn, seed 0: for each input, a row of excitation pullbacks (T = 0.3) and a row of plain gradients for "
                        "the true class and three counterfactual classes (red +, blue -), then the 5-step ascent change towards counterfactual 1 "
                        "(pullback-guided vs gradient-guided) and its result."))
    fig, axes = new_figure(1, 4, size=(15, 3.2))
    for j, (metric, sign) in enumerate(FAITH):
        ax = axes[j]
        for k, name in enumerate(faith):
            ys_ = [M.mean_ci(faith[name][_pb(T)][metric]) for T in TEMPS]
            ax.errorbar(TEMPS, [d["mean"] for d in ys_], yerr=[[d["mean"] - d["lo"] for d in ys_], [d["hi"] - d["mean"] for d in ys_]],
                        color=PALETTE[k], marker="o", ms=3, label=f"{name} pullback", capsize=2)
            g = M.mean_ci(faith[name]["gradient"][metric])
            ax.axhline(g["mean"], color=PALETTE[k], ls="--", lw=1, label=f"{name} gradient")
        ax.set_xscale("log")
        style_axes(ax, title=f"{metric} ({'higher' if sign > 0 else 'lower'} is better)", xlabel="T")
    axes[0].legend(fontsize=6)
    savefig(fig, out / "pullback_temperature.png")
    figures.append(("pullback_temperature.png", "Faithfulness of pullbacks against T (mean, 95% CI over seeds and images); dashed: the plain gradient of the same model."))
    cells, rlab = [], []
    for lname in ("planted-cnn", "mosaic-cnn"):
        xe, te, me, maps = loc_info[lname][0].pop("example")
        for i in range(3):
            cells.append([("input", xe[i].numpy()), ("input", me[i].float().numpy()), ("map", maps["gradient"][i].numpy()), ("map", maps[_pb(0.3)][i].numpy())])
            rlab.append(f"{lname} y={int(te[i])}")
    for v in loc_info.values():
        for d in v:
            d.pop("example", None)
    image_grid(cells, out / "pullback_localisation.png", row_labels=rlab, col_labels=["input", "ground truth", "gradient", "pullback T=0.3"],
               title="localisation examples")
    figures.append(("pullback_localisation.png", "Planted-stamp digits (the 3x3 stamp alone decides the class) and 2x2 mosaics (two tiles of the target class): "
                    "ground truth, gradient and pullback (T = 0.3)."))

    # ------------------------------------------------------------------ section + result
    sec = Section("Excitation pullbacks on digits and Fashion-MNIST", order=60)
    sec.paragraphs.append(
        f"Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832; soft gate sigmoid(z/T) in the backward pass only) against gradient, "
        f"input x gradient, SmoothGrad ({'8' if quick else '16'} samples, sigma 0.15) and integrated gradients ({'16' if quick else '32'} steps). "
        f"{n_img} test images per model, true-class logit, seeds 0..{n_seeds - 1}; CIs are 95% two-level bootstraps (seeds, then images), paired on the same images.")
    sec.paragraphs.append("Verdict (computed from the CIs): " + overall + " " + " ".join(verdict_lines))
    if notes:
        sec.paragraphs.append("Notes: " + "; ".join(notes) + ".")
    cols = ["model", "method"] + [f"{m} {'↑' if s > 0 else '↓'}" for m, s in FAITH] + ["random-logit sim ↓", "same-class map corr"]
    rows = [[r["model"], r["method"]] + [f"{r[m]:.3f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" for m, _ in FAITH + (("random_logit", -1), ("template_sim", 0))]
            for r in tables["faithfulness"]]
    sec.table("Faithfulness per method (mean [95% CI]). Deletion/insertion: AUC of the true-class probability (16 steps, baseline 0); "
              "infidelity: optimal-scaling, relative to E[Δf²]; faith corr: Bhatt et al.; same-class map corr: mean correlation with the maps of "
              "other images of the same class (high = template-like, input-insensitive).", cols, rows)
    rows = [[r["model"], f"{r['T']:g}", r["vs"]] + [_fmt(r[m]) for m, _ in FAITH + (("random_logit", -1),)] for r in tables["paired"]]
    sec.table("Paired differences, pullback(T) − baseline (mean [95% CI]); favourable: deletion < 0, insertion > 0, infidelity < 0, faith corr > 0.",
              ["model", "T", "vs", "Δ deletion", "Δ insertion", "Δ infidelity", "Δ faith corr", "Δ random-logit"], rows)
    lcols = ["model", "method", "relevance mass ↑", "rank accuracy ↑", "pointing game ↑ / focus ↑"]
    rows = []
    for r in tables["localisation"]:
        if "focus" in r:
            rows.append([r["model"], r["method"], "", "", f"{r['focus']:.3f} [{r['focus_lo']:.3f}, {r['focus_hi']:.3f}]"])
        else:
            rows.append([r["model"], r["method"]] + [f"{r[m]:.3f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]" for m, _ in LOC])
    sec.table("Localisation: planted stamps (relevance mass of positive A, rank accuracy of |A|, pointing game) and 2x2 mosaics (focus of positive A⊙x).", lcols, rows)
    rows = [[r["model"], f"{r['T']:g}", r["vs"]] + [_fmt(r[m]) for m in ("relevance_mass", "rank_accuracy", "pointing_game", "focus") if m in r]
            for r in tables["paired_localisation"] if r["vs"] == "gradient"]
    rows = [r + [""] * (6 - len(r)) for r in rows]
    sec.table("Localisation, paired differences pullback(T) − gradient (mean [95% CI]); for mosaics the first column is focus.",
              ["model", "T", "vs", "Δ relevance mass / Δ focus", "Δ rank accuracy", "Δ pointing game"], rows)
    sec.table("Sanity checks (must pass, not win): Spearman of |A| after randomising the top layer / all layers (should drop), random-logit similarity.",
              ["model", "method", "Spearman top layer", "Spearman all layers", "random-logit sim"],
              [[r["model"], r["method"], f"{r['spearman_top_layer']:.3f}", f"{r['spearman_all_layers']:.3f}", f"{r['random_logit']:.3f}"] for r in sanity_rows])
    acc_rows = [[n, d["seed"], d.get("test_accuracy")] for n, v in model_info.items() for d in v] + [[n, d["seed"], d["test_accuracy"]] for n, v in loc_info.items() for d in v]
    sec.table("Models (test accuracy; planted/mosaic models trained by this study)", ["model", "seed", "test accuracy"], acc_rows)
    for f, cap in figures:
        sec.figure(f, cap)
    sec.save(out)

    flat_paired = [{**{k: v for k, v in r.items() if not isinstance(v, dict)}, **{f"{m}_{q}": r[m][q] for m in r if isinstance(r[m], dict) for q in ("mean", "lo", "hi")}}
                   for r in tables["paired"] + tables["paired_localisation"]]
    result = Result("study:pullback-digits",
                    data={"verdict": overall, "verdict_details": verdict_lines, "headline": headline, "seeds": list(range(n_seeds)), "n_images": n_img,
                          "quick": quick, "temperatures": list(TEMPS), "models": model_info, "local_models": loc_info, "notes": notes,
                          "seconds": time.time() - t_start},
                    tables={"faithfulness": tables["faithfulness"], "paired": flat_paired, "localisation": tables["localisation"], "sanity": sanity_rows},
                    provenance=provenance(seed=0, model=",".join(MODELS), config={"n_images": n_img, "seeds": n_seeds, "quick": quick, "temperatures": TEMPS}))
    result.save(out / "summary.json")
    return result
