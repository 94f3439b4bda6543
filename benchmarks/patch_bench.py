"""Benchmark: exact all-edge path patching vs a per-edge hook loop; EAP / EAP-IG time and memory.

Rows (docs/patching.md, "Benchmark"):

* ``induction``: every single-edge effect of the zoo's ``induction-attn2l`` (106 edges, 64 pairs),
  by the library's all-edge call ``patch.discovery.single_edge_effects`` (the fast exact evaluator,
  ``innerprobe.patch.fast``, in chunks of rows from the memory budget per receiving layer, the
  metric ``lm_loss`` taken once per chunk: ``stacked_metric=True``)
  against one hooked forward per edge; best of ``--repeats`` runs, the two methods alternating.
* ``gpt2``: a GPT-2-small-shaped TransformerLens ``HookedTransformer`` built from a config (12
  layers, 12 heads, d_model 768, d_mlp 3072, vocab 1000, random weights, ``--seed``), ``--pairs``
  x ``--tokens`` random token pairs. The full graph (32,936 edges) takes hours with either
  method on one CPU thread, so a **stratified sample of receivers** is timed: the strata are the
  receiver's layer (0-11, and ``out``); each stratum gets ``--sample`` edges drawn at random
  (``random.Random(seed)``), all evaluated by the fast evaluator, the first ``--loop-sample`` of
  them also by the loop. Full-graph time of each method = sum over strata of (edges in the
  stratum) x (measured time per edge there); the speed-up is their ratio. ``max_abs_diff`` is
  over the edges both methods computed.
* EAP and EAP-IG: time, and peak RSS of a child process (model + cached runs + the scores),
  next to the peak RSS of a child doing one plain forward + backward (``loss.backward()``, with
  parameter gradients) of the same model on the same batch. Both peaks are taken from the moment
  the model is built (the peak window is reset then; building a TransformerLens model has its own
  larger transient peak, printed separately).
* auto-circuit (Miller et al. 2024): its single-edge patching needs transformer-lens 2.x; with
  ``--auto-circuit-python`` pointing at a separate environment that has it, that row runs in a
  child process; otherwise it is skipped with the reason printed.

The loop is what users write with TransformerLens hooks (ACDC's receiver hook): one forward per
edge with (a_u(x_c) - a_u(x_r)) added to the receiver's input (``hook_{q,k,v}_input`` of one
head, ``hook_mlp_in``, or the final residual for ``out``). Both run side by side in one process,
one thread. Times are this process's CPU seconds (``time.process_time``), which other processes'
load on the shared machine disturbs far less than wall-clock time (only through caches and
memory bandwidth); absolute figures still vary between runs.

    python benchmarks/patch_bench.py [--rows induction,gpt2] [--seed 0] [--json PATH] [--max-rss 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

import torch


# ----------------------------------------------------------------------------- shared helpers
def peak_rss_gb() -> float:
    """Peak RSS since the process started or since :func:`reset_peak` (Linux VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20


def reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def guard(args, stage: str) -> None:
    if args.max_rss and peak_rss_gb() > args.max_rss:
        raise SystemExit(f"stopped after {stage}: peak RSS {peak_rss_gb():.2f} GB > --max-rss {args.max_rss} GB")


def single_edge_masks(E: int, idx: list[int]) -> torch.Tensor:
    m = torch.ones(len(idx), E)
    m[torch.arange(len(idx)), torch.tensor(idx)] = 0
    return m


def fast_effects(graph, runs, metric, idx, budget) -> tuple[float, torch.Tensor]:
    from innerprobe.patch.discovery import mean_metric
    from innerprobe.patch.path import evaluate_edges

    base = metric(runs.clean["out"]).mean()
    t0 = time.process_time()
    out = evaluate_edges(graph, runs, single_edge_masks(len(graph.edges), idx), memory_budget=budget)
    eff = mean_metric(out, metric) - base
    return time.process_time() - t0, eff


# ----------------------------------------------------------------------------- GPT-2 shape
def gpt2_model(seed: int):
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_ctx=1024,
        d_head=64,
        n_heads=12,
        d_mlp=3072,
        d_vocab=1000,
        act_fn="gelu_new",
        normalization_type="LN",
        use_split_qkv_input=True,
        use_hook_mlp_in=True,
        seed=seed,
        device="cpu",
    )
    return tl.HookedTransformer(cfg).eval()


def gpt2_pairs(args):
    g = torch.Generator().manual_seed(args.seed + 1)
    return (
        torch.randint(0, 1000, (args.pairs, args.tokens), generator=g),
        torch.randint(0, 1000, (args.pairs, args.tokens), generator=g),
    )


def tl_loop(model, graph, runs, metric, x_r, idx) -> tuple[float, torch.Tensor]:
    """One TransformerLens forward with hooks per edge."""
    L = model.cfg.n_layers
    base = metric(runs.clean["out"]).mean()
    out = torch.zeros(len(idx))
    t0 = time.process_time()
    with torch.no_grad():
        for k, i in enumerate(idx):
            e = graph.edges[i]
            diff = runs.cf[e.src] - runs.clean[e.src]
            node = graph.nodes[e.dst]
            if e.dst == "out":
                name = f"blocks.{L - 1}.hook_resid_post"
                fn = (lambda d: lambda act, hook: act + d)(diff)
            elif node.head is None:
                name = f"blocks.{node.layer}.hook_mlp_in"
                fn = (lambda d: lambda act, hook: act + d)(diff)
            else:
                name = f"blocks.{node.layer}.hook_{e.slot}_input"

                def fn(act, hook, d=diff, h=node.head):
                    act = act.clone()
                    act[:, :, h] += d
                    return act

            out[k] = metric(model.run_with_hooks(x_r, fwd_hooks=[(name, fn)])).mean() - base
    return time.process_time() - t0, out


def strata(graph) -> dict:
    by: dict = {}
    for i, e in enumerate(graph.edges):
        layer = graph.nodes[e.dst].layer
        by.setdefault("out" if layer is None else f"L{layer}", []).append(i)
    return by


def gpt2_row(args) -> dict:
    from innerprobe.core.graph import build_graph
    from innerprobe.patch.metrics import lm_loss
    from innerprobe.patch.path import prepare

    model = gpt2_model(args.seed)
    x_r, x_c = gpt2_pairs(args)
    metric = lm_loss(x_r)
    graph = build_graph(model)
    t0 = time.process_time()
    runs = prepare(graph, x_r, x_c)
    t_prep = time.process_time() - t0
    guard(args, "prepare")
    rnd = random.Random(args.seed)
    tot_fast = tot_loop = 0.0
    diffs, n_fast, n_loop, per = [], 0, 0, {}
    for name, idx in strata(graph).items():
        pick = rnd.sample(idx, min(args.sample, len(idx)))
        tf, ef = fast_effects(graph, runs, metric, pick, args.memory_budget)
        guard(args, f"fast {name}")
        tl_, el = tl_loop(model, graph, runs, metric, x_r, pick[: args.loop_sample])
        diffs.append(float((ef[: args.loop_sample] - el).abs().max()))
        per[name] = {"edges": len(idx), "fast_s_per_edge": tf / len(pick), "loop_s_per_edge": tl_ / len(el)}
        tot_fast += len(idx) * tf / len(pick)
        tot_loop += len(idx) * tl_ / len(el)
        n_fast, n_loop = n_fast + len(pick), n_loop + len(el)
        print(
            f"  {name:>4}: {len(idx):5d} edges  fast {tf / len(pick):7.3f} s/edge  loop {tl_ / len(el):7.3f} s/edge  "
            f"max|diff| {diffs[-1]:.1e}",
            flush=True,
        )
    E = len(graph.edges)
    row = {
        "edges": E,
        "nodes": len(graph.nodes),
        "pairs": args.pairs,
        "tokens": args.tokens,
        "seed": args.seed,
        "prepare_s": t_prep,
        "sampled_edges_fast": n_fast,
        "sampled_edges_loop": n_loop,
        "strata": per,
        "fast_full_graph_s_est": tot_fast,
        "loop_full_graph_s_est": tot_loop,
        "exact_vs_loop": tot_loop / tot_fast,
        "max_abs_diff": max(diffs),
        "memory_budget": args.memory_budget,
    }
    if args.acdc_seconds > 0:
        row["acdc_pp"] = acdc_row(args, graph, runs, metric)
    print(
        f"gpt2-shape: {E} edges, prepare {t_prep:.1f} s; estimated full graph: fast {tot_fast / 3600:.2f} h, "
        f"loop {tot_loop / 3600:.2f} h -> x{row['exact_vs_loop']:.2f} per edge; max|fast - loop| {row['max_abs_diff']:.1e}"
    )
    return row


def acdc_row(args, graph, runs, metric) -> dict:
    """ACDC++ on the GPT-2-shaped graph within --acdc-seconds (usability: time and memory)."""
    from innerprobe.patch.discovery import acdc_pp

    t0 = time.process_time()
    kept, rep = acdc_pp(graph, runs, metric, tau=args.acdc_tau, ig_steps=args.ig_steps, time_budget_s=args.acdc_seconds)
    rep.update(kept=len(kept), cpu_s=time.process_time() - t0, peak_rss_gb_so_far=peak_rss_gb())
    print(
        f"ACDC++ (tau {args.acdc_tau}, EAP-IG {args.ig_steps} steps, budget {args.acdc_seconds} s): EAP-IG removed "
        f"{rep['eap_removed']}, exact removed {rep['exact_removed']}, unverified {rep['unverified']}, kept {len(kept)} "
        f"(after dangling edges); {rep['cpu_s']:.0f} CPU s; metric {rep['metric_full']:.4f} -> {rep['metric_final']:.4f}"
    )
    return rep


def acdc_only(args) -> dict:
    from innerprobe.core.graph import build_graph
    from innerprobe.patch.metrics import lm_loss
    from innerprobe.patch.path import prepare

    model = gpt2_model(args.seed)
    x_r, x_c = gpt2_pairs(args)
    graph = build_graph(model)
    return acdc_row(args, graph, prepare(graph, x_r, x_c), lm_loss(x_r))


def child(args) -> None:
    """--child eap|eapig|fwdbwd: one measurement in a fresh process; prints a JSON line."""
    torch.set_num_threads(1)
    model = gpt2_model(args.seed)
    x_r, x_c = gpt2_pairs(args)
    from innerprobe.patch.metrics import lm_loss

    metric = lm_loss(x_r)
    import gc

    gc.collect()
    res = {"construction_peak_rss_gb": peak_rss_gb(), "base_rss_gb": rss_gb(), "peak_window_reset": reset_peak()}
    if args.child == "fwdbwd":
        t0 = time.process_time()
        metric(model(x_r)).mean().backward()
        res["s"] = time.process_time() - t0
    else:
        from innerprobe.core.graph import build_graph
        from innerprobe.patch.eap import eap_scores
        from innerprobe.patch.path import prepare

        graph = build_graph(model)
        runs = prepare(graph, x_r, x_c)
        res["after_prepare_rss_gb"] = peak_rss_gb()
        t0 = time.process_time()
        eap_scores(
            graph,
            runs,
            metric,
            ig_steps=args.ig_steps if args.child == "eapig" else 0,
            memory_budget=args.memory_budget,
        )
        res["s"] = time.process_time() - t0
    res["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(res))


def run_child(args, kind: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--seed",
        str(args.seed),
        "--pairs",
        str(args.pairs),
        "--tokens",
        str(args.tokens),
        "--ig-steps",
        str(args.ig_steps),
    ]
    cmd += ["--memory-budget", str(args.memory_budget)] if args.memory_budget else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(
            f"child {kind} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}"
        )
    return json.loads(p.stdout.strip().splitlines()[-1])


def memory_rows(args) -> dict:
    plain = run_child(args, "fwdbwd")
    eap = run_child(args, "eap")
    ig = run_child(args, "eapig")
    print(
        f"peak RSS is measured from after the model is built (RSS then {plain['base_rss_gb']:.2f} GB; building it peaked at "
        f"{plain['construction_peak_rss_gb']:.2f} GB; window reset: {plain['peak_window_reset']})"
    )
    print(f"plain forward + backward: {plain['s']:.1f} s, peak RSS {plain['peak_rss_gb']:.2f} GB")
    for name, r in (("EAP", eap), (f"EAP-IG ({args.ig_steps} steps)", ig)):
        print(
            f"{name}: {r['s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB (after prepare {r['after_prepare_rss_gb']:.2f} GB), "
            f"{r['peak_rss_gb'] / plain['peak_rss_gb']:.2f}x the plain forward + backward"
        )
    return {
        "plain_fwd_bwd_peak_rss_gb": plain["peak_rss_gb"],
        "plain_fwd_bwd_s": plain["s"],
        "eap_peak_rss_gb": eap["peak_rss_gb"],
        "eap_s": eap["s"],
        "eap_after_prepare_rss_gb": eap["after_prepare_rss_gb"],
        "eapig_peak_rss_gb": ig["peak_rss_gb"],
        "eapig_s": ig["s"],
        "ig_steps": args.ig_steps,
        "eap_over_plain_rss": eap["peak_rss_gb"] / plain["peak_rss_gb"],
        "rss_base_after_model_gb": plain["base_rss_gb"],
        "model_construction_peak_rss_gb": plain["construction_peak_rss_gb"],
        "eap_increment_gb": eap["peak_rss_gb"] - eap["base_rss_gb"],
        "plain_increment_gb": plain["peak_rss_gb"] - plain["base_rss_gb"],
    }


def auto_circuit_row(args) -> dict:
    if not args.auto_circuit_python:
        why = "auto-circuit needs transformer-lens 2.x (this environment has a different one); pass --auto-circuit-python PY of a separate venv"
        print(f"auto-circuit: skipped ({why})")
        return {"skipped": why}
    why = "a side-by-side auto-circuit child is not implemented for this shape yet"
    print(f"auto-circuit: skipped ({why})")
    return {"skipped": why}


# ----------------------------------------------------------------------------- induction
def induction_loop(model, graph, runs, loss, x_r) -> tuple[float, torch.Tensor]:
    """One hooked forward per edge on the zoo transformer (receiver input sites)."""
    from innerprobe.core.hooks import HookSession

    effects = torch.zeros(len(graph.edges))
    base = loss(runs.clean["out"]).mean()
    t0 = time.process_time()
    for i, e in enumerate(graph.edges):
        diff = runs.cf[e.src] - runs.clean[e.src]
        dst = graph.nodes[e.dst]
        with HookSession(model, eval=True) as hs, torch.no_grad():
            if e.dst == "out":
                hs.edit("unembed:input" if not model.cfg["ln"] else "ln_final:input", lambda v, rs, d=diff: v + d)
            else:

                def add(v, rs, d=diff, h=dst.head):
                    v = v.clone()
                    v[:, :, h] += d
                    return v

                hs.edit(f"blocks.{dst.layer}.attn.hook_{e.slot}_input", add)
            effects[i] = loss(hs.run(x_r)).mean() - base
    return time.process_time() - t0, effects


def induction_row(args) -> dict:
    from innerprobe import zoo
    from innerprobe.core.graph import build_graph
    from innerprobe.patch.discovery import single_edge_effects
    from innerprobe.patch.fast import parse_bytes, rows_for_budget
    from innerprobe.patch.metrics import lm_loss
    from innerprobe.patch.path import prepare
    from innerprobe.zoo.induction import sample_induction

    model, _ = zoo.load("induction-attn2l", seed=args.seed)
    gen = torch.Generator().manual_seed(123)
    kw = {"vocab": model.cfg["vocab"], "seq_len": model.cfg["n_ctx"]}
    xr, xc = sample_induction(args.induction_pairs, gen, **kw), sample_induction(args.induction_pairs, gen, **kw)
    graph = build_graph(model)
    loss = lm_loss(xr.tokens, xr.predictable)
    runs = prepare(graph, xr.tokens, xc.tokens)
    E = len(graph.edges)
    best_f = best_l = float("inf")
    for _ in range(args.repeats):
        t0 = time.process_time()
        ef = single_edge_effects(graph, runs, loss, memory_budget=args.memory_budget, stacked_metric=True)
        tf = time.process_time() - t0
        tl_, el = induction_loop(model, graph, runs, loss, xr.tokens)
        best_f, best_l = min(best_f, tf), min(best_l, tl_)
    diff = float((ef - el).abs().max())
    print(
        f"induction-attn2l seed {args.seed}: {E} edges, {args.induction_pairs} pairs; best of {args.repeats}: "
        f"loop {best_l * 1e3:.0f} ms, fast {best_f * 1e3:.0f} ms -> x{best_l / best_f:.2f}; max|fast - loop| {diff:.1e}"
    )
    return {
        "edges": E,
        "pairs": args.induction_pairs,
        "loop_s": best_l,
        "fast_s": best_f,
        "exact_vs_loop": best_l / best_f,
        "max_abs_diff": diff,
        "seed": args.seed,
        "memory_budget": args.memory_budget,
        "chunk_rows": [
            rows_for_budget(graph, runs, parse_bytes(args.memory_budget, runs.clean["out"].device), receiver=g)
            for g in range(1, len(graph.groups))
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", default="induction,gpt2", help="comma list of induction, gpt2, memory (EAP rows), acdc (ACDC++ alone)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument(
        "--max-rss", type=float, default=5.0, help="stop (GB of this process's peak RSS) after a stage that exceeds it"
    )
    ap.add_argument(
        "--memory-budget",
        default=None,
        help="the evaluator's / EAP-IG's working-memory budget (default: the library's)",
    )
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sample", type=int, default=12, help="edges per receiver-layer stratum (fast evaluator)")
    ap.add_argument("--loop-sample", type=int, default=2, help="of those, edges also run by the hook loop")
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--induction-pairs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--auto-circuit-python", default=None)
    ap.add_argument(
        "--acdc-seconds",
        type=float,
        default=120.0,
        help="wall-clock budget of the ACDC++ row on the GPT-2 shape, EAP-IG included (0: skip)",
    )
    ap.add_argument("--acdc-tau", type=float, default=1e-3)
    ap.add_argument("--child", default=None, choices=["eap", "eapig", "fwdbwd"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.child:
        return child(args)
    rows = set(args.rows.split(","))
    res: dict = {"threads": 1, "note": "shared CPU machine; ratios measured side by side in one process"}
    if "induction" in rows:
        res["induction"] = induction_row(args)
    if "gpt2" in rows:
        res["gpt2_shape"] = gpt2_row(args)
    elif "acdc" in rows:  # ACDC++ alone on the GPT-2 shape
        res["gpt2_shape"] = {"acdc_pp": acdc_only(args)}
    if "memory" in rows or "gpt2" in rows:
        res.setdefault("gpt2_shape", {}).update(memory_rows(args))
        res["auto_circuit"] = auto_circuit_row(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
