"""APEX benchmark: escape noise with the engine vs two baselines, and throughput vs a raw forward.

For each model (digits-deep-mlp, digits-cnn, a synthetic 8 x 1024 ReLU MLP) and the same sigma
grid and K:

* (a) naive loop: one forward hook adding noise, one forward pass per (input, sigma, draw);
  timed on a few inputs and reported per input;
* (b) batched full-grid baseline: per sigma, the K copies of every input in one forward with a
  hook adding ``torch.randn`` noise (no CRN, no prefix reuse, no early exit);
* the engine: ``escape_early_exit`` (batched, per-row sigma, CRN, prefix reuse, early exit) and a
  full-grid ``Engine.counts`` sweep;
* throughput: rows per second of the engine's full-grid sweep vs a raw batched ``model(x)`` over
  the same rows, in chunks of the same size.

Run: ``python benchmarks/apex_bench.py [--quick]``. Prints ratios measured side by side; asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)


def synthetic_mlp(width=1024, depth=8, d_in=64, classes=10, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Flatten()]
    d = d_in
    for i in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers).eval()


def act_modules(model):
    return [m for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def naive_loop(model, x, sigmas, K, tau=0.5):
    """One forward per (input, sigma, draw), a hook adding sigma * randn; escape = first sigma with survival < tau."""
    state = {"sigma": 0.0}
    hooks = [m.register_forward_hook(lambda mod, a, o: o + state["sigma"] * torch.randn_like(o)) for m in act_modules(model)]
    esc = []
    try:
        with torch.inference_mode():
            for i in range(len(x)):
                xi = x[i:i + 1]
                state["sigma"] = 0.0
                y0 = int(model(xi).argmax())
                e = sigmas[-1]
                for s in sigmas:
                    state["sigma"] = float(s)
                    keep = sum(int(model(xi).argmax()) == y0 for _ in range(K))
                    if keep / K < tau:
                        e = s
                        break
                esc.append(e)
    finally:
        for h in hooks:
            h.remove()
    return np.array(esc)


def batched_grid(model, x, sigmas, K, chunk_rows=8192):
    """Per sigma, all inputs x K draws batched (chunked), global RNG noise; full grid, no early exit."""
    state = {"sigma": 0.0}
    hooks = [m.register_forward_hook(lambda mod, a, o: o + state["sigma"] * torch.randn_like(o)) for m in act_modules(model)]
    N = len(x)
    counts = np.zeros((N, len(sigmas)), dtype=np.int64)
    B = max(1, chunk_rows // K)
    try:
        with torch.inference_mode():
            state["sigma"] = 0.0
            y0 = model(x).argmax(-1)
            for j, s in enumerate(sigmas):
                state["sigma"] = float(s)
                for b0 in range(0, N, B):
                    xb = x[b0:b0 + B].repeat_interleave(K, 0)
                    pred = model(xb).argmax(-1).view(-1, K)
                    counts[b0:b0 + B, j] = (pred == y0[b0:b0 + B, None]).sum(1).numpy()
    finally:
        for h in hooks:
            h.remove()
    return counts


def raw_forward(model, x, S, K, chunk_rows=8192):
    """A raw batched model(x) over the same N x S x K rows, same chunk size."""
    rows = x.repeat_interleave(S * K, 0) if len(x) * S * K <= chunk_rows else None
    with torch.inference_mode():
        if rows is not None:
            model(rows)
            return
        per = max(1, chunk_rows // (S * K)) if S * K <= chunk_rows else 1
        for b0 in range(0, len(x), per):
            xb = x[b0:b0 + per]
            if S * K <= chunk_rows:
                model(xb.repeat_interleave(S * K, 0))
            else:
                r = xb.repeat_interleave(K, 0)
                for _ in range(S * len(xb)):
                    model(r[:K])


def best_of(fn, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench(name, model, x, sigmas, K, n_naive, repeat):
    from innerprobe.perturb import Engine, escape_early_exit

    N, S = len(x), len(sigmas)
    t_naive, _ = best_of(lambda: naive_loop(model, x[:n_naive], sigmas, K), 1)
    t_naive_per = t_naive / n_naive
    t_grid, _ = best_of(lambda: batched_grid(model, x, sigmas, K), repeat)
    eng = Engine(model, x, samples=K, noise_cache_mb=512)
    t_esc, esc = best_of(lambda: escape_early_exit(model, x, sigmas, samples=K, engine=eng), repeat)
    t_full, _ = best_of(lambda: eng.counts(sigmas), repeat)
    t_raw, _ = best_of(lambda: raw_forward(model, x, S, K), repeat)
    rows = N * S * K
    print(f"\n== {name}: N={N} inputs, {S} sigmas, K={K} ({rows:,} rows on the full grid); prefix reuse: "
          f"{'children[:%d]' % eng.split if eng.split else 'no'}; right-censored {float((esc.censor == 1).mean()):.2f}")
    print(f"  (a) naive hook loop       {t_naive_per * N:9.2f} s  (measured on {n_naive} inputs: {t_naive_per:.3f} s/input)")
    print(f"  (b) batched full grid     {t_grid:9.2f} s")
    print(f"  engine, escape+early exit {t_esc:9.2f} s   -> {t_naive_per * N / t_esc:7.1f}x faster than (a) [target >= 20x], "
          f"{t_grid / t_esc:5.2f}x faster than (b)")
    print(f"  engine, full-grid counts  {t_full:9.2f} s   -> {rows / t_full:,.0f} rows/s vs raw model(x) {rows / t_raw:,.0f} rows/s: "
          f"raw/engine time = {t_full / t_raw:.2f} [target <= 1.3]")
    return {"model": name, "naive_s": t_naive_per * N, "grid_s": t_grid, "engine_escape_s": t_esc, "engine_full_s": t_full, "raw_s": t_raw,
            "speedup_vs_naive": t_naive_per * N / t_esc, "speedup_vs_grid": t_grid / t_esc, "engine_over_raw": t_full / t_raw}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer inputs and repeats")
    args = ap.parse_args()
    from innerprobe import zoo

    sigmas = np.geomspace(0.02, 50, 31)
    K = 32
    N = 100 if args.quick else 200
    repeat = 1 if args.quick else 2
    print(f"APEX benchmark: torch {torch.__version__}, {torch.get_num_threads()} thread(s); grid geomspace(0.02, 50, 31), K = {K}")
    results = []
    for name in ("digits-deep-mlp", "digits-cnn"):
        model, _ = zoo.load(name, seed=0)
        x = zoo.recipe_data(name, seed=0).x_test[:N]
        results.append(bench(name, model, x, sigmas, K, n_naive=3 if args.quick else 5, repeat=repeat))
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(max(4, N // 16), 1, 8, 8, generator=g)
    results.append(bench("synthetic 8x1024 ReLU MLP", synthetic_mlp(), xs, sigmas, K, n_naive=1, repeat=1))
    print("\nsummary (ratios; > 1 means the engine is faster):")
    for r in results:
        print(f"  {r['model']:28s} vs naive {r['speedup_vs_naive']:7.1f}x   vs batched grid {r['speedup_vs_grid']:5.2f}x   "
              f"engine full-grid time / raw forward {r['engine_over_raw']:.2f}")


if __name__ == "__main__":
    main()
