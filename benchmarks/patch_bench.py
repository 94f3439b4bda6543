"""Benchmark: every single-edge effect on induction-attn2l, batched exact evaluator vs a per-edge hook loop.

The loop is what users write with TransformerLens-style hooks (ACDC's receiver hook): one hooked
forward pass per edge, adding (a_u(x_c) - a_u(x_r)) to the receiver's input slot. The batched
evaluator runs the two-version algorithm with one edge mask per edge, stacked on the batch axis.
Also: EAP / EAP-IG time and their Spearman rank correlation with the exact effects.

    python benchmarks/patch_bench.py [--seed 0] [--pairs 64] [--chunk 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch


def hook_loop(model, graph, runs, loss, x_r):
    """One forward per edge; the receiver's slot gets the sender's counterfactual value."""
    from innerprobe.core.hooks import HookSession

    effects = torch.zeros(len(graph.edges))
    base = loss(model(x_r)).mean()
    for i, e in enumerate(graph.edges):
        diff = runs.cf[e.src] - runs.clean[e.src]
        dst = graph.nodes[e.dst]
        with HookSession(model, eval=True) as hs, torch.no_grad():
            if e.dst == "out":
                site = "unembed:input" if not model.cfg["ln"] else "ln_final:input"
                hs.edit(site, lambda v, rs, d=diff: v + d)
            else:
                h = dst.head

                def add(v, rs, d=diff, h=h):
                    v = v.clone()
                    v[:, :, h] += d
                    return v
                hs.edit(f"blocks.{dst.layer}.attn.hook_{e.slot}_input", add)
            effects[i] = loss(hs.run(x_r)).mean() - base
    return effects


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from scipy.stats import spearmanr

    from innerprobe import zoo
    from innerprobe.core.graph import build_graph
    from innerprobe.patch import discovery as disc
    from innerprobe.patch.eap import eap_scores
    from innerprobe.patch.metrics import lm_loss
    from innerprobe.patch.path import prepare
    from innerprobe.zoo.induction import sample_induction

    model, _ = zoo.load("induction-attn2l", seed=args.seed)
    gen = torch.Generator().manual_seed(123)
    kw = {"vocab": model.cfg["vocab"], "seq_len": model.cfg["n_ctx"]}
    xr = sample_induction(args.pairs, gen, **kw)
    xc = sample_induction(args.pairs, gen, **kw)
    graph = build_graph(model)
    loss = lm_loss(xr.tokens, xr.predictable)
    t = time.perf_counter()
    runs = prepare(graph, xr.tokens, xc.tokens)
    t_prep = time.perf_counter() - t

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_batch, exact = timed(lambda: disc.single_edge_effects(graph, runs, loss, chunk=args.chunk))
    t_loop, looped = timed(lambda: hook_loop(model, graph, runs, loss, xr.tokens))
    t_eap, eap = timed(lambda: eap_scores(graph, runs, loss))
    t_ig, eapig = timed(lambda: eap_scores(graph, runs, loss, ig_steps=args.ig_steps))
    E = len(graph.edges)
    print(f"induction-attn2l seed {args.seed}: {graph.summary().splitlines()[0]}; {args.pairs} pairs (independent resample), "
          f"metric = loss on predictable tokens; best of {args.repeats}; 1 thread")
    print(f"cached clean + counterfactual runs       {t_prep * 1e3:8.1f} ms (shared by the batched evaluator and EAP)")
    print(f"per-edge hook loop ({E} forwards)          {t_loop * 1e3:8.1f} ms")
    print(f"batched exact evaluator (chunk {args.chunk})       {t_batch * 1e3:8.1f} ms   speed-up x{t_loop / t_batch:.1f}")
    print(f"max |batched - loop| effect              {float((exact - looped).abs().max()):.2e} (largest |effect| {float(exact.abs().max()):.3f})")
    print(f"EAP (1 backward)                         {t_eap * 1e3:8.1f} ms   x{t_loop / t_eap:.1f} vs loop; Spearman vs exact {spearmanr(exact, eap)[0]:.3f}")
    print(f"EAP-IG ({args.ig_steps} steps)                      {t_ig * 1e3:8.1f} ms   x{t_loop / t_ig:.1f} vs loop; Spearman vs exact {spearmanr(exact, eapig)[0]:.3f}")


if __name__ == "__main__":
    main()
