"""Pullback cost vs a plain gradient, zennit's BetaSmooth composite and captum's GuidedBackprop.

    .venv/bin/python benchmarks/pullback_bench.py [--reps 15] [--batch 256] [--json PATH] [--only resnet_stem]

Same model, same batch, same target logit; methods are timed interleaved (round-robin) and the
median of ``--reps`` repetitions is reported, one thread. Rows:

* ``autograd.grad``      -- torch.autograd.grad of the summed target logit w.r.t. the input (the reference).
* ``pullback (rules)``   -- the same call inside ``apply_rules(model, pullback_rules(0.3))`` (the mechanism).
* ``ExcitationPullback`` -- the public API (input checks, state preservation, target handling included).
* ``pullback, hard max-pool`` -- ReLU gates only (the max-pool surrogate's share of the cost).
* ``zennit BetaSmooth``  -- zennit's Gradient attributor with BetaSmooth(beta=1/0.3) (ReLU gates only,
  so compare it with the hard max-pool row).
* ``captum GuidedBackprop``.

Models: ``digits_cnn`` (the zoo's digits-cnn), ``deep_cnn`` (8 conv-BN-ReLU, MaxPool2d(2)) and
``resnet_stem`` (Conv 7x7 s2 + BN + ReLU + MaxPool2d(3, 2, 1) + two basic blocks, each with one
in-place ReLU module called twice, on 3x64x64): the overlapping, padded soft max-pool.
``--json PATH`` writes ``{model: {"pullback_vs_grad": R, "relu_only_vs_grad": R2,
"pullback_detached_pool_vs_grad": R3, "api_vs_grad": R4, "grad_ms": ms}}``.

Target: pullback <= 1.3x autograd.grad. Ratios are printed whichever way they point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)


def deep_cnn(blocks: int = 8, width: int = 32, classes: int = 10) -> nn.Module:
    """A deeper synthetic CNN: ``blocks`` conv-BN-ReLU layers on 3x32x32, max-pool after every 3rd."""
    torch.manual_seed(0)
    layers, c = [], 3
    for i in range(blocks):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i % 3 == 2:
            layers.append(nn.MaxPool2d(2))
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # non-trivial BN statistics
        model.train()
        model(torch.rand(64, 3, 32, 32))
    return model.eval()


class BasicBlock(nn.Module):
    """ResNet basic block; one in-place ReLU module called twice (as torchvision's)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def resnet_stem(width: int = 16, classes: int = 10) -> nn.Module:
    """Conv 7x7 s2 + BN + ReLU + MaxPool2d(3, 2, 1) + 2 basic blocks + global average pool + linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        BasicBlock(width),
        BasicBlock(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )
    with torch.no_grad():
        model.train()
        model(torch.rand(32, 3, 64, 64))
    return model.eval()


def import_zennit():
    """zennit 0.5.1 imports torchvision (absent here) at import time; a stub names the two classes it wants."""
    try:
        import zennit  # noqa: F401
    except ModuleNotFoundError as e:
        if not str(e.name).startswith("torchvision"):
            return None
        tv, models, resnet = (
            types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet")
        )
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        tv.models, models.resnet = models, resnet
        for k in [k for k in sys.modules if k.startswith("zennit")]:
            del sys.modules[k]
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
        try:
            import zennit  # noqa: F401
        except Exception:
            return None
        finally:
            for k in ("torchvision", "torchvision.models", "torchvision.models.resnet"):
                sys.modules.pop(k, None)
    import zennit.attribution
    import zennit.composites

    return zennit


def bench(name: str, model: nn.Module, x: torch.Tensor, reps: int) -> list[dict]:
    from innerprobe.pullback import ExcitationPullback, apply_rules, pullback_rules

    target = 0
    rules = pullback_rules(0.3)
    n_classes = model(x[:1]).shape[-1]

    def plain():
        xi = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(model(xi)[:, target].sum(), xi)[0]

    def mech():
        xi = x.detach().clone().requires_grad_(True)
        with apply_rules(model, rules):
            return torch.autograd.grad(model(xi)[:, target].sum(), xi)[0]

    ep = ExcitationPullback(model, 0.3)

    def api():
        return ep.attribute(x, target)

    hard_pool = pullback_rules(0.3, pool="hard")
    detached = pullback_rules(0.3, pool_detach=True)

    def with_rules(r):
        def f():
            xi = x.detach().clone().requires_grad_(True)
            with apply_rules(model, r):
                return torch.autograd.grad(model(xi)[:, target].sum(), xi)[0]

        return f

    fns = {
        "autograd.grad": plain,
        "pullback (rules)": mech,
        "ExcitationPullback": api,
        "pullback, hard max-pool": with_rules(hard_pool),
        "pullback, detached pool": with_rules(detached),
    }
    zennit = import_zennit()
    if zennit is not None:
        comp = zennit.composites.BetaSmooth(beta_smooth=1 / 0.3)
        onehot = torch.eye(n_classes)[[target] * len(x)]

        def zen():
            with zennit.attribution.Gradient(model, comp) as attributor:
                return attributor(x.clone(), lambda out: onehot)[1]

        fns["zennit BetaSmooth"] = zen
    try:
        import warnings

        from captum.attr import GuidedBackprop

        gb = GuidedBackprop(model)

        def cap():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return gb.attribute(x.clone().requires_grad_(True), target=target)

        fns["captum GuidedBackprop"] = cap
    except ImportError:
        pass
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["autograd.grad"])
    rows = []
    for k, ts in times.items():
        med = statistics.median(ts)
        rows.append({"model": name, "method": k, "median_ms": 1000 * med, "ratio_vs_grad": med / base})
    return rows


def summary(rows: list[dict]) -> dict:
    """{model key: ratios} for --json (ratios of medians, measured in the same interleaved run)."""
    out = {}
    for key in dict.fromkeys(r["key"] for r in rows):
        by = {r["method"]: r for r in rows if r["key"] == key}
        out[key] = {
            "pullback_vs_grad": by["pullback (rules)"]["ratio_vs_grad"],
            "relu_only_vs_grad": by["pullback, hard max-pool"]["ratio_vs_grad"],
            "pullback_detached_pool_vs_grad": by["pullback, detached pool"]["ratio_vs_grad"],
            "api_vs_grad": by["ExcitationPullback"]["ratio_vs_grad"],
            "grad_ms": by["autograd.grad"]["median_ms"],
            "model": by["autograd.grad"]["model"],
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--batch",
        type=int,
        default=256,
        help="digits batch size (the CNNs use batch/4 (deep) and batch/8 (stem) images)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the ratios per model to this JSON file")
    ap.add_argument("--only", choices=("digits_cnn", "deep_cnn", "resnet_stem"), default=None)
    args = ap.parse_args(argv)
    rows = []
    if args.only in (None, "digits_cnn"):
        from innerprobe import zoo

        digits_model, _ = zoo.load("digits-cnn", seed=0)
        x = zoo.recipe_data("digits-cnn").x_test[: args.batch].float()
        rows += [{**r, "key": "digits_cnn"} for r in bench(f"digits-cnn (batch {len(x)})", digits_model, x, args.reps)]
    torch.manual_seed(1)
    if args.only in (None, "deep_cnn"):
        xd = torch.rand(max(1, args.batch // 4), 3, 32, 32)
        rows += [
            {**r, "key": "deep_cnn"}
            for r in bench(f"deep synthetic CNN, 8 conv-BN-ReLU (batch {len(xd)})", deep_cnn(), xd, args.reps)
        ]
    if args.only in (None, "resnet_stem"):
        xs = torch.rand(max(1, args.batch // 8), 3, 64, 64)
        rows += [
            {**r, "key": "resnet_stem"}
            for r in bench(f"ResNet stem 3x64x64, MaxPool2d(3,2,1) (batch {len(xs)})", resnet_stem(), xs, args.reps)
        ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps} (median, interleaved)")
    print(f"{'model':<56} {'method':<24} {'median ms':>10} {'x autograd.grad':>16}")
    for r in rows:
        print(f"{r['model']:<56} {r['method']:<24} {r['median_ms']:>10.2f} {r['ratio_vs_grad']:>16.2f}")
    for m in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == m}
        line = f"{m}: pullback/grad = {by['pullback (rules)']['ratio_vs_grad']:.2f}x (mechanism), {by['ExcitationPullback']['ratio_vs_grad']:.2f}x (API); target <= 1.3x"
        line += f"; ReLU gates only {by['pullback, hard max-pool']['ratio_vs_grad']:.2f}x; detached pool {by['pullback, detached pool']['ratio_vs_grad']:.2f}x"
        if "zennit BetaSmooth" in by:
            line += f"; pullback/zennit = {by['ExcitationPullback']['median_ms'] / by['zennit BetaSmooth']['median_ms']:.2f}x"
            line += f" (ReLU-gates-only pullback/zennit = {by['pullback, hard max-pool']['median_ms'] / by['zennit BetaSmooth']['median_ms']:.2f}x)"
        if "captum GuidedBackprop" in by:
            line += f"; pullback/captum GB = {by['ExcitationPullback']['median_ms'] / by['captum GuidedBackprop']['median_ms']:.2f}x"
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary(rows), indent=2))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
