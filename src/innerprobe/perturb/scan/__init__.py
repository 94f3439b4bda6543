"""The backdoor scan: APEX as the screen, trigger synthesis as the confirmation (docs/scan.md).

Stages, each a reusable statistic that scores every class against the model's other classes:

* :mod:`.screen` (a): the APEX large-noise class histogram and sink statistic (Ren, Luo, Li 2026,
  arXiv 2602.03586, claim D), noise at the input by default;
* :mod:`.triggers` (b): data-free maximum-margin trigger synthesis per class (MM-BD, Wang et al. 2022);
* :mod:`.cleanse` (c, with clean inputs): the smallest trigger per class and its anomaly index
  (Neural Cleanse, Wang et al. 2019);
* :mod:`.natural` (d, with clean reference models of the family): the natural-feature check of K-Arm
  (Shen et al. 2021): does each class's smallest trigger also flip clean models?
* :mod:`.verdict`: a calibrated probability that the model is backdoored, and a named class only
  when independent stages agree.

>>> res = scan(model, x)                        # x: clean inputs [N, ...]; scan(model, shape=(1, 8, 8)) is data-free
>>> res.data["suspect"], res.data["probability"], res.tables["classes"]
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ...core.checks import check_inputs, check_int, check_model, check_seed
from ...errors import ConfigError, did_you_mean
from ...results import Result, provenance
from . import natural as _natural
from . import reference as R
from . import verdict as V
from .cleanse import cleanse
from .screen import (
    HIST_SIGMAS,
    SITE_KEYWORDS,
    all_hidden,
    first_hidden,
    input_site,
    last_hidden,
    robust_z,
    scan_sites,
    screen,
)
from .triggers import triggers

__all__ = [
    "METHODS",
    "SITE_KEYWORDS",
    "all_hidden",
    "backdoor_scan",
    "evidence",
    "first_hidden",
    "input_site",
    "last_hidden",
    "out_of_domain",
    "robust_z",
    "scan",
    "scan_sites",
]

#: method -> the stages it runs
METHODS = {
    "full": ("screen", "triggers", "cleanse", "natural"),
    "apex": ("screen",),
    "triggers": ("triggers",),
    "cleanse": ("cleanse",),
    "natural": ("cleanse", "natural"),
}
NEEDS_DATA = ("screen", "cleanse", "natural")
#: stages that run only with clean reference models of the model's family (``reference_models``)
NEEDS_MODELS = ("natural",)


def _check(model, x, shape, method, seed, reference_models=None):
    check_model(model)
    if method not in METHODS:
        raise ConfigError(
            f"unknown scan method {method!r}", hint=f"{did_you_mean(method, METHODS)}; methods: {', '.join(METHODS)}"
        )
    if method == "natural" and reference_models is None:
        raise ConfigError(
            "scan method 'natural' needs clean reference models of the model's family",
            hint="pass reference_models=innerprobe.zoo.backdoor_set.reference_models('digits-cnn') (or your own)",
        )
    if reference_models is not None and not set(METHODS[method]) & set(NEEDS_MODELS):
        raise ConfigError(
            f"reference_models are not used by scan method {method!r}", hint="use method='full' or 'natural'"
        )
    if reference_models is not None:
        _natural.as_list(reference_models)
    if reference_models is not None and x is None:
        raise ConfigError(
            "reference_models need clean inputs: the natural-feature check stamps triggers on them",
            hint="pass x (clean inputs), or leave reference_models out for a data-free scan",
        )
    if x is None:
        if any(s in NEEDS_DATA for s in METHODS[method]) and method != "full":
            raise ConfigError(
                f"scan method {method!r} needs clean inputs", hint="pass x (clean inputs), or method='triggers'"
            )
        if shape is None:
            raise ConfigError(
                "a data-free scan needs the input shape", hint="pass shape=(1, 8, 8) (one input, no batch axis) or x"
            )
    else:
        check_inputs(x, model, floating=True, min_dim=2)
    check_seed(seed)


def _check_ranges(samples, restarts, steps, n_cleanse):
    check_int(samples, "samples (K)", lo=1, hi=4096, hint="noisy passes per input and sigma, e.g. 16")
    check_int(restarts, "restarts", lo=1, hi=256, hint="random starts per class for the maximum-margin search, e.g. 4")
    check_int(steps, "steps", lo=1, hi=100_000, hint="optimisation steps per trigger search, e.g. 150")
    check_int(
        n_cleanse, "n_cleanse", lo=1, hi=100_000, hint="clean inputs used by the smallest-trigger search, e.g. 32"
    )


#: stage options, their defaults, and the stages that read them (an option no running stage reads is refused)
DEFAULTS = {"sites": "input", "samples": 16, "sigmas": HIST_SIGMAS, "restarts": 4, "steps": 150, "n_cleanse": 32}
USED_BY = {
    "sites": ("screen",),
    "samples": ("screen",),
    "sigmas": ("screen",),
    "restarts": ("triggers",),
    "steps": ("triggers", "cleanse"),
    "n_cleanse": ("cleanse",),
}


def _options(given: dict, stages) -> dict:
    for k, v in given.items():
        if v is not None and not set(USED_BY[k]) & set(stages):
            raise ConfigError(
                f"option {k}={v!r} is not used by the stages that run ({', '.join(stages)})",
                hint=f"{k} applies to the {' / '.join(USED_BY[k])} stage; drop it or pick a method that runs it",
            )
    return {k: DEFAULTS[k] if v is None else v for k, v in given.items()}


def scan(
    model,
    x: torch.Tensor | None = None,
    *,
    method: str = "full",
    shape=None,
    input_range=None,
    sites=None,
    samples: int | None = None,
    sigmas=None,
    restarts: int | None = None,
    steps: int | None = None,
    n_cleanse: int | None = None,
    seed: int = 0,
    threshold: float | None = None,
    min_agree: int | None = None,
    calibration: dict | None = None,
    reference: str | None = None,
    reference_models=None,
    class_names=None,
    model_name: str | None = None,
) -> Result:
    """Scan ``model`` for a backdoor; returns a Result (kind ``backdoor-scan``).

    ``x``: clean inputs [N, ...] (optional: without them only the data-free stage runs, and ``shape``
    gives one input's shape). ``input_range``: (lo, hi) of valid inputs (default: the range of ``x``,
    else (0, 1)). ``sites``: where the APEX screen's noise enters (a keyword of :data:`SITE_KEYWORDS`
    or a site spec). An option that no running stage reads is refused, never ignored.
    ``data``: ``suspect`` (class index or None), ``probability`` (calibrated on the eval set's tuning
    splits), ``agree`` (stages ranking the top class first), per-stage ``stages`` (top class, top
    score, seconds) and ``seconds``; ``tables['classes']`` one row per class; ``arrays``: the
    synthesised triggers (``mm_images``, ``nc_mask``, ``nc_pattern``). ``reference``: the name of a
    class reference of clean models of the model's family (:mod:`.reference`, e.g. ``'digits-cnn'``);
    the verdict then reads each class against how that class looks in clean models (docs/scan.md).
    ``reference_models``: clean models of the model's family (same inputs and classes); with them the
    natural-feature check runs (:mod:`.natural`: does each class's smallest trigger flip them too?),
    e.g. ``innerprobe.zoo.backdoor_set.reference_models('digits-cnn')``. Every model is left as it came.
    """
    _check(model, x, shape, method, seed, reference_models)
    cal, ref = _calibration(calibration, method, x is None, reference, reference_models is not None)
    ev = evidence(
        model,
        x,
        method=method,
        shape=shape,
        input_range=input_range,
        sites=sites,
        samples=samples,
        sigmas=sigmas,
        restarts=restarts,
        steps=steps,
        n_cleanse=n_cleanse,
        seed=seed,
        reference_models=reference_models,
    )
    if ref is not None:
        _read_against(ev, ref)
    d = V.decide(ev["features"], cal, threshold=threshold, min_agree=min_agree)
    d["reference"] = reference
    d["out_of_domain"] = out_of_domain(model, x, ev["classes"], cal) + (
        R.transfer_reason(ev["features"], ref) if ref is not None else []
    )
    if d["out_of_domain"] and threshold is None:
        d["suspect"] = None  # the calibrated probability does not hold here: ranking only, unless the user sets P
    C = ev["classes"]
    names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    if len(names) != C:
        raise ConfigError(f"{len(names)} class names for a model with {C} outputs", hint="pass one name per class")
    return _result(model, model_name, names, ev, d, cal, method)


def evidence(
    model,
    x: torch.Tensor | None = None,
    *,
    method: str = "full",
    shape=None,
    input_range=None,
    sites=None,
    samples: int | None = None,
    sigmas=None,
    restarts: int | None = None,
    steps: int | None = None,
    n_cleanse: int | None = None,
    seed: int = 0,
    reference_models=None,
) -> dict:
    """Run the method's stages (the natural-feature check only with ``reference_models``).

    Returns ``{"features": {name: [C]}, "stages": {stage: info}, "arrays", "classes", "seconds", "config"}``.
    """
    _check(model, x, shape, method, seed, reference_models)
    stages = [
        s
        for s in METHODS[method]
        if (x is not None or s not in NEEDS_DATA) and (reference_models is not None or s not in NEEDS_MODELS)
    ]
    o = _options(
        {
            "sites": sites,
            "samples": samples,
            "sigmas": sigmas,
            "restarts": restarts,
            "steps": steps,
            "n_cleanse": n_cleanse,
        },
        stages,
    )
    if x is not None and n_cleanse is not None and n_cleanse > len(x):
        raise ConfigError(
            f"n_cleanse={n_cleanse} but only {len(x)} clean inputs were given", hint=f"use n_cleanse <= {len(x)}"
        )
    _check_ranges(o["samples"], o["restarts"], o["steps"], o["n_cleanse"])
    if "screen" in stages:
        scan_sites(model, o["sites"])  # refuse a bad site before any work
    lo, hi = _range(x, input_range)
    shape = tuple(x.shape[1:]) if x is not None else tuple(int(s) for s in shape)
    C = _classes(model, x, shape)
    refs = _natural.check_models(reference_models, C, x) if "natural" in stages else None
    t_all = time.perf_counter()
    feats, info, arrays = {}, {}, {}
    for st in stages:
        t0 = time.perf_counter()
        z = _stage(st, model, x, shape, C, lo, hi, o, seed, feats, arrays, info, refs)
        bad = sorted(k for k, v in feats.items() if not np.all(np.isfinite(np.asarray(v, float))))
        if bad:
            raise ConfigError(
                f"the scan's {st} stage gave non-finite class statistics ({', '.join(bad)})",
                hint="check that the model's logits are finite on the inputs and on the input range given",
            )
        info[st].update(top=int(np.argmax(z)), score=float(np.max(z)), seconds=time.perf_counter() - t0)
    config = {
        **o,
        "sites": str(o["sites"]),
        "sigmas": [float(v) for v in o["sigmas"]],
        "input_range": [lo, hi],
        "seed": seed,
        "method": method,
        "stages": stages,
        "reference_models": 0 if refs is None else len(refs),
    }
    return {
        "features": feats,
        "stages": info,
        "arrays": arrays,
        "classes": C,
        "seconds": time.perf_counter() - t_all,
        "config": config,
    }


def _read_against(ev: dict, ref: dict) -> None:
    """Add the features read against the class reference; each stage then reports the one the verdict reads."""
    ev["features"].update(R.relative(ev["features"], ref))
    for info in ev["stages"].values():
        name = info.get("statistic", "") + R.SUFFIX
        if name in ev["features"]:
            v = np.asarray(ev["features"][name])
            info.update(statistic=name, top=int(np.argmax(v)), score=float(np.max(v)))


def _stage(st, model, x, shape, C, lo, hi, o, seed, feats, arrays, info, refs=None) -> np.ndarray:
    if st == "screen":
        r = screen(model, x, sites=o["sites"], samples=o["samples"], sigmas=o["sigmas"], seed=seed)
        feats.update(hist_z=r["hist_z"], sink_z=r["sink_z"])
        arrays["hist_share"] = r["hist_share"]
        info[st] = {"sites": r["sites"], "statistic": "hist_z"}
        return r["hist_z"]
    if st == "triggers":
        r = triggers(
            model,
            shape,
            C,
            lo=lo,
            hi=hi,
            restarts=o["restarts"],
            steps=o["steps"],
            seed=seed,
            dtype=_dtype(model),
            device=_device(model),
            x=x,
        )
        feats["mm_z"], arrays["mm_images"], arrays["mm_margin"] = r["mm_z"], r["images"].numpy(), r["margin"]
        if "local_margin" in r:  # with clean inputs: the local maximum margin around them (docs/scan.md)
            feats["mm_local_z"], arrays["mm_local_margin"] = r["z"], r["local_margin"]
        info[st] = {"p_value": r["p_value"], "statistic": "mm_local_z" if "local_margin" in r else "mm_z"}
        return r["z"]
    if st == "natural":  # after cleanse: its triggers, stamped on the clean inputs of the reference models
        mask, pattern = (torch.as_tensor(arrays[k], device=x.device) for k in ("nc_mask", "nc_pattern"))
        r = _natural.natural(model, refs, x, feats["nc_gap"], mask, pattern)
        feats.update(
            nat_odds=r["nat_odds"], nat_gap=r["nat_gap"], nat_transfer=r["transfer"], nat_window=r["nat_window"]
        )
        seen = _natural.architecture_seen(model, refs)
        info[st] = {"statistic": "nat_odds", "reference_models": len(refs), "architecture_seen": seen}
        return r["nat_odds"]
    r = cleanse(model, x[: o["n_cleanse"]], C, lo=lo, hi=hi, steps=o["steps"], seed=seed)
    feats.update(nc_z=r["z"], nc_gap=r["gap"], natural=r["natural"])
    arrays.update(nc_l1=r["l1"], nc_mask=r["mask"].numpy(), nc_pattern=r["pattern"].numpy())
    info[st] = {"statistic": "nc_gap"}
    return r["gap"]  # the statistic the verdict reads


#: the share of the classes a balanced model would show on the clean inputs that the model must predict
MIN_COVERAGE = 0.7


def out_of_domain(model, x, num_classes: int, cal: dict) -> list[str]:
    """Why the calibration does not hold for this model and these inputs (empty when it does); docs/scan.md.

    The calibration's ``domain`` (written by ``write_calibration`` from the tuning models) gives the
    class count it was fitted on and, on the models' own clean inputs, the fewest distinct predicted
    classes and the largest share of one predicted class. Outside it: another class count; fewer
    distinct predicted classes than :data:`MIN_COVERAGE` times what a model with balanced predictions
    would show on the same number of inputs; more than twice the tuning models' largest share in one
    class. An untrained or collapsed model is outside it, and so is a model with more classes: the
    maximum over more (or degenerate) classes is larger by chance, so P would be too high.
    """
    dom = cal.get("domain")
    if not dom:
        return []
    out = []
    if num_classes != dom["num_classes"]:
        out.append(f"{num_classes} classes; the calibration was fitted on {dom['num_classes']}-class models")
    if x is not None:
        from ...core.hooks import HookSession

        with HookSession(model, eval=True), torch.no_grad():
            y = model(x).argmax(1)
        counts = torch.bincount(y.flatten().cpu(), minlength=num_classes)
        cover, share = int((counts > 0).sum()), float(counts.max()) / max(len(y), 1)
        n = len(y)
        need = math.ceil(MIN_COVERAGE * num_classes * (1 - (1 - 1 / num_classes) ** n))
        if cover < need:
            out.append(
                f"the model predicts {cover} distinct classes on {n} clean inputs (needed: >= {need}; the tuning "
                f"models: >= {dom['min_coverage']} on {dom.get('n_inputs', '?')})"
            )
        if share > 2 * dom["max_share"]:
            out.append(
                f"{share:.0%} of the clean inputs go to one class (tuning models: <= {dom['max_share']:.0%}); "
                "is the model trained?"
            )
    return out


def _range(x, input_range):
    if input_range is not None:
        lo, hi = (float(v) for v in input_range)
    elif x is not None:
        lo, hi = float(x.min()), float(x.max())
    else:
        lo, hi = 0.0, 1.0
    if not hi > lo:
        raise ConfigError(f"input range ({lo}, {hi}) is empty", hint="pass input_range=(lo, hi) with hi > lo")
    return lo, hi


def _dtype(model):
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _device(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _classes(model, x, shape) -> int:
    from ...core.hooks import HookSession

    probe = x[:1] if x is not None else torch.zeros((1, *shape), dtype=_dtype(model), device=_device(model))
    with HookSession(model, eval=True), torch.no_grad():
        out = model(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 3:
        raise ConfigError(
            f"the scan needs logits [N, C] with C >= 3, got {getattr(out, 'shape', type(out).__name__)}",
            hint="wrap the model so it returns class logits",
        )
    return int(out.shape[1])


def _calibration(calibration, method, data_free, reference=None, natural_check=False):
    """``(method's calibration entry, class reference or None)`` from the calibration file (or ``calibration``)."""
    cal = calibration if calibration is not None else V.load_calibration()
    ref = R.lookup(cal, reference) if reference is not None else None
    key = V.calibration_key("triggers" if (method == "full" and data_free) else method, ref is not None, natural_check)
    if key not in cal:
        raise ConfigError(
            f"the scan calibration has no entry for method {key!r}",
            hint="re-run innerprobe.studies.apex_backdoor.write_calibration() (tuning splits only)",
        )
    return cal[key], ref


def _result(model, model_name, names, ev, d, cal, method) -> Result:
    suspect, feats, arrays = d["suspect"], ev["features"], ev["arrays"]
    data = {
        "method": method,
        "stages_run": ev["config"]["stages"],
        "suspect": suspect,
        "suspect_name": None if suspect is None else names[suspect],
        "probability": d["probability"],
        "top_class": d["top"],
        "agree": d["agree"],
        "threshold": d["threshold"],
        "min_agree": d["min_agree"],
        "stages": ev["stages"],
        "seconds": ev["seconds"],
        "out_of_domain": d["out_of_domain"],
        "reference": d["reference"],
        "validated_on": cal.get("validated_on", "unknown"),
        "calibration_fitted_on": cal.get("fitted_on", "unknown"),
    }
    rows = []
    for c, name in enumerate(names):
        rows.append(
            {
                "class": name,
                "index": c,
                "score": float(d["scores"][c]),
                **{k: float(np.asarray(v)[c]) for k, v in feats.items()},
                **({"max_margin": float(arrays["mm_margin"][c])} if "mm_margin" in arrays else {}),
                **({"trigger_l1": float(arrays["nc_l1"][c])} if "nc_l1" in arrays else {}),
            }
        )
    return Result(
        "backdoor-scan",
        data=data,
        tables={"classes": rows},
        arrays={"score": d["scores"], **arrays},
        provenance=provenance(
            seed=ev["config"]["seed"],
            model=model_name or type(model).__name__,
            sites=ev["config"]["sites"],
            config=ev["config"],
        ),
    )


def backdoor_scan(model, x=None, **kw) -> Result:
    """Alias of :func:`scan` (kept for callers of the earlier API)."""
    return scan(model, x, **kw)
