"""Study ``path-induction``: path patching on self-trained induction transformers.

Reproduces, at CPU scale, the induction-head analysis of Goldowsky-Dill et al. 2023 (arXiv
2304.05969, §4): find the previous-token and induction heads, test a table of path hypotheses
(proportion of loss explained, a ratio of means, bootstrap CIs over (x_r, x_c) pairs), then
discover circuits automatically (ACDC-style greedy pruning, EAP / EAP-IG top-k) and compare them
with the hand-written hypothesis. x_c is an independent sequence from the task (a second table uses a structure-preserving
resample: same segment offsets and lengths, fresh tokens, which leaves structural paths
untestable); delta is the signed loss on
x_r's predictable (repeated) tokens. A second model with MLPs and LayerNorm repeats the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.stats import CI, t_interval
from ..patch.workflow import edge_report, proportion_ci
from ..results import Result, provenance, row

RECIPE = "induction-attn2l"
SECOND = {"ln": True, "d_mlp": 128, "lr": 3e-3, "steps": 1500}  # LN + MLP trains more slowly at lr 1e-2


def hypotheses(prev: list[str], ind: list[str], graph, dup: list[str] | None = None) -> list[tuple[str, str, "object"]]:
    """(key, label, Hypothesis) rows for the previous-token heads ``prev``, induction heads ``ind``
    and (optional extra row) duplicate-token heads ``dup`` feeding the induction heads' queries."""
    from ..patch.hypothesis import Hypothesis

    def E(lines):
        return Hypothesis.parse("; ".join(f"edge {l}" for l in lines))

    q = [f"embed -> {i}:q" for i in ind]
    v = [f"embed -> {i}:v" for i in ind]
    k = [f"{p} -> {i}:k" for p in prev for i in ind] + [f"embed -> {p}:v" for p in prev]
    o = [f"{i} -> out" for i in ind]
    l0q = [f"a0.* -> {i}:q" for i in ind]
    l0k = [f"a0.* -> {i}:k" for i in ind] + ["embed -> a0.*:v"]
    l0v = [f"a0.* -> {i}:v" for i in ind]
    through = Hypothesis.parse("; ".join([f"... -> {i} -> ..." for i in ind] + ["embed -> out"]))
    return [
        ("all", "all paths", Hypothesis.all()),
        ("none", "no paths", Hypothesis.none()),
        ("through_ind", "every path through the induction heads + embed->out", through),
        ("naive", "naive: Q<-E, K<-prev(V<-E), V<-E, ind->out", E(q + k + v + o)),
        ("naive_minus_k", "naive minus K path (K<-E directly)", E(q + [f"embed -> {i}:k" for i in ind] + v + o)),
        ("naive_minus_q", "naive minus Q path", E(k + v + o)),
        ("naive_minus_v", "naive minus V path", E(q + k + o)),
        ("refined_k", "naive + K<-every layer-0 head", E(q + k + v + o + l0k)),
        ("refined_kqv", "naive + K, Q, V<-every layer-0 head", E(q + k + v + o + l0k + l0q + l0v)),
        (
            "refined_full",
            "... + layer-0 heads read E in Q/K/V",
            E(q + k + v + o + l0k + l0q + l0v + ["embed -> a0.*:q", "embed -> a0.*:k"]),
        ),
    ] + (
        [
            (
                "qcomp",
                "Q-composition: Q<-E and dup head (its Q/K/V<-E), V<-E, ind->out",
                E(
                    q
                    + v
                    + o
                    + [f"{d} -> {i}:q" for d in dup for i in ind]
                    + [f"embed -> {d}:{s}" for d in dup for s in "qkv"]
                ),
            )
        ]
        if dup
        else []
    )


def _identify(model, graph, runs, batch, loss):
    from ..patch.path import avoid_node, edge_mask, evaluate_edges
    from ..zoo.induction import head_scores

    sc = head_scores(model, batch)
    prev_s = np.array(sc["prev_token_scores"])
    ind_s = np.array(sc["induction_scores"])
    L, H = prev_s.shape
    heads = [f"a{l}.{h}" for l in range(L) for h in range(H)]
    out = evaluate_edges(graph, runs, edge_mask(graph, [avoid_node(graph, n) for n in heads]))
    base = float(loss(runs.clean["out"]).mean())
    node_eff = np.array([float(loss(o).mean()) - base for o in out]).reshape(L, H)
    dup_s = np.array(sc["duplicate_scores"])
    prev = [f"a0.{h}" for h in range(H) if prev_s[0, h] >= 0.5 * prev_s[0].max()]
    ind = [f"a{L - 1}.{h}" for h in range(H) if ind_s[L - 1, h] >= 0.5 * ind_s[L - 1].max()]
    dup = [f"a0.{h}" for h in range(H) if dup_s[0, h] >= 0.5 * dup_s[0].max()]
    return prev, ind, dup, prev_s, ind_s, dup_s, node_eff


def _task(model, seed: int, n_pairs: int, counterfactual: str):
    """(graph, runs, x_r) for ``n_pairs`` induction sequences and their counterfactuals."""
    from ..core.graph import build_graph
    from ..patch.path import prepare
    from ..zoo.induction import sample_induction

    gen = torch.Generator().manual_seed(20_000 + seed)
    kw = {"vocab": model.cfg["vocab"], "seq_len": model.cfg["n_ctx"]}
    x_r = sample_induction(n_pairs, gen, **kw)
    x_c = sample_induction(n_pairs, gen, structure=x_r if counterfactual == "structure" else None, **kw)
    graph = build_graph(model)
    return graph, prepare(graph, x_r.tokens, x_c.tokens), x_r


def _outputs(graph, runs, resolved) -> dict:
    """Patched outputs per hypothesis index: edge sets in one batched pass, path sets one by one."""
    from ..patch.path import edge_mask, evaluate_edges, evaluate_paths

    edge_rows = [i for i, r in enumerate(resolved) if r.edges is not None]
    outs = {}
    if edge_rows:
        o = evaluate_edges(graph, runs, edge_mask(graph, [resolved[i].edges for i in edge_rows]), chunk=4)
        outs.update({i: o[j] for j, i in enumerate(edge_rows)})
    for i, r in enumerate(resolved):
        if i not in outs:
            outs[i] = evaluate_paths(graph, runs, r.paths)
    return outs


def _hypothesis_table(graph, runs, rows_h, loss, kl, ind, *, seed: int, n_boot: int):
    """One record per hypothesis: loss, KL and proportion explained against 'no paths' and against the
    Redwood-style baseline (only the induction heads' inputs resampled), each with a bootstrap CI."""
    from ..patch.hypothesis import Hypothesis
    from ..patch.path import edge_mask, evaluate_edges

    resolved = [h.resolve(graph) for _, _, h in rows_h]
    outs = _outputs(graph, runs, resolved)
    clean_loss = loss(runs.clean["out"])
    ue = {rows_h[i][0]: (loss(outs[i]) - clean_loss).numpy() for i in outs}
    base_h = Hypothesis.from_edges([e for e in graph.edges if e.dst not in ind])
    ue_base = (loss(evaluate_edges(graph, runs, edge_mask(graph, [base_h]))[0]) - clean_loss).numpy()
    table = []
    for i, (key, label, _) in enumerate(rows_h):
        c = proportion_ci(ue[key], ue["none"], n_boot=n_boot, seed=seed)
        c2 = proportion_ci(ue[key], ue_base, n_boot=n_boot, seed=seed)
        edges = resolved[i].edges
        table.append(
            {
                "seed": seed,
                "key": key,
                "hypothesis": label,
                "edge_set": edges is not None,
                "n_edges": None if edges is None else len(edges),
                "loss": float(loss(outs[i]).mean()),
                "kl": float(kl(runs.clean["out"], outs[i]).mean()),
                "proportion": c.estimate,
                "lo": c.lo,
                "hi": c.hi,
                "proportion_vs_ind_resampled": c2.estimate,
                "lo_vs_ind_resampled": c2.lo,
                "hi_vs_ind_resampled": c2.hi,
            }
        )
    return table, ue, resolved, float(np.mean(ue_base) + clean_loss.mean())


def analyse(
    model,
    seed: int,
    *,
    n_pairs: int,
    n_boot: int,
    ig_steps: int,
    counterfactual: str = "resample",
    do_discovery: bool = True,
    out: Path | None = None,
    tag: str = "",
) -> dict:
    """Everything for one trained model: heads, the hypothesis table, discovery, EAP vs exact."""
    from ..patch.metrics import kl_div, lm_loss

    graph, runs, x_r = _task(model, seed, n_pairs, counterfactual)
    loss = lm_loss(x_r.tokens, x_r.predictable)
    prev, ind, dup, prev_s, ind_s, dup_s, node_eff = _identify(model, graph, runs, x_r, loss)
    rows_h = hypotheses(prev, ind, graph, dup)
    table, ue, resolved, ind_resampled = _hypothesis_table(
        graph, runs, rows_h, loss, kl_div(x_r.predictable), ind, seed=seed, n_boot=n_boot
    )
    T = x_r.tokens.shape[1]
    res = {
        "seed": seed,
        "counterfactual": counterfactual,
        "prev": prev,
        "dup": dup,
        "ind": ind,
        "uniform_prev_score": float(np.mean([1.0 / (i + 1) for i in range(1, T)])),  # uniform causal attention
        "prev_scores": prev_s,
        "dup_scores": dup_s,
        "ind_scores": ind_s,
        "node_effects": node_eff,
        "clean_loss": float(loss(runs.clean["out"]).mean()),
        "cf_loss": float(loss(runs.cf["out"]).mean()),
        "ind_resampled_loss": ind_resampled,
        "table": table,
        "n_pairs": n_pairs,
        "graph": graph.summary().splitlines()[0],
    }
    if do_discovery:
        naive_edges = resolved[[k for k, _, _ in rows_h].index("naive")].edges
        res.update(
            _discovery(
                graph, runs, loss, ue, naive_edges, seed=seed, n_boot=n_boot, ig_steps=ig_steps, out=out, tag=tag
            )
        )
    return res


def _discovery(graph, runs, loss, ue, naive_edges, *, seed, n_boot, ig_steps, out, tag) -> dict:
    """Exact single-edge effects vs EAP / EAP-IG (the shared edge report), then ACDC and top-k circuits."""
    from ..patch import discovery as disc
    from ..patch.path import edge_mask, evaluate_edges

    rep = edge_report(graph, runs, loss, ig_steps=ig_steps)
    tau = 0.01 * float(np.mean(ue["none"]))
    found, _ = disc.acdc(graph, runs, loss, tau)
    k = max(len(found), 1)
    topk = disc.prune_dangling(graph, disc.top_k(graph, rep.eap_ig, k))
    topk_eap = disc.prune_dangling(graph, disc.top_k(graph, rep.eap, k))
    clean_loss = loss(runs.clean["out"])
    circuits = {}
    for name, es in (("acdc", found), ("eap_ig_topk", topk), ("eap_topk", topk_eap)):
        o = evaluate_edges(graph, runs, edge_mask(graph, [es]))[0]
        c = proportion_ci((loss(o) - clean_loss).numpy(), ue["none"], n_boot=n_boot, seed=seed)
        cmp = disc.compare(es, naive_edges)
        circuits[name] = {
            "edges": sorted(str(e) for e in es),
            "proportion": c.estimate,
            "lo": c.lo,
            "hi": c.hi,
            **{k: v for k, v in cmp.items() if k in ("precision", "recall", "missing", "extra", "found")},
        }
    corr = rep.correlations()
    if out is not None:
        _discovery_figures(graph, rep, found, topk, naive_edges, corr, tau, seed, out, tag)
    return {"tau": tau, "circuits": circuits, "rank_corr": corr, "edge_scores": rep.table()}


def _discovery_figures(graph, rep, found, topk, naive_edges, corr, tau, seed, out: Path, tag: str) -> None:
    from ..patch.plots import draw_circuit, scatter

    draw_circuit(
        graph,
        {e: float(rep.exact[graph.edge_index[e]]) for e in found},
        out / f"circuit_acdc{tag}.png",
        reference=naive_edges,
        title=f"ACDC circuit (seed {seed}, tau={tau:.3f}); width = exact edge effect; dashed = naive edges not found",
    )
    draw_circuit(
        graph,
        {e: float(rep.eap_ig[graph.edge_index[e]]) for e in topk},
        out / f"circuit_eapig{tag}.png",
        reference=naive_edges,
        title=f"EAP-IG top-{len(found)} circuit (seed {seed})",
    )
    scatter(
        rep.exact.numpy(),
        rep.eap.numpy(),
        out / f"eap_vs_exact{tag}.png",
        xlabel="exact single-edge effect (loss)",
        ylabel="EAP estimate",
        title=f"seed {seed}: Spearman {corr[0]['eap']:.2f} (EAP), {corr[0]['eap_ig']:.2f} (EAP-IG)",
        colors=list(rep.slots),
    )


def _per_key(results: list[dict], keys: list[str], field: str) -> np.ndarray:
    return np.array([[next(r[field] for r in p["table"] if r["key"] == k) for p in results] for k in keys], float)


def _summary(results: list[dict], keys, labels, field: str, lo: str, hi: str) -> list[dict]:
    """Per hypothesis: mean over seeds with a t-interval; one seed: that seed's bootstrap CI over pairs."""
    vals = _per_key(results, keys, field)
    out = []
    for i, k in enumerate(keys):
        c = t_interval(vals[i], nan_policy="omit")
        if len(results) == 1:
            r0 = next(r for r in results[0]["table"] if r["key"] == k)
            c = CI(r0[field], r0[lo], r0[hi], c.level, "bootstrap-percentile over pairs", results[0]["n_pairs"])
        out.append({"key": k, "hypothesis": labels[i], "ci": c, "per_seed": vals[i].tolist()})
    return out


def _second_model(n_pairs: int, n_boot: int, ig: int) -> dict:
    """The LayerNorm + MLP variant (seed 0): hypothesis table and how closely its graph reproduces it."""
    from .. import zoo
    from ..core.graph import build_graph
    from ..zoo.induction import sample_induction

    m2, card2 = zoo.load(RECIPE, seed=0, **SECOND)
    second = analyse(m2, 0, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, do_discovery=False)
    second["card_metrics"] = {k: card2["metrics"][k] for k in ("loss_predictable", "loss_unpredictable", "ln_vocab")}
    x = sample_induction(8, torch.Generator().manual_seed(5), vocab=m2.cfg["vocab"], seq_len=m2.cfg["n_ctx"]).tokens
    with torch.no_grad():
        second["graph_max_abs_diff"] = float((build_graph(m2).forward(x) - m2(x)).abs().max())
    return second


def _rows(summary, structure, per_seed, second, seeds: list[int]) -> list[dict]:
    """Headline rows: proportion explained per hypothesis (both counterfactuals, both baselines), the discovered
    circuits and EAP / EAP-IG rank agreement."""
    rows = []
    for r in summary["none"]:
        rows.append(
            row(
                "proportion_explained",
                r["ci"],
                model=RECIPE,
                seeds=seeds,
                per_seed=r["per_seed"],
                condition={"hypothesis": r["key"], "counterfactual": "resample", "baseline": "none"},
            )
        )
    for r in summary["ind_resampled"]:
        rows.append(
            row(
                "proportion_explained",
                r["ci"],
                model=RECIPE,
                seeds=seeds,
                per_seed=r["per_seed"],
                condition={"hypothesis": r["key"], "counterfactual": "resample", "baseline": "ind_resampled"},
            )
        )
    for r in structure:
        rows.append(
            row(
                "proportion_explained",
                r["ci"],
                model=RECIPE,
                seeds=seeds,
                per_seed=r["per_seed"],
                condition={"hypothesis": r["key"], "counterfactual": "structure", "baseline": "none"},
            )
        )
    for name in per_seed[0]["circuits"]:
        vals = [p["circuits"][name]["proportion"] for p in per_seed]
        rows.append(
            row(
                "circuit_proportion_explained",
                t_interval(vals),
                model=RECIPE,
                seeds=seeds,
                per_seed=vals,
                condition={"method": name},
            )
        )
        sizes = [p["circuits"][name]["found"] for p in per_seed]
        rows.append(
            row(
                "circuit_edges",
                t_interval(sizes),
                model=RECIPE,
                seeds=seeds,
                per_seed=sizes,
                condition={"method": name},
            )
        )
    for est in ("eap", "eap_ig"):
        vals = [p["rank_corr"][0][est] for p in per_seed]
        rows.append(
            row(
                "spearman_vs_exact",
                t_interval(vals, nan_policy="omit"),
                model=RECIPE,
                seeds=seeds,
                per_seed=vals,
                condition={"estimator": est, "slot": "all"},
            )
        )
    if second is not None:
        for r in second["table"]:
            rows.append(
                row(
                    "proportion_explained",
                    CI(r["proportion"], r["lo"], r["hi"], 0.95, "bootstrap-percentile", second["n_pairs"]),
                    model=RECIPE,
                    seeds=[0],
                    condition={
                        "hypothesis": r["key"],
                        "counterfactual": "resample",
                        "baseline": "none",
                        "variant": "ln_mlp",
                    },
                )
            )
    return rows


def run(out: Path, seeds: int = 3, quick: bool = False) -> Result:
    from .. import zoo
    from ..patch.plots import head_heatmaps, hypothesis_bars

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_pairs, n_boot, ig = (128, 500, 5) if quick else (256, 1000, 10)
    if quick:  # a few minutes: one seed (seed 0's model is the one the quick demo trains)
        seeds = min(seeds, 1)
    per_seed, structure = [], []
    for s in range(seeds):
        model, _ = zoo.load(RECIPE, seed=s)
        per_seed.append(analyse(model, s, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, out=out if s == 0 else None))
        structure.append(
            analyse(
                model, s, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, counterfactual="structure", do_discovery=False
            )
        )
    keys = [r["key"] for r in per_seed[0]["table"]]
    labels = [r["hypothesis"] for r in per_seed[0]["table"]]
    summary = {
        "none": _summary(per_seed, keys, labels, "proportion", "lo", "hi"),
        "ind_resampled": _summary(
            per_seed, keys, labels, "proportion_vs_ind_resampled", "lo_vs_ind_resampled", "hi_vs_ind_resampled"
        ),
    }
    structure_rows = _summary(structure, keys, labels, "proportion", "lo", "hi")
    second = None if quick else _second_model(n_pairs, n_boot, ig)
    for p in per_seed:
        head_heatmaps(
            {
                "previous-token score": p["prev_scores"],
                "duplicate-token score": p["dup_scores"],
                "induction score": p["ind_scores"],
                "node patching: loss increase": p["node_effects"],
            },
            out / f"heads_seed{p['seed']}.png",
            title=f"seed {p['seed']}: head roles",
        )
    cis = [r["ci"] for r in summary["none"]]
    hypothesis_bars(
        labels,
        _per_key(per_seed, keys, "proportion"),
        [c.estimate for c in cis],
        [np.nan if c.lo is None else c.lo for c in cis],
        [np.nan if c.hi is None else c.hi for c in cis],
        out / "hypotheses.png",
        title=f"{RECIPE}: {seeds} seeds (dots), mean, 95% CI",
    )
    rows = _rows(summary, structure_rows, per_seed, second, list(range(seeds)))
    sec = _section(
        per_seed,
        summary,
        structure_rows,
        second,
        keys,
        rows,
        seeds=seeds,
        quick=quick,
        n_pairs=n_pairs,
        n_boot=n_boot,
        ig=ig,
    )
    sec.save(out)

    def strip(p):
        return {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in p.items()
            if k not in ("table", "edge_scores")
        }

    result = Result(
        kind="study:path-induction",
        rows=rows,
        data={
            "recipe": RECIPE,
            "seeds": list(range(seeds)),
            "quick": quick,
            "n_pairs": n_pairs,
            "n_boot": n_boot,
            "ig_steps": ig,
            "per_seed": [strip(p) for p in per_seed],
            "second_model": None if second is None else strip(second),
        },
        tables={
            "hypotheses": [r for p in per_seed for r in p["table"]],
            "hypotheses_structure": [r for p in structure for r in p["table"]],
            "edges": [{"seed": 0, **e} for e in per_seed[0]["edge_scores"]],
            **({"second_model": second["table"]} if second else {}),
        },
        provenance=provenance(
            seed=list(range(seeds)), model=RECIPE, config={"n_pairs": n_pairs, "quick": quick, "second": SECOND}
        ),
    )
    result.save(out / "summary.json")
    return result


def _fc(c) -> str:
    """'est [lo, hi]' of a CI or of a table record (proportion, lo, hi)."""
    est, lo, hi = (c.estimate, c.lo, c.hi) if isinstance(c, CI) else c
    return f"{est:.3f}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]")


def _section(per_seed, summary, structure_rows, second, keys, rows, *, seeds, quick, n_pairs, n_boot, ig):
    from ..report.sections import Section

    sec = Section("Path patching: induction heads (path-induction)", order=40)
    sec.rows = [
        r
        for r in rows
        if r["condition"].get("baseline", "none") == "none"
        and r["condition"].get("counterfactual", "resample") == "resample"
        and "variant" not in r["condition"]
    ]
    sec.paragraphs.append(
        f"Model {RECIPE} (2 layers x {per_seed[0]['prev_scores'].shape[1]} heads, attention-only), seeds "
        f"0..{seeds - 1}; "
        f"{n_pairs} (x_r, x_c) pairs per seed, x_c an independent sequence from the task distribution (another segment "
        "at other offsets); delta = signed next-token loss on x_r's predictable repeated tokens; proportion = "
        f"(AUE(none) - AUE(H)) / AUE(none), ratio of means; per-seed CIs: {n_boot} bootstrap resamples of pairs; "
        "across seeds: mean and t-interval (one seed: its bootstrap CI). Heads per seed: "
        + "; ".join(f"seed {p['seed']}: prev {', '.join(p['prev'])}, ind {', '.join(p['ind'])}" for p in per_seed)
        + ". Command: innerprobe study path-induction"
        + (" --quick" if quick else "")
        + "."
    )
    sec.table(
        "Proportion of loss explained, mean over seeds [95% CI]; right: against the baseline 'induction heads' "
        "inputs resampled'",
        ["hypothesis", "per seed", "mean [CI]", "vs ind-resampled [CI]"],
        [
            [r["hypothesis"], ", ".join(f"{v:.3f}" for v in r["per_seed"]), _fc(r["ci"]), _fc(r2["ci"])]
            for r, r2 in zip(summary["none"], summary["ind_resampled"])
        ],
    )
    sec.table(
        "Same table with a structure-preserving counterfactual (x_c repeats a segment at x_r's offsets): "
        "structural information is shared by x_r and x_c, so paths that only carry *where* the repeat is cannot "
        "be tested (mean over seeds [95% CI])",
        ["hypothesis", "per seed", "mean [CI]"],
        [[r["hypothesis"], ", ".join(f"{v:.3f}" for v in r["per_seed"]), _fc(r["ci"])] for r in structure_rows],
    )
    _head_table(sec, per_seed)
    sec.table(
        "Per seed: loss (clean / all resampled / induction inputs resampled) and bootstrap CIs",
        ["seed", "clean", "x_c", "ind resampled"] + [f"{k}" for k in keys[2:6]],
        [
            [p["seed"], f"{p['clean_loss']:.3f}", f"{p['cf_loss']:.3f}", f"{p['ind_resampled_loss']:.3f}"]
            + [_fc((r["proportion"], r["lo"], r["hi"])) for r in p["table"][2:6]]
            for p in per_seed
        ],
    )
    sec.table(
        "Automatic discovery (not told the heads): circuit size, proportion explained [bootstrap CI], "
        "precision / recall vs the naive edges",
        ["seed", "method", "edges", "proportion", "precision", "recall", "naive edges missed"],
        [
            [
                p["seed"],
                name,
                c["found"],
                _fc((c["proportion"], c["lo"], c["hi"])),
                f"{c['precision']:.2f}",
                f"{c['recall']:.2f}",
                ", ".join(c["missing"]) or "-",
            ]
            for p in per_seed
            for name, c in p["circuits"].items()
        ],
    )
    sec.table(
        "Rank agreement (Spearman) of EAP / EAP-IG with exact single-edge effects, by receiving slot",
        ["seed", "slot", "edges", "EAP", f"EAP-IG ({ig} steps)"],
        [
            [p["seed"], c["slot"], c["n"], f"{c['eap']:.2f}", f"{c['eap_ig']:.2f}"]
            for p in per_seed
            for c in p["rank_corr"]
        ],
    )
    if second is not None:
        sec.table(
            "Second model: same task with MLPs and LayerNorm (seed 0); graph reproduces the model to "
            f"{second['graph_max_abs_diff']:.1e}; heads: prev {', '.join(second['prev'])}, ind "
            f"{', '.join(second['ind'])}",
            ["hypothesis", "proportion [bootstrap CI]", "KL"],
            [[r["hypothesis"], _fc((r["proportion"], r["lo"], r["hi"])), f"{r['kl']:.3f}"] for r in second["table"]],
        )
    _figures(sec, per_seed)
    return sec


#: A head is called a previous-token / duplicate-token / induction head only when its score is at least this many
#: times the score of uniform causal attention (the chance level, printed with the table).
CHANCE_MARGIN = 2.0


def named_heads(heads, scores, layer: int, chance: float) -> list[str]:
    """The heads among ``heads`` whose score beats ``CHANCE_MARGIN`` x ``chance`` (docs/patching.md)."""
    return [h for h in heads if scores[layer][int(h.split(".")[1])] >= CHANCE_MARGIN * chance]


def _head_table(sec, per_seed) -> None:
    def scores(p, heads, key, layer):
        return ", ".join(f"{h} ({p[key][layer][int(h.split('.')[1])]:.2f})" for h in heads) or "none"

    rows = []
    for p in per_seed:
        chance = p["uniform_prev_score"]
        prev = named_heads(p["prev"], p["prev_scores"], 0, chance)
        dup = named_heads(p["dup"], p["dup_scores"], 0, chance)
        ind = named_heads(p["ind"], p["ind_scores"], -1, chance)
        rows.append(
            [
                p["seed"],
                f"{chance:.3f}",
                scores(p, p["prev"], "prev_scores", 0),
                ", ".join(prev) or "none",
                ", ".join(dup) or "none",
                scores(p, p["ind"], "ind_scores", -1),
                ", ".join(ind) or "none",
            ]
        )
        unnamed = sorted(set(p["prev"]) - set(prev))
        if unnamed:
            sec.paragraphs.append(
                f"Seed {p['seed']}: the layer-0 heads used in the hypotheses ({', '.join(unnamed)}) attend to the "
                f"previous token less than {CHANCE_MARGIN:g} x the uniform-attention level {chance:.3f}: they are "
                "not called previous-token heads here."
            )
    sec.table(
        f"Head roles per seed. Candidates: layer-0 heads scoring >= half the best, last-layer heads likewise. "
        f"A role is named only when the score beats {CHANCE_MARGIN:g} x chance (chance = the score of uniform "
        "causal attention)",
        [
            "seed",
            "chance",
            "layer-0 candidates (prev-token score)",
            "previous-token heads",
            "duplicate-token heads",
            "last-layer candidates (induction score)",
            "induction heads",
        ],
        rows,
    )


def _figures(sec, per_seed) -> None:
    for p in per_seed:
        sec.figure(
            f"heads_seed{p['seed']}.png",
            f"Seed {p['seed']}: previous-token, duplicate-token and induction "
            "scores, and the loss increase when each head's output is patched (node patching).",
        )
    sec.figure("hypotheses.png", "Proportion of loss explained per hypothesis; dots are seeds.")
    sec.figure(
        "circuit_acdc.png",
        "Seed 0: circuit found by ACDC-style greedy pruning; dashed edges are naive-hypothesis edges it did not keep.",
    )
    sec.figure("circuit_eapig.png", "Seed 0: EAP-IG top-k circuit (k = ACDC's size).")
    sec.figure("eap_vs_exact.png", "Seed 0: EAP estimate vs exact single-edge effect, coloured by receiving slot.")
