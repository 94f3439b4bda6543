"""Class references for the backdoor scan: how each class looks in clean models of the same family (docs/scan.md).

A stage's class statistic (the smallest trigger's log gap, the local margin, ...) is relative to the
model's own classes, but classes are not alike: on 8x8 digits a small mask reaches class 1 in every
clean model, and on Fashion-MNIST class 8 (bag). Those natural easy classes set the threshold of a
scan that compares a class only with its model's other classes. A **reference** is the per-class
mean and variance of each statistic over clean models of one family (dataset and architecture
kind) of the eval set's tuning splits; the verdict can then read, per class, how unusual the
statistic is *for that class*,

    v_ref[c] = (v[c] - mean_c) / sqrt(var_c + median_k var_k),   then minus its median over classes,

the variance shrunk towards the median class so that a class with a near-constant statistic in
clean models does not blow up. This is the class-conditional null of the natural-feature check the
backdoor-scanning literature asks for (K-Arm, Shen et al. 2021, sec. 4.3: a "trigger" that a clean
model of the same family also has is a natural feature), computed from stored statistics of clean
models instead of re-running their trigger searches. A reference holds only for models of its
family: the scan uses one only when it is named, or on the CLI when ``--data`` is the family's
dataset (``auto``), and says which in its output.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ...errors import ConfigError, did_you_mean

#: suffix of a feature read against a reference
SUFFIX = "_ref"
#: the natural-feature check holds for a model whose classes' triggers move the reference models at least this
#: fraction of the least any clean model of the family showed (median over classes; docs/scan.md)
TRANSFER_FLOOR = 0.5


def kind(model: nn.Module) -> str:
    """``'cnn'`` when the model has a convolution, else ``'mlp'`` (the architecture part of a reference's name)."""
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return "cnn" if any(isinstance(m, conv) for m in model.modules()) else "mlp"


def name_for(dataset: str, model: nn.Module) -> str:
    """The reference name for a model trained on ``dataset``: ``'digits-cnn'``, ``'fashion-mnist-mlp'``, ..."""
    return f"{dataset}-{kind(model)}"


def stack(records: list[dict], names) -> dict:
    """``{feature: [n, C] array}`` of clean ``records`` (and ``"nat_transfer"`` when every record has it)."""
    if not records:
        raise ConfigError("a class reference needs at least one clean model", hint="pass clean records")
    have = [n for n in (*names, "nat_transfer") if n in names or all(n in r for r in records)]
    return {n: np.array([np.asarray(r[n], float) for r in records]) for n in dict.fromkeys(have)}


def fit_stacked(stacked: dict, names) -> dict:
    """:func:`fit` from :func:`stack`'s arrays (rows may be selected first, e.g. to leave seeds out)."""
    n_rec = len(next(iter(stacked.values())))
    out: dict = {"n": n_rec}
    for n in names:
        a = stacked[n]
        out[n] = {"mean": a.mean(0).tolist(), "var": (a.var(0) if len(a) > 1 else np.zeros(a.shape[1])).tolist()}
    if "nat_transfer" in stacked:  # the natural-feature check's domain (transfer_reason)
        out["min_median_transfer"] = float(np.median(stacked["nat_transfer"], axis=1).min())
    return out


def fit(records: list[dict], names) -> dict:
    """``{feature: {"mean": [C], "var": [C]}, "n": n}`` over the per-class features of clean ``records``."""
    return fit_stacked(stack(records, names), names)


def transfer_reason(features: dict, ref: dict) -> list[str]:
    """Why the natural-feature check does not hold for this model (empty when it does).

    A model that memorised noisy or random labels has tiny triggers to every class that move no clean
    model (median transfer near 0, where the family's clean models show >= ``min_median_transfer``):
    every class then looks like a backdoor's target, so no class may be named.
    """
    lo = ref.get("min_median_transfer")
    if lo is None or "nat_transfer" not in features:
        return []
    med = float(np.median(np.asarray(features["nat_transfer"], float)))
    if med >= TRANSFER_FLOOR * lo:
        return []
    return [
        f"the classes' smallest triggers move the clean reference models a median {med:.0%} of their inputs (clean "
        f"models of the family: >= {lo:.0%}); the model does not decide like them (memorised or random labels?)"
    ]


def relative(features: dict, ref: dict) -> dict:
    """``{name + '_ref': [C]}`` for every feature the reference holds (the equation in the module docstring)."""
    out = {}
    for n, st in ref.items():
        if not isinstance(st, dict) or n not in features:
            continue
        v, mu, var = (np.asarray(a, float) for a in (features[n], st["mean"], st["var"]))
        if v.shape != mu.shape:
            raise ConfigError(
                f"the class reference for {n} has {len(mu)} classes, the model {len(v)}",
                hint="use a reference fitted on models with the same classes, or reference=None",
            )
        z = (v - mu) / np.sqrt(var + max(float(np.median(var)), 1e-12))
        out[n + SUFFIX] = z - np.median(z)
    return out


def lookup(cal_root: dict, name: str) -> dict:
    """The named reference from the calibration file's ``references``; a one-line error naming the ones it has."""
    refs = cal_root.get("references", {})
    if name not in refs:
        have = ", ".join(sorted(refs)) or "none"
        raise ConfigError(
            f"no class reference {name!r} in the scan calibration",
            hint=f"{did_you_mean(name, refs)}; references: {have}, or none",
        )
    return refs[name]
