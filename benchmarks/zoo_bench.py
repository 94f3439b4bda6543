"""Time the whole zoo for one seed, in a scratch cache: wall and CPU seconds per recipe.

    .venv/bin/python benchmarks/zoo_bench.py [--seed 0] [--fashion-epochs N] [--skip NAME ...]

CPU seconds (process time, one training thread) are what an idle core would need; wall seconds
grow with whatever else shares the cores, so the load average is printed next to them.
``--fashion-epochs 1`` trains the 4-epoch Fashion recipes for one epoch and scales the time by
4/1 (marked "scaled"); their metrics then are not the recipe's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fashion-epochs", type=int, default=None, help="train Fashion recipes this many epochs and scale the time"
    )
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["INNERPROBE_TRAIN_THREADS"] = "1"
    os.environ.setdefault("INNERPROBE_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["INNERPROBE_CACHE"] = cache
        from innerprobe import zoo

        rows, t_all = [], time.perf_counter()
        for name, recipe in zoo.RECIPES.items():
            if name in args.skip:
                continue
            over, scale = {}, 1.0
            if (
                args.fashion_epochs
                and recipe.dataset == "fashion-mnist"
                and recipe.params["epochs"] > args.fashion_epochs
                and recipe.params.get("transform") != "random_labels"
            ):
                over, scale = {"epochs": args.fashion_epochs}, recipe.params["epochs"] / args.fashion_epochs
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            _, card = zoo.load(name, seed=args.seed, **over)
            wall = time.perf_counter() - t0
            rows.append(
                (
                    name,
                    card["train_seconds"] * scale,
                    (card.get("train_cpu_seconds") or float("nan")) * scale,
                    wall * scale,
                    (load0 + os.getloadavg()[0]) / 2,
                    "scaled" if scale != 1 else "",
                    card["all_floors_met"],
                )
            )
            print(
                f"{name:28s} train wall {rows[-1][1]:7.1f}s  train cpu {rows[-1][2]:7.1f}s  load {rows[-1][4]:4.1f} {rows[-1][5]} floors_met={card['all_floors_met']}",
                flush=True,
            )
        total_wall = sum(r[1] for r in rows)
        total_cpu = sum(r[2] for r in rows)
        print(
            f"whole zoo (seed {args.seed}, {len(rows)} recipes): train wall {total_wall:.0f}s, train cpu {total_cpu:.0f}s "
            f"(= {total_cpu / 60:.1f} min on one idle core), this run {time.perf_counter() - t_all:.0f}s wall"
        )


if __name__ == "__main__":
    main()
