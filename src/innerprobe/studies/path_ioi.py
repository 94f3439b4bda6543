"""Study ``path-ioi``: the IOI circuit of the zoo's Llama (``ioi-llama``), found and checked.

A CPU-scale version of Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593) on a
model we trained (docs/ioi.md). Per seed, on held-out prompts (test split: held-out names and
templates) with the ABC counterfactual (three fresh names):

1. attention scores per head (END->IO, END->S2, S2->S1, S2->S1+1, S1+1->S1) against the chance
   level of uniform causal attention, and direct logit attribution at END;
2. node patching of every head at END, S2, S1+1 and at all positions;
3. position-aware path patching, backwards from the logits as in Wang et al. §3: heads -> logits
   (name movers), heads -> name movers' queries at END (S-inhibition), heads -> S-inhibition
   heads' values at S2 (induction / duplicate-token), heads -> induction heads' keys at S1+1
   (previous-token). A head gets a class only when its path effect is at least ``EFFECT_MIN`` of
   the ABC effect AND its class's attention score beats chance by ``ATT_MARGIN``;
4. hypotheses (the circuit, each class removed, ...) scored as the proportion of the logit
   difference explained, ``(LD(H) - LD(none)) / (LD(all) - LD(none))`` (ratio of means; every head
   output outside H mean-ablated over the ABC prompts of its template, as Wang et al. do; one row
   repeats the circuit with resample ablation), bootstrap CIs over prompts, t-CIs over seeds;
5. automatic discovery (ACDC-style pruning, EAP-IG) with :mod:`innerprobe.patch` where the family
   graph supports the model (see :func:`discovery`), compared with the hand-written circuit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import Result, provenance, row

RECIPE = "ioi-llama"
EFFECT_MIN = 0.02  # |normalised path effect| a head needs for a class (2% of the ABC effect)
ATT_MARGIN = 0.2  # its class's attention score must exceed the chance level by this much (absolute)
CLASSES = {  # class: (position its output is kept at, attention score naming it, sign of its path effect)
    "name_mover": ("end", "end_to_io", -1),
    "negative_name_mover": ("end", "end_to_io", +1),
    "s_suppressor": ("end", "end_to_s2", -1),  # not in Wang et al.: reads S2 at END and lowers S directly
    "s_inhibition": ("end", "end_to_s2", -1),
    "induction": ("s2", "s2_to_s1p1", -1),
    "duplicate_token": ("s2", "s2_to_s1", -1),
    "previous_token": ("s1p1", "s1p1_to_s1", -1),
}


def _heads(mask: np.ndarray) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(*np.nonzero(mask))]


def name(h) -> str:
    return f"a{h[0]}.{h[1]}"


def classify(att: dict, effect: np.ndarray, cls: str) -> list[tuple[int, int]]:
    """Heads whose path effect has the class's sign and size >= EFFECT_MIN and whose class attention score
    beats chance by ATT_MARGIN."""
    _, score, sign = CLASSES[cls]
    eff = np.nan_to_num(effect, nan=0.0) * sign
    return _heads((eff >= EFFECT_MIN) & (att["scores"][score] >= att["chance"][score] + ATT_MARGIN))


def find_circuit(runs) -> dict:
    """Path patching backwards from the logits (Wang et al. §3): classes, their path-effect arrays."""
    from . import ioi_heads as IH

    att = IH.attention_scores(runs)
    eff = {"direct": IH.path_patch_all(runs, None)}
    found = {c: classify(att, eff["direct"], c) for c in ("name_mover", "negative_name_mover", "s_suppressor")}
    eff["to_nm_q"] = IH.path_patch_all(runs, found["name_mover"], "q", "end") if found["name_mover"] else _nan(runs)
    found["s_inhibition"] = classify(att, eff["to_nm_q"], "s_inhibition")
    eff["to_si_v"] = IH.path_patch_all(runs, found["s_inhibition"], "v", "s2") if found["s_inhibition"] else _nan(runs)
    found["induction"] = classify(att, eff["to_si_v"], "induction")
    found["duplicate_token"] = classify(att, eff["to_si_v"], "duplicate_token")
    eff["to_ind_k"] = IH.path_patch_all(runs, found["induction"], "k", "s1p1") if found["induction"] else _nan(runs)
    found["previous_token"] = classify(att, eff["to_ind_k"], "previous_token")
    return {"att": att, "effects": eff, "classes": found}


def _nan(runs) -> np.ndarray:
    return np.full((runs.shape.n_layers, runs.shape.n_heads), np.nan)


def keep_of(classes: dict, drop=(), all_positions: bool = False) -> dict:
    """{position: heads} of the circuit's classes minus ``drop`` (None position: every position)."""
    keep: dict = {}
    for cls, heads in classes.items():
        if cls in drop:
            continue
        where = None if all_positions else CLASSES[cls][0]
        keep.setdefault(where, []).extend(heads)
    return keep


def hypotheses(classes: dict, node_all: np.ndarray, shape) -> list[tuple[str, str, dict, dict]]:
    """(key, label, keep, drop) rows: references, the circuit, each class removed from it, position-free
    and top-k baselines, and each class knocked out of the full model (Wang et al.'s ablations)."""
    every = [(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]
    circuit = keep_of(classes)
    n_c = len({h for hs in circuit.values() for h in hs})
    order = np.argsort(np.nan_to_num(node_all, nan=0.0), axis=None)  # most negative (most important) first
    top = [(int(i // shape.n_heads), int(i % shape.n_heads)) for i in order[: max(n_c, 1)]]
    present = [c for c in CLASSES if classes.get(c)]
    rows = [
        ("all", "all heads (clean model)", {None: every}, {}),
        ("none", "no head (every head output mean-ablated)", {}, {}),
        ("circuit", "circuit: every class at its position", circuit, {}),
    ]
    rows += [(f"minus_{c}", f"circuit minus {c.replace('_', ' ')}", keep_of(classes, drop=(c,)), {}) for c in present]
    rows += [
        ("name_movers_only", "name movers only (at END)", keep_of({"name_mover": classes.get("name_mover", [])}), {}),
        ("circuit_all_positions", "circuit heads at every position", keep_of(classes, all_positions=True), {}),
        ("top_node_heads", f"top-{len(top)} heads by node patching (all positions)", {None: top}, {}),
    ]
    rows += [
        (
            f"knockout_{c}",
            f"full model, {c.replace('_', ' ')} mean-ablated at {CLASSES[c][0]}",
            {None: every},
            {CLASSES[c][0]: classes[c]},
        )
        for c in present
    ]
    return rows


def _ratio(a, b, c, axis=-1):
    return (np.mean(a, axis=axis) - np.mean(b, axis=axis)) / (np.mean(c, axis=axis) - np.mean(b, axis=axis))


def score_hypotheses(runs, rows, *, n_boot: int, seed: int) -> list[dict]:
    """Proportion of LD explained per hypothesis with a paired percentile bootstrap over prompts."""
    from ..core.stats import bootstrap
    from . import ioi_heads as IH

    lds = {key: IH.circuit_ld(runs, keep, drop).numpy() for key, _, keep, drop in rows}
    out = []
    for key, label, keep, _ in rows:
        ci = bootstrap(lds[key], _ratio, paired=(lds["none"], lds["all"]), n_resamples=n_boot, seed=seed)
        out.append(
            {
                "key": key,
                "hypothesis": label,
                "n_heads": len({h for hs in keep.values() for h in hs}),
                "mean_ld": float(lds[key].mean()),
                "proportion": ci,
            }
        )
    circuit = next(keep for key, _, keep, _ in rows if key == "circuit")  # the same circuit, resample ablation
    res = {
        k: IH.circuit_ld(runs, keep, ablation="resample").numpy() for k, keep in (("circuit", circuit), ("none", {}))
    }
    ci = bootstrap(res["circuit"], _ratio, paired=(res["none"], lds["all"]), n_resamples=n_boot, seed=seed)
    out.append(
        {
            "key": "circuit_resample",
            "hypothesis": "circuit, resample ablation (paired ABC prompt) instead of mean",
            "n_heads": out[2]["n_heads"],
            "mean_ld": float(res["circuit"].mean()),
            "proportion": ci,
        }
    )
    return out


def analyse(
    model,
    seed: int,
    *,
    n: int,
    n_boot: int,
    do_discovery: bool = True,
    acdc_n: int | None = None,
    ig_steps: int = 10,
    quick: bool = False,
) -> dict:
    """Everything for one trained model (see the module docstring)."""
    from ..zoo import ioi
    from . import ioi_heads as IH

    x_r = ioi.sample(n, 80_000 + seed, "test")
    runs = IH.IOIRuns(model, x_r, x_r.abc(90_000 + seed))
    return analyse_runs(
        runs, seed, n_boot=n_boot, do_discovery=do_discovery, acdc_n=acdc_n, ig_steps=ig_steps, quick=quick
    )


def analyse_runs(
    runs,
    seed: int,
    *,
    n_boot: int,
    do_discovery: bool = True,
    acdc_n: int | None = None,
    ig_steps: int = 10,
    quick: bool = False,
) -> dict:
    """:func:`analyse` on prepared :class:`~innerprobe.studies.ioi_heads.IOIRuns`."""
    from . import ioi_heads as IH

    model, x_r, n = runs.model, runs.x_r, len(runs.x_r)
    found = find_circuit(runs)
    nodes = IH.node_patching(runs, positions=("end", None) if quick else ("end", "s2", "s1p1", None))
    rows = hypotheses(found["classes"], nodes["all"], runs.shape)
    res = {
        "seed": seed,
        "n": n,
        "ld_clean": float(runs.ld_clean.mean()),
        "ld_abc": float(runs.ld_cf.mean()),
        "ld_swap": float(runs.ld(IH.forward(model, x_r.swap().tokens)["logits"]).mean()),
        "dla": IH.direct_logit_attribution(runs),
        "nodes": nodes,
        **found,
        "table": score_hypotheses(runs, rows, n_boot=n_boot, seed=seed),
    }
    if do_discovery:
        res["discovery"] = discovery(
            model,
            runs,
            found["classes"],
            n_boot=n_boot,
            seed=seed,
            acdc_n=acdc_n,
            ig_steps=ig_steps,
            run_acdc=not quick,
        )
    return res


def discovery(
    model,
    runs,
    classes: dict,
    *,
    n_boot: int,
    seed: int,
    ig_steps: int = 10,
    acdc_n: int | None = None,
    run_acdc: bool = True,
    top_k: int = 60,
) -> dict:
    """ACDC-style greedy pruning and EAP-IG top-k (:mod:`innerprobe.patch`, Conmy et al. 2023; Hanna et al.
    2024) on the model's family graph (edges between embed, heads' q/k/v, MLPs and the logits; every
    edge resampled from the paired ABC prompt at all positions), told nothing about the classes.

    Metric: -LD (a loss: larger is worse); tau = 1% of the ABC effect; EAP-IG keeps as many edges as
    ACDC found (``top_k`` when ACDC is not run: the quick mode runs EAP-IG only). Each found circuit is scored
    as the proportion of LD explained, (LD(C) - LD(x_c)) / (LD(x_r) - LD(x_c)), and its heads are
    compared with the hand-written circuit's (precision / recall over heads).
    """
    from ..core.graph import build_graph
    from ..core.stats import bootstrap
    from ..patch import discovery as disc
    from ..patch.eap import eap_scores
    from ..patch.path import edge_mask, evaluate_edges, prepare

    b = runs.x_r if acdc_n is None else runs.x_r[:acdc_n]
    c = runs.x_c if acdc_n is None else runs.x_c[:acdc_n]
    graph = build_graph(model)
    gr = prepare(graph, b.tokens, c.tokens)
    from ..zoo import ioi

    def metric(logits):
        return -ioi.logit_diff(logits, b)

    ld_r, ld_c = -metric(gr.clean["out"]).numpy(), -metric(gr.cf["out"]).numpy()
    tau = 0.01 * float(ld_r.mean() - ld_c.mean())
    scores = eap_scores(graph, gr, metric, ig_steps=ig_steps)
    circuits = {}
    if run_acdc:
        circuits["acdc"], _ = disc.acdc(graph, gr, metric, tau)
    k = len(circuits["acdc"]) if run_acdc else top_k
    circuits["eap_ig_topk"] = disc.prune_dangling(graph, disc.top_k(graph, scores, max(k, 1)))
    hand = {name(h) for hs in classes.values() for h in hs}
    methods = {}
    for name_, es in circuits.items():
        ld = -metric(evaluate_edges(graph, gr, edge_mask(graph, [es]))[0]).numpy()
        ci = bootstrap(ld, _ratio, paired=(ld_c, ld_r), n_resamples=n_boot, seed=seed)
        heads = {n for e in es for n in (e.src, e.dst) if n.startswith("a")}
        tp = len(heads & hand)
        methods[name_] = {
            "n_edges": len(es),
            "n_heads": len(heads),
            "heads": sorted(heads),
            "proportion": ci,
            "precision": tp / len(heads) if heads else float("nan"),
            "recall": tp / len(hand) if hand else float("nan"),
            "missed": sorted(hand - heads),
            "edges": sorted(str(e) for e in es),
        }
    return {
        "available": True,
        "graph": graph.summary().splitlines()[0],
        "n_graph_edges": len(graph.edges),
        "tau": tau,
        "n_prompts": len(b),
        "ig_steps": ig_steps,
        "methods": methods,
    }


# ---------------------------------------------------------------------------- across seeds, figures, report


def _summary(per_seed: list[dict]) -> list[dict]:
    """Per hypothesis key (in seed 0's order): per-seed proportions and their mean with a t-CI."""
    from ..core.stats import t_interval

    keys = [r["key"] for r in per_seed[0]["table"]]
    out = []
    for k in keys:
        vals = [next((r["proportion"].estimate for r in p["table"] if r["key"] == k), None) for p in per_seed]
        got = [v for v in vals if v is not None]
        label = next(r["hypothesis"] for r in per_seed[0]["table"] if r["key"] == k)
        ci = t_interval(got) if len(got) > 1 else None
        out.append(
            {
                "key": k,
                "hypothesis": label,
                "per_seed": vals,
                "mean": ci if ci is not None else (got[0] if got else None),
            }
        )
    return out


def _fmt_ci(ci) -> str:
    from ..core.stats import CI

    if ci is None:
        return "-"
    if not isinstance(ci, CI):
        return f"{ci:.3f} (1 seed)"
    return f"{ci.estimate:.3f}" + (f" [{ci.lo:.3f}, {ci.hi:.3f}]" if ci.lo is not None else " (no CI)")


def _class_rows(p: dict) -> list[list]:
    att, eff = p["att"], p["effects"]
    src = {
        "name_mover": "direct",
        "negative_name_mover": "direct",
        "s_suppressor": "direct",
        "s_inhibition": "to_nm_q",
        "induction": "to_si_v",
        "duplicate_token": "to_si_v",
        "previous_token": "to_ind_k",
    }
    rows = []
    for cls, (where, score, _) in CLASSES.items():
        heads = p["classes"][cls]
        rows.append(
            [
                p["seed"],
                cls.replace("_", " "),
                where,
                score,
                f"{att['chance'][score]:.3f}",
                f"{att['chance'][score] + ATT_MARGIN:.3f}",
                ", ".join(f"{name(h)} (att {att['scores'][score][h]:.2f}, path {eff[src[cls]][h]:+.2f})" for h in heads)
                or "none",
            ]
        )
    return rows


def _top_unclassified(p: dict, k: int = 4) -> str:
    """Heads that node patching (all positions) finds important but no class claims."""
    named = {h for hs in p["classes"].values() for h in hs}
    eff = p["nodes"]["all"]
    order = np.argsort(eff, axis=None)
    heads = [(int(i // eff.shape[1]), int(i % eff.shape[1])) for i in order]
    left = [h for h in heads if h not in named and eff[h] <= -EFFECT_MIN][:k]
    return ", ".join(f"{name(h)} ({eff[h]:+.2f})" for h in left) or "none"


COLS = {"io": 0.0, "s1": 1.6, "s1p1": 3.2, "s2": 4.8, "end": 6.6, "logits": 8.8}
COLORS = {
    "name_mover": "tab:green",
    "negative_name_mover": "tab:red",
    "s_suppressor": "tab:olive",
    "s_inhibition": "tab:orange",
    "induction": "tab:purple",
    "duplicate_token": "tab:blue",
    "previous_token": "tab:brown",
}
LINKS = [
    ("previous_token", "induction", "to_ind_k", "K"),
    ("induction", "s_inhibition", "to_si_v", "V"),
    ("duplicate_token", "s_inhibition", "to_si_v", "V"),
    ("s_inhibition", "name_mover", "to_nm_q", "Q"),
]


def _place(classes: dict) -> dict:
    """{head: (x, y, [classes])}: one box per head, side by side within a (position, layer) cell."""
    roles: dict = {}
    for cls, heads in classes.items():
        for h in heads:
            roles.setdefault(h, []).append(cls)
    cells: dict = {}
    for h, cl in sorted(roles.items()):
        cells.setdefault((CLASSES[cl[0]][0], h[0]), []).append(h)
    out = {}
    for (where, layer), hs in cells.items():
        for i, h in enumerate(hs):
            out[h] = (COLS[where] + (i - (len(hs) - 1) / 2) * 0.75, layer, roles[h])
    return out


def circuit_figure(p: dict, path: Path, shape) -> Path:
    """2-D circuit: x = token position (IO, S1, S1+1, S2, END, logits), y = layer; one box per classified head
    (its classes), dashed arrows = what it attends to, solid arrows = path-patching steps (width = |effect|)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 7))
    placed, eff = _place(p["classes"]), p["effects"]
    top = (COLS["logits"], shape.n_layers - 0.4)
    for h, (x, y, cl) in placed.items():
        key = CLASSES[cl[0]][1].split("_to_")[1]
        ax.annotate(
            "", xy=(x, y), xytext=(COLS[key], y - 0.35), arrowprops={"arrowstyle": "->", "ls": "--", "color": "0.6"}
        )
        ax.text(
            x,
            y,
            f"{name(h)}\n" + "\n".join(c.replace("_", " ") for c in cl),
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": COLORS[cl[0]], "alpha": 0.35},
        )
        if set(cl) & {"name_mover", "negative_name_mover", "s_suppressor"}:
            w = abs(float(eff["direct"][h]))
            ax.annotate(
                "", xy=top, xytext=(x, y), arrowprops={"arrowstyle": "->", "lw": 0.5 + 8 * w, "color": COLORS[cl[0]]}
            )
    for a, b, key, slot in LINKS:
        for ha, (xa, ya, ca) in placed.items():
            for hb, (xb, yb, cb) in placed.items():
                if a in ca and b in cb and ha != hb:
                    w = abs(float(np.nan_to_num(eff[key][ha])))
                    ax.annotate(
                        "",
                        xy=(xb, yb),
                        xytext=(xa, ya),
                        arrowprops={"arrowstyle": "->", "lw": 0.5 + 8 * w, "color": "0.25"},
                    )
                    ax.text((xa + xb) / 2, (ya + yb) / 2, slot, fontsize=8, color="0.25")
    ax.text(*top, "logits\n(IO - S)", ha="center", va="center", fontsize=9, bbox={"boxstyle": "round", "fc": "0.9"})
    ax.set_xticks(list(COLS.values()), ["IO", "S1", "S1+1", "S2", "END", "logits"])
    ax.set_yticks(range(shape.n_layers), [f"layer {i}" for i in range(shape.n_layers)])
    ax.set_xlim(-0.8, COLS["logits"] + 0.8)
    ax.set_ylim(-0.8, shape.n_layers - 0.1)
    ax.grid(alpha=0.2)
    ax.set_title(
        f"{RECIPE} seed {p['seed']}: IOI heads named by path patching; dashed = attends to (from that position), "
        "solid = path effect (width = |effect| / ABC effect; K/V/Q = receiving input)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(summary: list[dict], path: Path, seeds: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.stats import CI

    fig, ax = plt.subplots(figsize=(9, 0.42 * len(summary) + 1.3))
    y = np.arange(len(summary))[::-1]
    for yi, r in zip(y, summary):
        m = r["mean"]
        est = m.estimate if isinstance(m, CI) else m
        if est is None:
            continue
        ax.barh(yi, est, color="tab:blue", alpha=0.55)
        if isinstance(m, CI) and m.lo is not None:
            ax.plot([m.lo, m.hi], [yi, yi], color="k", lw=1.5)
        ax.scatter(
            [v for v in r["per_seed"] if v is not None],
            [yi] * sum(v is not None for v in r["per_seed"]),
            color="k",
            s=10,
            zorder=3,
        )
    ax.set_yticks(y, [r["hypothesis"] for r in summary], fontsize=8)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.axvline(1, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("proportion of the logit difference explained: (LD(H) - LD(none)) / (LD(all) - LD(none))")
    ax.set_title(f"{RECIPE}: {seeds} seed(s) (dots), mean and 95% t-CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _head_panels(p: dict) -> dict:
    att, nodes, eff = p["att"]["scores"], p["nodes"], p["effects"]
    panels = {f"node patch @{k.upper().replace('S1P1', 'S1+1')}": v for k, v in nodes.items() if k != "all"}
    return {
        **panels,
        "path -> logits": eff["direct"],
        "DLA (IO-S) @END": p["dla"],
        "attn END->IO": att["end_to_io"],
        "attn END->S2": att["end_to_s2"],
        "attn S2->S1": att["s2_to_s1"],
        "attn S2->S1+1": att["s2_to_s1p1"],
    }


def _rows(summary, per_seed, seeds) -> list[dict]:
    """Headline rows: proportion explained per hypothesis (mean over seeds with a t-CI; one seed: its
    bootstrap CI), the clean / ABC logit differences, and per class the number of heads found."""
    out = []
    for r in summary:
        value = (
            r["mean"]
            if len(per_seed) > 1
            else next(t["proportion"] for t in per_seed[0]["table"] if t["key"] == r["key"])
        )
        out.append(row("proportion_ld_explained", value, model=RECIPE, condition={"hypothesis": r["key"]}, seeds=seeds))
    for metric in ("ld_clean", "ld_abc", "ld_swap"):
        vals = [p[metric] for p in per_seed]
        out.append(row(metric, _mean_ci(vals), model=RECIPE, seeds=seeds))
    for cls in CLASSES:
        out.append(
            row(
                "n_heads",
                _mean_ci([len(p["classes"][cls]) for p in per_seed]),
                model=RECIPE,
                condition={"head_class": cls},
                seeds=seeds,
            )
        )
    return out


def _mean_ci(vals):
    from ..core.stats import t_interval

    return t_interval(vals) if len(vals) > 1 else float(vals[0])


def run(out: Path, seeds: int = 3, quick: bool = False) -> Result:
    """The ``path-ioi`` study into ``out`` (summary.json rows, section.json, figures); quick: one seed, 48 prompts."""
    from .. import zoo
    from . import ioi_heads as IH

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, n_boot = (32, 300) if quick else (96, 1000)
    seeds = min(seeds, 1) if quick else seeds
    per_seed, cards = [], []
    for s in range(seeds):
        model, card = zoo.load(RECIPE, seed=s)
        cards.append(card)
        per_seed.append(
            analyse(
                model,
                s,
                n=n,
                n_boot=n_boot,
                do_discovery=True,
                acdc_n=16 if quick else 32,
                ig_steps=5 if quick else 10,
                quick=quick,
            )
        )
    shape = IH.shape_of(model)
    summary = _summary(per_seed)
    seed_list = list(range(seeds))
    from ..patch.plots import head_heatmaps

    for p in per_seed:
        head_heatmaps(
            _head_panels(p),
            out / f"heads_seed{p['seed']}.png",
            title=f"{RECIPE} seed {p['seed']}: normalised effects and attention",
        )
    circuit_figure(per_seed[0], out / "circuit.png", shape)
    _bars(summary, out / "hypotheses.png", seeds)
    _section(out, per_seed, summary, cards, n=n, n_boot=n_boot, quick=quick)
    result = Result(
        kind="study:path-ioi",
        rows=_rows(summary, per_seed, seed_list),
        data={
            "recipe": RECIPE,
            "seeds": seeds,
            "quick": quick,
            "n_prompts": n,
            "n_boot": n_boot,
            "effect_min": EFFECT_MIN,
            "attention_margin": ATT_MARGIN,
            "counterfactual": "ABC (three fresh names; same template, place, object)",
            "prompts": "test split: held-out names and held-out templates",
            "classes": [
                {"seed": p["seed"], **{c: [name(h) for h in hs] for c, hs in p["classes"].items()}} for p in per_seed
            ],
            "chance": per_seed[0]["att"]["chance"],
            "discovery": [p.get("discovery") for p in per_seed],
        },
        tables={"hypotheses": [{"seed": p["seed"], **t} for p in per_seed for t in p["table"]]},
        provenance=provenance(seed=seed_list, model=RECIPE, config={"n": n, "quick": quick, "n_boot": n_boot}),
    )
    result.save(out / "summary.json")
    return result


def _differences(per_seed: list[dict], summary: list[dict]) -> str:
    """What this model learned compared with GPT-2 small's IOI circuit (Wang et al. 2022, Fig. 2), computed."""
    n = len(per_seed)
    found = {c: sum(bool(p["classes"][c]) for p in per_seed) for c in CLASSES}
    have = [f"{c.replace('_', ' ')} heads in {k}/{n} seeds" for c, k in found.items() if k]
    miss = [c.replace("_", " ") for c, k in found.items() if not k]
    circ = next(r for r in summary if r["key"] == "circuit")
    est = circ["mean"].estimate if hasattr(circ["mean"], "estimate") else circ["mean"]
    gpt2 = (
        "GPT-2 small's IOI circuit (Wang et al. 2022): name movers (layers 9-10) and negative name movers (10-11) "
        "copy the IO at END; S-inhibition heads (7-8) steer them away from S; induction (5-6) and duplicate-token "
        "heads (0, 3), fed by previous-token heads (2, 4), mark S as repeated at S2. "
    )
    text = gpt2 + "This 4-layer model: " + ("; ".join(have) if have else "no class passed both tests") + "."
    if miss:
        text += f" Not found in any seed (by the stated thresholds): {', '.join(miss)}."
    if est is not None:
        text += f" The circuit explains {est:.2f} of the logit difference (seed mean)."
    unl = [f"seed {p['seed']}: {_top_unclassified(p)}" for p in per_seed]
    return text + " Heads that node patching finds important but no class names: " + "; ".join(unl) + "."


def _section(out: Path, per_seed, summary, cards, *, n: int, n_boot: int, quick: bool) -> None:
    from ..report.sections import Section

    seeds = len(per_seed)
    sec = Section("Path patching: indirect-object identification in a Llama (path-ioi)", order=42)
    c0 = cards[0]
    llama = c0["config"]["llama"]
    floors = "; ".join(
        f"seed {c['seed']}: LD>0 {c['metrics']['test_logit_diff_positive']:.3f}, "
        f"IO top-1 {c['metrics']['test_io_top1']:.3f}"
        for c in cards
    )
    parts = [
        f"Model {RECIPE} (Hugging Face LlamaForCausalLM: {llama['num_hidden_layers']} layers, "
        f"{llama['num_attention_heads']} query heads over {llama['num_key_value_heads']} K/V heads, "
        f"RMSNorm, rotary, SwiGLU), seeds 0..{seeds - 1}; card floors on held-out names and templates: {floors}.",
        f"{n} test prompts per seed (held-out names and templates), each paired with its ABC counterfactual.",
        "Effects are on LD = logit(IO) - logit(S) at END, normalised by the ABC effect (-1 = as damaging as",
        "replacing every name).",
        f"A head gets a class only when its path effect is >= {EFFECT_MIN} of the ABC effect with the class's sign",
        f"and its class's attention score beats the chance level (uniform causal attention) by {ATT_MARGIN}.",
        "Proportion explained = (LD(H) - LD(none)) / (LD(all) - LD(none)), every head output outside H",
        "mean-ablated over the ABC prompts of its template (Wang et al.; ratio of means;",
        f"{n_boot} paired bootstrap resamples of prompts per seed; across seeds: mean and 95% t-interval).",
        "GQA: a key/value receiver is the whole group of query heads sharing that K/V head.",
        "Command: innerprobe study path-ioi" + (" --quick" if quick else "") + ".",
    ]
    sec.paragraphs.append(" ".join(parts))
    sec.paragraphs.append(_differences(per_seed, summary))
    sec.table(
        "Hypotheses: proportion of the logit difference explained "
        "(per seed [bootstrap CI]; mean over seeds [95% t-CI])",
        ["hypothesis", "heads (seed 0)", "per seed", "mean [CI]"],
        [
            [
                r["hypothesis"],
                next(t["n_heads"] for t in per_seed[0]["table"] if t["key"] == r["key"]),
                "; ".join(
                    _fmt_ci(next((t["proportion"] for t in p["table"] if t["key"] == r["key"]), None)) for p in per_seed
                ),
                _fmt_ci(r["mean"]),
            ]
            for r in summary
        ],
    )
    sec.table(
        "Head classes from position-aware path patching (att = class attention score, path = normalised path effect)",
        ["seed", "class", "position", "score", "chance", "threshold", "heads"],
        [r for p in per_seed for r in _class_rows(p)],
    )
    sec.table(
        "Logit difference IO - S at END (mean over prompts)",
        ["seed", "clean", "ABC", "IO/S swapped"],
        [[p["seed"], f"{p['ld_clean']:.3f}", f"{p['ld_abc']:.3f}", f"{p['ld_swap']:.3f}"] for p in per_seed],
    )
    disc = [(p["seed"], p.get("discovery")) for p in per_seed if p.get("discovery")]
    if disc and any(d.get("available") for _, d in disc):
        sec.table(
            "Automatic discovery vs the hand-written circuit (heads)",
            ["seed", "method", "edges", "heads", "proportion [CI]", "precision", "recall", "circuit heads missed"],
            [
                [
                    s,
                    m,
                    c["n_edges"],
                    c["n_heads"],
                    _fmt_ci(c["proportion"]),
                    f"{c['precision']:.2f}",
                    f"{c['recall']:.2f}",
                    ", ".join(c["missed"]) or "-",
                ]
                for s, d in disc
                if d.get("available")
                for m, c in d["methods"].items()
            ],
        )
    elif disc:
        sec.paragraphs.append(f"Automatic discovery not run: {disc[0][1]['why']}.")
    for p in per_seed:
        sec.figure(
            f"heads_seed{p['seed']}.png",
            f"Seed {p['seed']}: node patching at END / S2 / S1+1, path effect to the logits, "
            "direct logit attribution and attention scores per head (layer x head).",
        )
    sec.figure("circuit.png", "Seed 0: the circuit path patching found, laid out by position (x) and layer (y).")
    sec.figure("hypotheses.png", "Proportion of the logit difference explained per hypothesis; dots are seeds.")
    sec.save(out)
