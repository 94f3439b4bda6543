"""Scale-out: an APEX sweep and an all-edge run with 1 and 2 workers, on the local executor and on Ray.

    .venv/bin/python benchmarks/scale_bench.py [--inputs 397] [--samples 256] [--pairs 256] [--json PATH]

Rows, each timed side by side in one run on the same model, inputs and shards (docs/scale.md):
  apex   digits-cnn (zoo, seed 0): N inputs x 16 sigmas x K passes, noise after every ReLU
  edges  induction-attn2l (zoo, seed 0): every edge's exact single-edge effect over P pairs
Speed-ups are run time with 1 worker / with 2 workers; local workers are spawned processes (their
start-up is inside the timed run, and timed alone as local_pool_startup_s); Ray's start-up (ray.init of a local instance) is timed separately
and left out of its runs. Every run's result is checked bitwise equal to the one-worker local run.
Wall times on a shared machine grow with its load: the load average is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _ray_session(cpus: int):
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    return ray, time.perf_counter() - t


def _pool_startup() -> float:
    """Seconds for two spawned local workers to start and answer a no-op task each."""
    from innerprobe.core.tasks import Task, run_tasks

    t, _ = _timed(lambda: run_tasks([Task("builtins:dict", {"i": i}) for i in range(2)], workers=2))
    return t


def bench(name: str, run, same) -> dict:
    """Local 1 and 2 workers, Ray with a 1-CPU and a 2-CPU local instance; results checked equal."""
    t1, ref = _timed(lambda: run("local", 1))
    t2, out = _timed(lambda: run("local", 2))
    same(ref, out)
    row = {"local_1_s": t1, "local_2_s": t2, "local_2_vs_1": t1 / t2, "local_pool_startup_s": _pool_startup()}
    for cpus in (1, 2):
        ray, start = _ray_session(cpus)
        try:
            tr, out = _timed(lambda c=cpus: run("ray", c))
        finally:
            ray.shutdown()
        same(ref, out)
        row[f"ray_{cpus}_s"], row[f"ray_startup_{cpus}_s"] = tr, start
    row["ray_2_vs_1"] = row["ray_1_s"] / row["ray_2_s"]
    row["ray_startup_s"] = (row["ray_startup_1_s"] + row["ray_startup_2_s"]) / 2
    print(
        f"{name}: local 1 worker {t1:.1f} s, 2 workers {t2:.1f} s (x{row['local_2_vs_1']:.2f}); ray 1 CPU "
        f"{row['ray_1_s']:.1f} s, 2 CPUs {row['ray_2_s']:.1f} s (x{row['ray_2_vs_1']:.2f}); ray start-up "
        f"{row['ray_startup_s']:.1f} s; load average {os.getloadavg()[0]:.1f}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=397)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("INNERPROBE_PROGRESS", "0")
    from innerprobe import scale, zoo
    from innerprobe.zoo.induction import sample_induction

    x = zoo.recipe_data("digits-cnn", seed=0).x_test[: args.inputs]
    sig = np.geomspace(0.05, 20, 16)
    zoo.load("digits-cnn", seed=0)

    def apex_run(executor, workers):
        return scale.apex(
            "digits-cnn", x, sig, samples=args.samples, seed=0, shard=16, executor=executor, workers=workers
        ).arrays["counts"]

    figures = {"apex": bench("apex", apex_run, np.testing.assert_array_equal)}
    tf, _ = zoo.load("induction-attn2l", seed=0)
    gen = torch.Generator().manual_seed(0)
    x_r, x_c = (
        sample_induction(args.pairs, gen, vocab=tf.cfg["vocab"], seq_len=tf.cfg["n_ctx"]).tokens for _ in range(2)
    )

    def edge_run(executor, workers):
        return scale.edge_effects("induction-attn2l", x_r, x_c, shard=8, executor=executor, workers=workers)[1]

    figures["edges"] = bench("edges", edge_run, np.testing.assert_array_equal)
    figures["config"] = {
        "inputs": len(x),
        "samples": args.samples,
        "sigmas": len(sig),
        "pairs": args.pairs,
        "cpu_count": os.cpu_count(),
        "load_average_end": os.getloadavg()[0],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
