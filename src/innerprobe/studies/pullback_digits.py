"""Study ``pullback-digits``: are excitation pullbacks more faithful than gradients on small nets?

Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832) at T in {0.1, 0.3, 0.6, 1, 3} against
the plain gradient, input x gradient, SmoothGrad and integrated gradients, on ``digits-cnn``
(conv-BN-ReLU-maxpool, the paper's regime), ``digits-deep-mlp`` (6 hidden ReLU layers) and
``fashion-cnn``, over zoo seeds; plus localisation on planted-stamp digits and 2x2 mosaics (models
trained here), and sanity checks (cascading randomisation, random logit, Guided Backprop as the
failing control). Every comparison is paired on the same images; CIs are two-level bootstraps
over seeds and images (:func:`innerprobe.core.stats.nested_bootstrap`). The verdict is computed from
the CIs; summary.json holds its headline rows (docs/results.md, docs/pullback.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core.plotting import PALETTE, new_figure, savefig, style_axes
from ..core.stats import CI, nested_bootstrap
from ..report.sections import Section
from ..results import Result, provenance, row

TEMPS = (0.1, 0.3, 0.6, 1.0, 3.0)
BASELINES = ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients")
FAITH = (("deletion", -1), ("insertion", +1), ("infidelity", -1), ("faith_corr", +1))  # (metric, +1 higher is better)
LOC = (("relevance_mass", +1), ("rank_accuracy", +1), ("pointing_game", +1))
MODELS = ("digits-cnn", "digits-deep-mlp", "fashion-cnn")


def _pb(T):
    return f"pullback T={T:g}"


def _methods(model, quick: bool) -> dict:
    from ..pullback import ExcitationPullback, Gradient, InputXGradient, IntegratedGradients, SmoothGrad

    m = {
        "gradient": Gradient(model),
        "input_x_gradient": InputXGradient(model),
        "smoothgrad": SmoothGrad(model, n_samples=8 if quick else 16, sigma=0.15, seed=0),
        "integrated_gradients": IntegratedGradients(model, steps=16 if quick else 32),
    }
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
        r = {
            "deletion": M.deletion_auc(model, x, a, t, steps=steps, chunk_size=chunk),
            "insertion": M.insertion_auc(model, x, a, t, steps=steps, chunk_size=chunk),
            "infidelity": M.infidelity(model, x, a, t, n_perturb=nper, chunk_size=chunk),
            "faith_corr": M.faithfulness_correlation(model, x, a, t, n_subsets=nper, chunk_size=chunk),
            "random_logit": M.random_logit(lambda xx, tt, m=methods[name]: m.attribute(xx, tt), x, t, n_classes),
            "template_sim": _template_sim(a, t),
        }
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
    return torch.where(
        cnt > 0, (c * same).sum(1) / cnt.clamp_min(1), torch.full((len(t),), float("nan"), dtype=c.dtype)
    ).float()


def _stack(per_seed: list[dict]) -> dict:
    """[{method: {metric: [N]}}] per seed -> {method: {metric: [S, N]}}."""
    return {m: {k: np.stack([s[m][k] for s in per_seed]) for k in per_seed[0][m]} for m in per_seed[0]}


def _ci(a, b=None) -> dict:
    """{"mean", "lo", "hi"}: two-level bootstrap (seeds, then images) of the mean of ``a`` (or of ``a - b``)."""
    a = np.asarray(a, float)
    c = nested_bootstrap(a if b is None else a - np.asarray(b, float))
    return {"mean": c.estimate, "lo": c.lo, "hi": c.hi, "n": c.n}


def _fmt(d: dict, digits: int = 3, sign: str = "+") -> str:
    if d["mean"] is None:
        return "n/a"
    f = f"{{:{sign}.{digits}f}}"
    return f.format(d["mean"]) + ("" if d["lo"] is None else f" [{f.format(d['lo'])}, {f.format(d['hi'])}]")


def _fmt_mean(d: dict, digits: int = 3) -> str:
    return _fmt(d, digits, sign="")


def _load_zoo(name: str, seed: int, quick: bool):
    from .. import zoo

    if quick and name == "fashion-cnn" and zoo.status(name, seed)[0] != "cached":
        return None, None
    return zoo.load(name, seed=seed)


# ---------------------------------------------------------------------- localisation (zoo loc-* recipes)
LOC_MODELS = ("planted-cnn", "planted-deep-mlp", "mosaic-cnn")  # zoo recipes "loc-<name>"


def _loc_inputs(lname: str, digits, n_img: int):
    from ..zoo.localisation import mosaics, planted

    if lname == "mosaic-cnn":
        return mosaics(digits.x_test, digits.y_test, n_img, 99)
    return planted(digits.x_test[:n_img], 99, "random" if lname == "planted-cnn" else "corners")


def _localisation(digits, n_seeds: int, n_img: int, quick: bool, chunk: int):
    """{model: {method: {metric: [S, N]}}} and per-model info (accuracy; seed 0 keeps example maps)."""
    from .. import zoo
    from ..pullback import GuidedBackprop
    from ..pullback import metrics as M

    loc, loc_info = {}, {}
    for lname in LOC_MODELS:
        per_seed = []
        for seed in range(n_seeds):
            model, card = zoo.load(f"loc-{lname}", seed=seed)
            loc_info.setdefault(lname, []).append(
                {"name": lname, "seed": seed, "test_accuracy": card["metrics"]["test_accuracy"]}
            )
            x, t, mask = _loc_inputs(lname, digits, n_img)
            methods = _methods(model, quick)
            methods["guided_backprop"] = GuidedBackprop(model)
            maps = _attributions(methods, x, t, chunk)
            if lname == "mosaic-cnn":
                per_seed.append({m: {"focus": M.mosaic_focus(a, x, mask).numpy()} for m, a in maps.items()})
            else:
                per_seed.append(
                    {m: {k: v.numpy() for k, v in M.localisation(a, mask).items()} for m, a in maps.items()}
                )
            if seed == 0:
                loc_info[lname][0]["example"] = (
                    x[:4],
                    t[:4],
                    mask[:4],
                    {k: maps[k][:4] for k in ("gradient", _pb(0.3))},
                )
        loc[lname] = _stack(per_seed)
    return loc, loc_info


# ---------------------------------------------------------------------- faithfulness on zoo models
def _sanity(model, name: str, x, t) -> list[dict]:
    """Cascading randomisation and random-logit similarity: pullback vs gradient vs guided backprop."""
    from ..pullback import ExcitationPullback, Gradient, GuidedBackprop
    from ..pullback import metrics as M

    out = []
    for label, fn in (
        ("gradient", lambda m, xx, tt: Gradient(m).attribute(xx, tt)),
        (_pb(0.3), lambda m, xx, tt: ExcitationPullback(m, 0.3).attribute(xx, tt)),
        ("guided_backprop", lambda m, xx, tt: GuidedBackprop(m).attribute(xx, tt)),
    ):
        rows = M.cascading_randomisation(model, x, t, fn, seed=0)
        rl = M.random_logit(lambda xx, tt: fn(model, xx, tt), x, t, 10)
        out.append(
            {
                "model": name,
                "method": label,
                "spearman_top_layer": rows[0]["spearman"],
                "spearman_all_layers": rows[-1]["spearman"],
                "random_logit": float(torch.nanmean(rl)),
            }
        )
    return out


def _test_images(split, n_img: int):
    gen = torch.Generator().manual_seed(1234)
    idx = torch.randperm(len(split.x_test), generator=gen)[:n_img]
    return split.x_test[idx].float(), split.y_test[idx]


def _zoo_faithfulness(digits, n_seeds: int, n_img: int, quick: bool, chunk: int, notes: list):
    """Faithfulness {model: {method: {metric: [S, N]}}}, model info, sanity rows, and digits-cnn seed 0's example."""
    from .. import zoo

    faith, model_info, sanity, example = {}, {}, [], None
    for name in MODELS:
        per_seed = []
        for seed in range(n_seeds):
            model, card = _load_zoo(name, seed, quick)
            if model is None:
                notes.append(
                    f"{name} skipped in --quick mode (not cached; run the full study or 'innerprobe zoo train {name}')"
                )
                break
            split = digits if name != "fashion-cnn" else zoo.recipe_data(name, seed=seed)  # same test set per seed
            x, y = _test_images(split, n_img)
            with torch.no_grad():
                pred = model(x).argmax(-1)
            methods = _methods(model, quick)
            maps = _attributions(methods, x, y, chunk)  # explain the true class
            per_seed.append(_faithfulness(model, x, y, maps, methods, 10, chunk, quick))
            model_info.setdefault(name, []).append(
                {
                    "seed": seed,
                    "test_accuracy": (card.get("metrics") or {}).get("test_accuracy"),
                    "accuracy_on_images": float((pred == y).float().mean()),
                }
            )
            if seed == 0:
                sanity += _sanity(model, name, x[:24], y[:24])
                if name == "digits-cnn":
                    example = (model, x, y)
        if per_seed:
            faith[name] = _stack(per_seed)
    return faith, model_info, sanity, example


# ---------------------------------------------------------------------- tables and verdict
def _method_rows(results: dict) -> list[dict]:
    out = []
    for name, res in results.items():
        for meth, ms in res.items():
            r = {"model": name, "method": meth}
            for metric, arr in ms.items():
                c = _ci(arr)
                r.update({metric: c["mean"], f"{metric}_lo": c["lo"], f"{metric}_hi": c["hi"]})
            out.append(r)
    return out


def _paired_rows(results: dict, metrics_of) -> list[dict]:
    out = []
    for name, res in results.items():
        for T in TEMPS:
            for base in BASELINES:
                r = {"model": name, "T": T, "vs": base}
                for metric in metrics_of(res):
                    r[metric] = _ci(res[_pb(T)][metric], res[base][metric])
                out.append(r)
    return out


def _tables(faith: dict, loc: dict, sanity: list) -> dict:
    return {
        "faithfulness": _method_rows(faith),
        "localisation": _method_rows(loc),
        "sanity": sanity,
        "paired": _paired_rows(faith, lambda res: [m for m, _ in FAITH] + ["random_logit"]),
        "paired_localisation": _paired_rows(loc, lambda res: list(res["gradient"])),
    }


def _better(d, sign):  # CI excludes 0 in the favourable direction
    return d["lo"] is not None and ((d["lo"] > 0) if sign > 0 else (d["hi"] < 0))


def _worse(d, sign):
    return d["lo"] is not None and ((d["hi"] < 0) if sign > 0 else (d["lo"] > 0))


def _verdict_model(name: str, paired: list, faith: dict) -> tuple[list[str], dict]:
    rows = {(r["T"], r["vs"]): r for r in paired if r["model"] == name}

    def wins(T, bases):
        return sum(_better(rows[(T, b)][m], s) - _worse(rows[(T, b)][m], s) for m, s in FAITH for b in bases)

    best_T = max(TEMPS, key=lambda T: (wins(T, ["gradient"]), wins(T, BASELINES), -abs(T - 0.3)))  # ties: all baselines
    r = rows[(best_T, "gradient")]
    nb, nw = sum(_better(r[m], s) for m, s in FAITH), sum(_worse(r[m], s) for m, s in FAITH)
    beats_all = [m for m, s in FAITH if all(_better(rows[(best_T, b)][m], s) for b in BASELINES)]
    tg = _ci(faith[name]["gradient"]["template_sim"])["mean"]
    tp = _ci(faith[name][_pb(best_T)]["template_sim"])["mean"]
    lines = [
        f"{name}: best T = {best_T:g}; vs the gradient better on {nb}/4 faithfulness metrics and worse on {nw}/4 "
        f"(95% CIs excluding 0); better than all four baselines on {len(beats_all)}/4"
        + (f" ({', '.join(beats_all)})" if beats_all else "")
        + ".",
        f"Caveat for {name}: at T = {best_T:g} a pullback map correlates {tp:.2f} on average with the maps of "
        f"other images of the same class (gradient: {tg:.2f}), i.e. it moves towards an input-independent class "
        "template as T grows.",
    ]
    return lines, {
        "best_T": best_T,
        "template_sim_best_T": tp,
        "template_sim_gradient": tg,
        "better_vs_gradient": nb,
        "worse_vs_gradient": nw,
        "beats_all_baselines": beats_all,
        "diff_vs_gradient": {m: r[m] for m, _ in FAITH},
    }


def _verdict(tables: dict, faith: dict, loc: dict) -> tuple[str, list[str], dict]:
    lines, headline = [], {}
    for name in faith:
        ls, headline[name] = _verdict_model(name, tables["paired"], faith)
        lines += ls
    for lname in loc:
        r = next(
            r for r in tables["paired_localisation"] if r["model"] == lname and r["T"] == 0.3 and r["vs"] == "gradient"
        )
        mets = list(loc[lname]["gradient"])
        nb, nw = sum(_better(r[m], 1) for m in mets), sum(_worse(r[m], 1) for m in mets)
        lines.append(
            f"{lname}: pullback T=0.3 vs gradient better on {nb}/{len(mets)} localisation metrics, worse on "
            f"{nw}/{len(mets)}."
        )
        headline[lname] = {"diff_vs_gradient": {m: r[m] for m in mets}}
    n_better = sum(1 for n in faith if headline[n]["better_vs_gradient"] > headline[n]["worse_vs_gradient"])
    overall = (
        f"Pullbacks are more faithful than plain gradients (more metrics better than worse) on {n_better} of "
        f"{len(faith)} zoo models here"
    )
    deep, cnn = headline.get("digits-deep-mlp"), headline.get("digits-cnn")
    if deep is not None and cnn is not None:
        overall += (
            f"; on the deep MLP the best T is {deep['best_T']:g} ({deep['better_vs_gradient']} better / "
            f"{deep['worse_vs_gradient']} worse), on the CNN {cnn['best_T']:g} ({cnn['better_vs_gradient']} "
            f"better / {cnn['worse_vs_gradient']} worse)"
        )
    return overall + ".", lines, headline


def _rows(headline: dict, faith: dict, loc: dict, seeds: list[int]) -> list[dict]:
    """Headline rows: per zoo model the best T, the paired differences vs the gradient there, template similarity;
    per localisation model the differences vs the gradient at T = 0.3."""
    out = []
    for name in faith:
        h = headline[name]
        out.append(
            row(
                "best_temperature",
                h["best_T"],
                model=name,
                seeds=seeds,
                n=len(seeds),
                condition={"criterion": "faithfulness_wins_vs_gradient"},
            )
        )
        for m, d in h["diff_vs_gradient"].items():
            out.append(
                row(
                    "paired_difference",
                    CI(d["mean"], d["lo"], d["hi"], 0.95, "nested-bootstrap", d["n"]),
                    model=name,
                    seeds=seeds,
                    condition={"measure": m, "temperature": h["best_T"], "baseline": "gradient"},
                )
            )
        for meth, T in (("pullback", h["best_T"]), ("gradient", None)):
            d = _ci(faith[name][_pb(T) if T else "gradient"]["template_sim"])
            out.append(
                row(
                    "same_class_map_correlation",
                    CI(d["mean"], d["lo"], d["hi"], 0.95, "nested-bootstrap", d["n"]),
                    model=name,
                    seeds=seeds,
                    condition={"method": meth, "temperature": T},
                )
            )
    for lname in loc:
        for m, d in headline[lname]["diff_vs_gradient"].items():
            out.append(
                row(
                    "paired_difference",
                    CI(d["mean"], d["lo"], d["hi"], 0.95, "nested-bootstrap", d["n"]),
                    model=f"loc-{lname}",
                    seeds=seeds,
                    condition={"measure": m, "temperature": 0.3, "baseline": "gradient"},
                )
            )
    return out


# ---------------------------------------------------------------------- figures
def _grid_figure(example, out: Path):
    from ..pullback import ExcitationPullback, Gradient, gradient_rules, pullback_ascent, pullback_rules
    from .pullback_plots import image_grid

    model, x, y = example
    xs, ys = x[:4], y[:4]
    cf = [(int(c) + k) % 10 for c in ys for k in (3, 5, 7)]
    cells, rlab = [], []
    for i in range(4):
        targets = [int(ys[i])] + cf[3 * i : 3 * i + 3]
        for label, rules, meth in (
            ("pullback", pullback_rules(0.3), ExcitationPullback(model, 0.3)),
            ("gradient", gradient_rules(), Gradient(model)),
        ):
            r = [("input", xs[i].numpy())] + [("map", meth.attribute(xs[i : i + 1], c)[0].numpy()) for c in targets]
            asc = pullback_ascent(model, xs[i : i + 1], targets[1], steps=5, rules=rules)
            cells.append(r + [("delta", asc.delta[0].numpy()), ("input", asc.x[0].numpy())])
            rlab.append(f"{label} (y={int(ys[i])})")
    image_grid(
        cells,
        out / "pullback_grid.png",
        row_labels=rlab,
        col_labels=[
            "input",
            "own class",
            "counterfact. 1",
            "counterfact. 2",
            "counterfact. 3",
            "ascent Δ → cf 1",
            "ascent result",
        ],
        title="digits-cnn seed 0: excitation pullback (T=0.3) vs gradient; own and counterfactual targets; "
        "5-step ascent",
    )
    return (
        "pullback_grid.png",
        "digits-cnn, seed 0: for each input, a row of excitation pullbacks (T = 0.3) and a "
        "row of plain gradients for the true class and three counterfactual classes (red +, blue -), then the "
        "5-step ascent change towards counterfactual 1 (pullback-guided vs gradient-guided) and its result.",
    )


def _temperature_figure(faith: dict, out: Path):
    fig, axes = new_figure(1, 4, size=(15, 3.2))
    for j, (metric, sign) in enumerate(FAITH):
        ax = axes[j]
        for k, name in enumerate(faith):
            ys_ = [_ci(faith[name][_pb(T)][metric]) for T in TEMPS]
            ax.errorbar(
                TEMPS,
                [d["mean"] for d in ys_],
                yerr=[[d["mean"] - d["lo"] for d in ys_], [d["hi"] - d["mean"] for d in ys_]],
                color=PALETTE[k],
                marker="o",
                ms=3,
                label=f"{name} pullback",
                capsize=2,
            )
            ax.axhline(
                _ci(faith[name]["gradient"][metric])["mean"], color=PALETTE[k], ls="--", lw=1, label=f"{name} gradient"
            )
        ax.set_xscale("log")
        style_axes(ax, title=f"{metric} ({'higher' if sign > 0 else 'lower'} is better)", xlabel="T")
    axes[0].legend(fontsize=6)
    savefig(fig, out / "pullback_temperature.png")
    return (
        "pullback_temperature.png",
        "Faithfulness of pullbacks against T (mean, 95% CI over seeds and images); "
        "dashed: the plain gradient of the same model.",
    )


def _localisation_figure(loc_info: dict, out: Path):
    from .pullback_plots import image_grid

    cells, rlab = [], []
    for lname in ("planted-cnn", "mosaic-cnn"):
        xe, te, me, maps = loc_info[lname][0].pop("example")
        for i in range(3):
            cells.append(
                [
                    ("input", xe[i].numpy()),
                    ("input", me[i].float().numpy()),
                    ("map", maps["gradient"][i].numpy()),
                    ("map", maps[_pb(0.3)][i].numpy()),
                ]
            )
            rlab.append(f"{lname} y={int(te[i])}")
    for v in loc_info.values():
        for d in v:
            d.pop("example", None)
    image_grid(
        cells,
        out / "pullback_localisation.png",
        row_labels=rlab,
        col_labels=["input", "ground truth", "gradient", "pullback T=0.3"],
        title="localisation examples",
    )
    return (
        "pullback_localisation.png",
        "Planted-stamp digits (the 3x3 stamp alone decides the class) and 2x2 mosaics "
        "(two tiles of the target class): ground truth, gradient and pullback (T = 0.3).",
    )


# ---------------------------------------------------------------------- section
def _faith_tables(sec, tables) -> None:
    cols = (
        ["model", "method"]
        + [f"{m} {'↑' if s > 0 else '↓'}" for m, s in FAITH]
        + ["random-logit sim ↓", "same-class map corr"]
    )
    sec.table(
        "Faithfulness per method (mean [95% CI]). Deletion/insertion: AUC of the true-class probability (16 "
        "steps, baseline 0); infidelity: optimal-scaling, relative to E[Δf²]; faith corr: Bhatt et al.; "
        "same-class map corr: mean correlation with the maps of other images of the same class (high = "
        "template-like, input-insensitive).",
        cols,
        [
            [r["model"], r["method"]]
            + [
                _fmt_mean({"mean": r[m], "lo": r[m + "_lo"], "hi": r[m + "_hi"]})
                for m in [m for m, _ in FAITH] + ["random_logit", "template_sim"]
            ]
            for r in tables["faithfulness"]
        ],
    )
    sec.table(
        "Paired differences, pullback(T) − baseline (mean [95% CI]); favourable: deletion < 0, insertion > 0, "
        "infidelity < 0, faith corr > 0.",
        ["model", "T", "vs", "Δ deletion", "Δ insertion", "Δ infidelity", "Δ faith corr", "Δ random-logit"],
        [
            [r["model"], f"{r['T']:g}", r["vs"]] + [_fmt(r[m]) for m in [m for m, _ in FAITH] + ["random_logit"]]
            for r in tables["paired"]
        ],
    )


def _loc_tables(sec, tables) -> None:
    rows = []
    for r in tables["localisation"]:
        if "focus" in r:
            rows.append(
                [
                    r["model"],
                    r["method"],
                    "",
                    "",
                    _fmt_mean({"mean": r["focus"], "lo": r["focus_lo"], "hi": r["focus_hi"]}),
                ]
            )
        else:
            rows.append(
                [r["model"], r["method"]]
                + [_fmt_mean({"mean": r[m], "lo": r[m + "_lo"], "hi": r[m + "_hi"]}) for m, _ in LOC]
            )
    sec.table(
        "Localisation: planted stamps (relevance mass of positive A, rank accuracy of |A|, pointing game) and "
        "2x2 mosaics (focus of positive A⊙x).",
        ["model", "method", "relevance mass ↑", "rank accuracy ↑", "pointing game ↑ / focus ↑"],
        rows,
    )
    rows = [
        [r["model"], f"{r['T']:g}", r["vs"]]
        + [_fmt(r[m]) for m in ("relevance_mass", "rank_accuracy", "pointing_game", "focus") if m in r]
        for r in tables["paired_localisation"]
        if r["vs"] == "gradient"
    ]
    sec.table(
        "Localisation, paired differences pullback(T) − gradient (mean [95% CI]); for mosaics the first column "
        "is focus.",
        ["model", "T", "vs", "Δ relevance mass / Δ focus", "Δ rank accuracy", "Δ pointing game"],
        [r + [""] * (6 - len(r)) for r in rows],
    )


def _section(tables, overall, lines, notes, model_info, loc_info, figures, rows, *, n_img, n_seeds, quick):
    sec = Section("Excitation pullbacks on digits and Fashion-MNIST", order=60)
    sec.rows = rows
    sec.paragraphs.append(
        "Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832; soft gate sigmoid(z/T) in the backward pass only) "
        f"against gradient, input x gradient, SmoothGrad ({'8' if quick else '16'} samples, sigma 0.15) and integrated "
        f"gradients ({'16' if quick else '32'} steps). {n_img} test images per model, true-class logit, seeds "
        f"0..{n_seeds - 1}; CIs are 95% two-level bootstraps (seeds, then images), paired on the same images."
    )
    sec.paragraphs.append("Verdict (computed from the CIs): " + overall + " " + " ".join(lines))
    if notes:
        sec.paragraphs.append("Notes: " + "; ".join(notes) + ".")
    _faith_tables(sec, tables)
    _loc_tables(sec, tables)
    sec.table(
        "Sanity checks (must pass, not win): Spearman of |A| after randomising the top layer / all layers "
        "(should drop), random-logit similarity.",
        ["model", "method", "Spearman top layer", "Spearman all layers", "random-logit sim"],
        [
            [
                r["model"],
                r["method"],
                f"{r['spearman_top_layer']:.3f}",
                f"{r['spearman_all_layers']:.3f}",
                f"{r['random_logit']:.3f}",
            ]
            for r in tables["sanity"]
        ],
    )
    sec.table(
        "Models (test accuracy; planted/mosaic models are the zoo's loc-* recipes)",
        ["model", "seed", "test accuracy"],
        [[n, d["seed"], d.get("test_accuracy")] for n, v in model_info.items() for d in v]
        + [[f"loc-{n}", d["seed"], d["test_accuracy"]] for n, v in loc_info.items() for d in v],
    )
    for f, cap in figures:
        sec.figure(f, cap)
    return sec


def run(out: Path, seeds: int = 3, quick: bool = False):
    from .. import zoo

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    n_img, n_seeds, chunk = (40 if quick else 100), (1 if quick else max(1, int(seeds))), 256
    torch.manual_seed(0)
    notes: list[str] = []
    digits = zoo.recipe_data("digits-cnn", seed=0)
    loc, loc_info = _localisation(digits, n_seeds, n_img, quick, chunk)
    faith, model_info, sanity, example = _zoo_faithfulness(digits, n_seeds, n_img, quick, chunk, notes)
    tables = _tables(faith, loc, sanity)
    overall, lines, headline = _verdict(tables, faith, loc)
    figures = ([_grid_figure(example, out)] if example is not None else []) + [
        _temperature_figure(faith, out),
        _localisation_figure(loc_info, out),
    ]
    seed_list = list(range(n_seeds))
    rows = _rows(headline, faith, loc, seed_list)
    _section(
        tables, overall, lines, notes, model_info, loc_info, figures, rows, n_img=n_img, n_seeds=n_seeds, quick=quick
    ).save(out)
    flat_paired = [
        {
            **{k: v for k, v in r.items() if not isinstance(v, dict)},
            **{f"{m}_{q}": r[m][q] for m in r if isinstance(r[m], dict) for q in ("mean", "lo", "hi")},
        }
        for r in tables["paired"] + tables["paired_localisation"]
    ]
    result = Result(
        "study:pullback-digits",
        rows=rows,
        data={
            "verdict": overall,
            "verdict_details": lines,
            "seeds": seed_list,
            "n_images": n_img,
            "quick": quick,
            "temperatures": list(TEMPS),
            "models": model_info,
            "local_models": loc_info,
            "notes": notes,
            "seconds": time.time() - t_start,
        },
        tables={
            "faithfulness": tables["faithfulness"],
            "paired": flat_paired,
            "localisation": tables["localisation"],
            "sanity": sanity,
        },
        provenance=provenance(
            seed=0,
            model=",".join(MODELS),
            config={"n_images": n_img, "seeds": n_seeds, "quick": quick, "temperatures": TEMPS},
        ),
    )
    result.save(out / "summary.json")
    return result
