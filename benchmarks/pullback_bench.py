"""Pullback cost vs a plain gradient, zennit's BetaSmooth composite and captum's GuidedBackprop.

    .venv/bin/python benchmarks/pullback_bench.py [--reps 15] [--batch 256]

Same model, same batch, same target logit; methods are timed interleaved (round-robin) and the
median of ``--reps`` repetitions is reported, one thread. Rows:

* ``autograd.grad``      -- torch.autograd.grad of the summed target logit w.r.t. the input (the reference).
* ``pullback (rules)``   -- the same call inside ``apply_rules(model, pullback_rules(0.3))`` (the mechanism).
* ``ExcitationPullback`` -- the public API (input checks, state preservation, target handling included).
* ``pullback, hard max-pool`` -- ReLU gates only (the max-pool surrogate's share of the cost).
* ``zennit BetaSmooth``  -- zennit's Gradient attributor with BetaSmooth(beta=1/0.3) (ReLU gates only,
  so compare it with the hard max-pool row).
* ``captum GuidedBackprop``.

Target: pullback <= 1.3x autograd.grad. Ratios are printed whichever way they point.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

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


def import_zennit():
    """zennit 0.5.1 imports torchvision (absent here) at import time; a stub names the two classes it wants."""
    try:
        import zennit  # noqa: F401
    except ModuleNotFoundError as e:
        if not str(e.name).startswith("torchvision"):
            return None
        tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet"))
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

    def mech_hard():
        xi = x.detach().clone().requires_grad_(True)
        with apply_rules(model, hard_pool):
            return torch.autograd.grad(model(xi)[:, target].sum(), xi)[0]

    fns = {"autograd.grad": plain, "pullback (rules)": mech, "ExcitationPullback": api, "pullback, hard max-pool": mech_hard}
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256, help="digits batch size (the deep CNN uses batch/4 images of 3x32x32)")
    args = ap.parse_args(argv)
    from innerprobe import zoo

    digits_model, _ = zoo.load("digits-cnn", seed=0)
    x = zoo.recipe_data("digits-cnn").x_test[: args.batch].float()
    rows = bench(f"digits-cnn (batch {len(x)})", digits_model, x, args.reps)
    torch.manual_seed(1)
    xd = torch.rand(max(1, args.batch // 4), 3, 32, 32)
    rows += bench(f"deep synthetic CNN, 8 conv-BN-ReLU (batch {len(xd)})", deep_cnn(), xd, args.reps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, reps {args.reps} (median, interleaved)")
    print(f"{'model':<48} {'method':<24} {'median ms':>10} {'x autograd.grad':>16}")
    for r in rows:
        print(f"{r['model']:<48} {r['method']:<24} {r['median_ms']:>10.2f} {r['ratio_vs_grad']:>16.2f}")
    for m in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == m}
        line = f"{m}: pullback/grad = {by['pullback (rules)']['ratio_vs_grad']:.2f}x (mechanism), {by['ExcitationPullback']['ratio_vs_grad']:.2f}x (API); target <= 1.3x"
        line += f"; ReLU gates only {by['pullback, hard max-pool']['ratio_vs_grad']:.2f}x"
        if "zennit BetaSmooth" in by:
            line += f"; pullback/zennit = {by['ExcitationPullback']['median_ms'] / by['zennit BetaSmooth']['median_ms']:.2f}x"
            line += f" (ReLU-gates-only pullback/zennit = {by['pullback, hard max-pool']['median_ms'] / by['zennit BetaSmooth']['median_ms']:.2f}x)"
        if "captum GuidedBackprop" in by:
            line += f"; pullback/captum GB = {by['ExcitationPullback']['median_ms'] / by['captum GuidedBackprop']['median_ms']:.2f}x"
        print(line)
    return rows


if __name__ == "__main__":
    main()
