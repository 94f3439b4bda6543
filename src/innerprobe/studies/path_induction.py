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

from ..results import Result, provenance

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
        ("refined_full", "... + layer-0 heads read E in Q/K/V", E(q + k + v + o + l0k + l0q + l0v + ["embed -> a0.*:q", "embed -> a0.*:k"])),
    ] + ([("qcomp", "Q-composition: Q<-E and dup head (its Q/K/V<-E), V<-E, ind->out",
           E(q + v + o + [f"{d} -> {i}:q" for d in dup for i in ind] + [f"embed -> {d}:{s}" for d in dup for s in "qkv"]))] if dup else [])


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


def analyse(model, seed: int, *, n_pairs: int, n_boot: int, ig_steps: int, counterfactual: str = "resample",
            do_discovery: bool = True, out: Path | None = None, tag: str = "") -> dict:
    """Everything for one trained model: heads, the hypothesis table, discovery, EAP vs exact."""
    from scipy.stats import spearmanr

    from ..core.graph import build_graph
    from ..patch import discovery as disc
    from ..patch.eap import eap_scores
    from ..patch.metrics import bootstrap_proportion, kl_div, lm_loss
    from ..patch.path import edge_mask, evaluate_edges, evaluate_paths, prepare
    from ..zoo.induction import sample_induction

    gen = torch.Generator().manual_seed(20_000 + seed)
    kw = {"vocab": model.cfg["vocab"], "seq_len": model.cfg["n_ctx"]}
    x_r = sample_induction(n_pairs, gen, **kw)
    x_c = sample_induction(n_pairs, gen, structure=x_r if counterfactual == "structure" else None, **kw)
    graph = build_graph(model)
    runs = prepare(graph, x_r.tokens, x_c.tokens)
    loss = lm_loss(x_r.tokens, x_r.predictable)
    kl = kl_div(x_r.predictable)
    prev, ind, dup, prev_s, ind_s, dup_s, node_eff = _identify(model, graph, runs, x_r, loss)

    rows_h = hypotheses(prev, ind, graph, dup)
    resolved = [h.resolve(graph) for _, _, h in rows_h]
    edge_rows = [i for i, r in enumerate(resolved) if r.edges is not None]
    outs = {}
    if edge_rows:
        o = evaluate_edges(graph, runs, edge_mask(graph, [resolved[i].edges for i in edge_rows]), chunk=4)
        outs.update({i: o[j] for j, i in enumerate(edge_rows)})
    for i, r in enumerate(resolved):
        if i not in outs:
            outs[i] = evaluate_paths(graph, runs, r.paths)
    clean_loss = loss(runs.clean["out"])
    ue = {rows_h[i][0]: (loss(outs[i]) - clean_loss).numpy() for i in outs}
    # Redwood-style baseline: only the induction heads' inputs resampled
    from ..patch.hypothesis import Hypothesis

    base_h = Hypothesis.from_edges([e for e in graph.edges if e.dst not in ind])
    ue_base = (loss(evaluate_edges(graph, runs, edge_mask(graph, [base_h]))[0]) - clean_loss).numpy()
    table = []
    for i, (key, label, h) in enumerate(rows_h):
        est, lo, hi = bootstrap_proportion(ue[key], ue["none"], n_boot=n_boot, seed=seed)
        est2, lo2, hi2 = bootstrap_proportion(ue[key], ue_base, n_boot=n_boot, seed=seed)
        table.append({"seed": seed, "key": key, "hypothesis": label, "edge_set": resolved[i].edges is not None,
                      "n_edges": len(resolved[i].edges) if resolved[i].edges is not None else None,
                      "loss": float(loss(outs[i]).mean()), "kl": float(kl(runs.clean["out"], outs[i]).mean()),
                      "proportion": est, "ci_low": lo, "ci_high": hi,
                      "proportion_vs_ind_resampled": est2, "ci2_low": lo2, "ci2_high": hi2})
    T = x_r.tokens.shape[1]
    uniform_prev = float(np.mean([1.0 / (i + 1) for i in range(1, T)]))  # prev-token score of uniform causal attention
    res = {"seed": seed, "counterfactual": counterfactual, "uniform_prev_score": uniform_prev, "prev": prev, "dup": dup, "dup_scores": dup_s, "ind": ind, "prev_scores": prev_s, "ind_scores": ind_s, "node_effects": node_eff,
           "clean_loss": float(clean_loss.mean()), "cf_loss": float(loss(runs.cf["out"]).mean()),
           "ind_resampled_loss": float(np.mean(ue_base) + clean_loss.mean()), "table": table, "n_pairs": n_pairs,
           "graph": graph.summary().splitlines()[0]}
    if not do_discovery:
        return res
    # exact single-edge effects vs EAP vs EAP-IG
    exact = disc.single_edge_effects(graph, runs, loss)
    eap = eap_scores(graph, runs, loss)
    eapig = eap_scores(graph, runs, loss, ig_steps=ig_steps)
    slots = np.array([e.slot if e.dst != "out" else "out" for e in graph.edges])
    corr = {"all": (float(spearmanr(exact, eap)[0]), float(spearmanr(exact, eapig)[0]))}
    for s in ("q", "k", "v", "out"):
        m = slots == s
        if m.sum() > 2:
            corr[s] = (float(spearmanr(exact[m], eap[m])[0]), float(spearmanr(exact[m], eapig[m])[0]))
    ate = float(np.mean(ue["none"]))
    tau = 0.01 * ate
    found, _ = disc.acdc(graph, runs, loss, tau)
    naive_edges = resolved[[k for k, _, _ in rows_h].index("naive")].edges
    topk = disc.prune_dangling(graph, disc.top_k(graph, eapig, max(len(found), 1)))
    topk_eap = disc.prune_dangling(graph, disc.top_k(graph, eap, max(len(found), 1)))
    circuits = {}
    for name, es in (("acdc", found), ("eap_ig_topk", topk), ("eap_topk", topk_eap)):
        o = evaluate_edges(graph, runs, edge_mask(graph, [es]))[0]
        est, lo, hi = bootstrap_proportion((loss(o) - clean_loss).numpy(), ue["none"], n_boot=n_boot, seed=seed)
        circuits[name] = {"edges": sorted(str(e) for e in es), "proportion": est, "ci_low": lo, "ci_high": hi,
                          **{k: v for k, v in disc.compare(es, naive_edges).items() if k in ("precision", "recall", "missing", "extra", "found")}}
    res.update({"tau": tau, "circuits": circuits, "rank_corr": corr,
                "edge_scores": [{"edge": str(e), "exact": float(a), "eap": float(b), "eap_ig": float(c)} for e, a, b, c in zip(graph.edges, exact, eap, eapig)]})
    if out is not None:
        from ..patch.plots import draw_circuit, scatter

        w = {e: float(exact[graph.edge_index[e]]) for e in found}
        draw_circuit(graph, w, out / f"circuit_acdc{tag}.png", reference=naive_edges,
                     title=f"ACDC circuit (seed {seed}, tau={tau:.3f}); width = exact edge effect; dashed = naive edges not found")
        draw_circuit(graph, {e: float(eapig[graph.edge_index[e]]) for e in topk}, out / f"circuit_eapig{tag}.png", reference=naive_edges,
                     title=f"EAP-IG top-{len(found)} circuit (seed {seed})")
        scatter(exact.numpy(), eap.numpy(), out / f"eap_vs_exact{tag}.png", xlabel="exact single-edge effect (loss)", ylabel="EAP estimate",
                title=f"seed {seed}: Spearman {corr['all'][0]:.2f} (EAP), {corr['all'][1]:.2f} (EAP-IG)", colors=list(slots))
    return res


def run(out: Path, seeds: int = 3, quick: bool = False) -> Result:
    from .. import zoo
    from ..patch.metrics import mean_ci
    from ..patch.plots import head_heatmaps, hypothesis_bars
    from ..report.sections import Section

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_pairs, n_boot, ig = (128, 500, 5) if quick else (256, 1000, 10)
    if quick:  # a few minutes: one seed (seed 0's model is the one the quick demo trains)
        seeds = min(seeds, 1)
    per_seed, structure = [], []
    for s in range(seeds):
        model, card = zoo.load(RECIPE, seed=s)
        per_seed.append(analyse(model, s, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, out=out if s == 0 else None))
        structure.append(analyse(model, s, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, counterfactual="structure", do_discovery=False))
    keys = [r["key"] for r in per_seed[0]["table"]]
    labels = [r["hypothesis"] for r in per_seed[0]["table"]]
    props = np.array([[next(r["proportion"] for r in ps["table"] if r["key"] == k) for ps in per_seed] for k in keys])
    props2 = np.array([[next(r["proportion_vs_ind_resampled"] for r in ps["table"] if r["key"] == k) for ps in per_seed] for k in keys])
    summary_rows = []
    for i, k in enumerate(keys):
        m, lo, hi = mean_ci(props[i])
        m2, lo2, hi2 = mean_ci(props2[i])
        summary_rows.append({"key": k, "hypothesis": labels[i], "mean": m, "ci_low": lo, "ci_high": hi,
                             "mean_vs_ind_resampled": m2, "ci2_low": lo2, "ci2_high": hi2, "per_seed": props[i].tolist()})
    props_s = np.array([[next(r["proportion"] for r in ps["table"] if r["key"] == k) for ps in structure] for k in keys])
    structure_rows = []
    for i, k in enumerate(keys):
        m, lo, hi = mean_ci(props_s[i])
        structure_rows.append({"key": k, "hypothesis": labels[i], "mean": m, "ci_low": lo, "ci_high": hi, "per_seed": props_s[i].tolist()})
    second = None
    if not quick:
        m2, card2 = zoo.load(RECIPE, seed=0, **SECOND)
        second = analyse(m2, 0, n_pairs=n_pairs, n_boot=n_boot, ig_steps=ig, do_discovery=False)
        second["card_metrics"] = {k: card2["metrics"][k] for k in ("loss_predictable", "loss_unpredictable", "ln_vocab")}
        from ..core.graph import build_graph
        from ..zoo.induction import sample_induction

        x = sample_induction(8, torch.Generator().manual_seed(5), vocab=m2.cfg["vocab"], seq_len=m2.cfg["n_ctx"]).tokens
        with torch.no_grad():
            second["graph_max_abs_diff"] = float((build_graph(m2).forward(x) - m2(x)).abs().max())

    # ---- figures
    for p in per_seed:
        head_heatmaps({"previous-token score": p["prev_scores"], "duplicate-token score": p["dup_scores"], "induction score": p["ind_scores"],
                       "node patching: loss increase": p["node_effects"]}, out / f"heads_seed{p['seed']}.png", title=f"seed {p['seed']}: head roles")
    hypothesis_bars(labels, props, [r["mean"] for r in summary_rows], [r["ci_low"] for r in summary_rows],
                    [r["ci_high"] for r in summary_rows], out / "hypotheses.png", title=f"{RECIPE}: {seeds} seeds (dots), mean, 95% t-CI")

    # ---- section
    sec = Section("Path patching: induction heads (path-induction)", order=40)
    sec.paragraphs.append(
        f"Model {RECIPE} (2 layers x {per_seed[0]['prev_scores'].shape[1]} heads, attention-only), seeds 0..{seeds - 1}; "
        f"{n_pairs} (x_r, x_c) pairs per seed, x_c an independent sequence from the task distribution (another segment at other offsets); delta = signed next-token loss on x_r's predictable "
        f"repeated tokens; proportion = (AUE(none) - AUE(H)) / AUE(none), ratio of means; per-seed CIs: {n_boot} bootstrap resamples of pairs; "
        "across seeds: mean and t-interval. Heads per seed: " + "; ".join(f"seed {p['seed']}: prev {', '.join(p['prev'])}, ind {', '.join(p['ind'])}" for p in per_seed)
        + ". Command: innerprobe study path-induction" + (" --quick" if quick else "") + ".")
    sec.table("Proportion of loss explained, mean over seeds [95% CI]; right: against the baseline 'induction heads' inputs resampled'",
              ["hypothesis", "per seed", "mean [CI]", "vs ind-resampled [CI]"],
              [[r["hypothesis"], ", ".join(f"{v:.3f}" for v in r["per_seed"]), f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                f"{r['mean_vs_ind_resampled']:.3f} [{r['ci2_low']:.3f}, {r['ci2_high']:.3f}]"] for r in summary_rows])
    sec.table("Same table with a structure-preserving counterfactual (x_c repeats a segment at x_r's offsets): structural information "
              "is shared by x_r and x_c, so paths that only carry *where* the repeat is cannot be tested (mean over seeds [95% CI])",
              ["hypothesis", "per seed", "mean [CI]"],
              [[r["hypothesis"], ", ".join(f"{v:.3f}" for v in r["per_seed"]), f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"] for r in structure_rows])
    sec.table("Head roles per seed: previous-token heads (layer 0, score >= half the best) and induction heads (last layer); "
              "the previous-token score of uniform causal attention is given for comparison",
              ["seed", "prev heads", "their prev-token scores", "uniform-attention score", "duplicate-token heads (scores)", "induction heads", "their induction scores"],
              [[p["seed"], ", ".join(p["prev"]), ", ".join(f"{p['prev_scores'][0][int(h.split('.')[1])]:.2f}" for h in p["prev"]), f"{p['uniform_prev_score']:.3f}",
                ", ".join(f"{h} ({p['dup_scores'][0][int(h.split('.')[1])]:.2f})" for h in p["dup"]),
                ", ".join(p["ind"]), ", ".join(f"{p['ind_scores'][-1][int(h.split('.')[1])]:.2f}" for h in p["ind"])] for p in per_seed])
    sec.table("Per seed: loss (clean / all resampled / induction inputs resampled) and bootstrap CIs",
              ["seed", "clean", "x_c", "ind resampled"] + [f"{k}" for k in keys[2:6]],
              [[p["seed"], f"{p['clean_loss']:.3f}", f"{p['cf_loss']:.3f}", f"{p['ind_resampled_loss']:.3f}"] +
               [f"{r['proportion']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for r in p["table"][2:6]] for p in per_seed])
    disc_rows = []
    for p in per_seed:
        for name, c in p["circuits"].items():
            disc_rows.append([p["seed"], name, c["found"], f"{c['proportion']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]",
                              f"{c['precision']:.2f}", f"{c['recall']:.2f}", ", ".join(c["missing"]) or "-"])
    sec.table("Automatic discovery (not told the heads): circuit size, proportion explained [bootstrap CI], precision / recall vs the naive edges",
              ["seed", "method", "edges", "proportion", "precision", "recall", "naive edges missed"], disc_rows)
    sec.table("Rank agreement (Spearman) of EAP / EAP-IG with exact single-edge effects, by receiving slot",
              ["seed", "slot", "EAP", f"EAP-IG ({ig} steps)"],
              [[p["seed"], s, f"{a:.2f}", f"{b:.2f}"] for p in per_seed for s, (a, b) in p["rank_corr"].items()])
    if second is not None:
        sec.table("Second model: same task with MLPs and LayerNorm (seed 0); graph reproduces the model to "
                  f"{second['graph_max_abs_diff']:.1e}; heads: prev {', '.join(second['prev'])}, ind {', '.join(second['ind'])}",
                  ["hypothesis", "proportion [bootstrap CI]", "KL"],
                  [[r["hypothesis"], f"{r['proportion']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]", f"{r['kl']:.3f}"] for r in second["table"]])
    for p in per_seed:
        sec.figure(f"heads_seed{p['seed']}.png", f"Seed {p['seed']}: previous-token, duplicate-token and induction scores, and the loss increase "
                   "when each head's output is patched (node patching).")
    sec.figure("hypotheses.png", "Proportion of loss explained per hypothesis; dots are seeds.")
    sec.figure("circuit_acdc.png", "Seed 0: circuit found by ACDC-style greedy pruning; dashed edges are naive-hypothesis edges it did not keep.")
    sec.figure("circuit_eapig.png", "Seed 0: EAP-IG top-k circuit (k = ACDC's size).")
    sec.figure("eap_vs_exact.png", "Seed 0: EAP estimate vs exact single-edge effect, coloured by receiving slot.")
    sec.save(out)

    def strip(p):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items() if k not in ("table", "edge_scores")}

    result = Result(
        kind="study:path-induction",
        data={"recipe": RECIPE, "seeds": seeds, "quick": quick, "n_pairs": n_pairs, "n_boot": n_boot, "ig_steps": ig,
              "counterfactual": "independent resample (headline); structure-preserving resample (second table)",
              "delta": "signed loss on x_r's predictable tokens", "baseline": "no paths (and: induction heads' inputs resampled)",
              "headline": summary_rows, "structure_preserving": structure_rows, "per_seed": [strip(p) for p in per_seed], "second_model": None if second is None else strip(second)},
        tables={"hypotheses": [r for p in per_seed for r in p["table"]], "summary": summary_rows,
                "hypotheses_structure": [r for p in structure for r in p["table"]], "summary_structure": structure_rows,
                "edges_seed0": per_seed[0]["edge_scores"],
                **({"second_model": second["table"]} if second else {})},
        provenance=provenance(seed=list(range(seeds)), model=RECIPE, config={"n_pairs": n_pairs, "quick": quick, "second": SECOND}))
    result.save(out / "summary.json")
    return result
