"""The ``apex-backdoor`` study: the paper's observable and the backdoor scan, measured on held-out models.

APEX (Ren, Luo, Li 2026, arXiv 2602.03586, claim D): at large activation noise a backdoored model's
predictions concentrate on its target class. This study measures that observable on the backdoor
eval set (:mod:`innerprobe.zoo.backdoor_set`) and evaluates the scan (docs/scan.md) the way TrojAI
does: every threshold and the probability calibration are fitted on the tuning splits only
(:data:`~innerprobe.zoo.backdoor_set.TUNING_SPLITS`: dev ... dev8, seeds 0-773), and the figures are
reported separately for the tuning models (in-sample) and for the **held-out** seeds 800-873 (never tuned on):
TPR (right class named), wrong-class rate and FPR with Clopper-Pearson intervals, ROC-AUC and cross-entropy
of the probability, seconds per model;
for the full scan (with and without the class reference and the natural-feature check) and for each
stage alone (the APEX screen alone is the paper's observable used as a detector).

``run(out, seeds=3, quick=False)`` (``seeds`` is unused: the eval set fixes its seeds); ``quick``
scans four cached or quickly trained digits models with the shipped calibration.
``write_calibration()`` refits the shipped ``perturb/scan/calibration.json`` from the tuning splits.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..core.stats import proportion, t_interval
from ..errors import ConfigError
from ..perturb.scan import METHODS, evidence
from ..perturb.scan import reference as R
from ..perturb.scan import verdict as V
from ..report.sections import Section
from ..results import Result, provenance, row
from ..zoo import backdoor_set as bs
from ..zoo import cache_root

#: a poisoned model whose attack succeeds on fewer than half the triggered test inputs has no working backdoor
MIN_ATTACK_SUCCESS = 0.5
N_INPUTS = 64
#: per stage, the version of its cached records: bump one when that stage's code changes, and only that stage's
#: records are recomputed (screen 1 is the first round's; triggers / cleanse 2 are this round's)
STAGE_VERSIONS = {"screen": 1, "triggers": 2, "cleanse": 2, "natural": 2}
#: the scan a user gets on a model of a known family (the CLI's --reference auto with --data digits / fashion-mnist)
DEFAULT = V.calibration_key("full", True, True)
#: the scan method that runs one stage alone (the natural-feature check reruns the cleanse stage it reads)
STAGE_METHOD = {"screen": "apex", "triggers": "triggers", "cleanse": "cleanse", "natural": "natural"}
#: the features a stage's record keeps (the natural stage's run also returns the cleanse stage's)
STAGE_FEATURES = {"natural": ("nat_odds", "nat_gap", "nat_transfer", "nat_window")}


# ----------------------------------------------------------------------------- evidence per member (cached)


def _cache_path(key: list) -> Path:
    d = Path(cache_root()) / "scan-eval"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def _stage_path(m: bs.Member, stage: str) -> Path:
    return _cache_path([stage, STAGE_VERSIONS[stage], m.recipe, m.seed, m.overrides, N_INPUTS])


def _legacy_screen(m: bs.Member) -> dict | None:
    """The screen's part of a first-round record (all stages in one file, version 1), if cached."""
    if STAGE_VERSIONS["screen"] != 1:
        return None
    p = _cache_path([1, m.recipe, m.seed, m.overrides, N_INPUTS])
    try:
        old = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    f = old["features"]
    return {
        "features": {"hist_z": f["hist_z"], "sink_z": f["sink_z"]},
        "hist_share": old["hist_share"],
        "seconds": old["stage_seconds"]["screen"],
        "meta": {k: old[k] for k in ("attack_success", "test_accuracy")},
    }


def _write(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)


def stage_record(m: bs.Member, stage: str, *, compute: bool = True, loader=None) -> dict | None:
    """One stage's per-class features for one member (default settings, seed 0), with seconds; cached on disk."""
    path = _stage_path(m, stage)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        pass
    except ValueError:
        path.unlink(missing_ok=True)
    rec = _legacy_screen(m) if stage == "screen" else None
    if rec is None:
        if not compute:
            return None
        model, card, x = (loader or _load)(m)
        refs = _reference_models(m) if stage == "natural" else None
        ev = evidence(model, x, method=STAGE_METHOD[stage], reference_models=refs)
        keep = STAGE_FEATURES.get(stage, ev["features"])
        rec = {
            "features": {k: np.asarray(ev["features"][k], float).tolist() for k in keep},
            "seconds": ev["stages"][stage]["seconds"] if stage == "natural" else ev["seconds"],
            "meta": {k: card["metrics"].get(k) for k in ("attack_success", "test_accuracy")},
        }
        if "hist_share" in ev["arrays"]:
            rec["hist_share"] = np.asarray(ev["arrays"]["hist_share"]).tolist()
    _write(path, rec)
    return rec


def _load(m: bs.Member):
    model, card = bs.load(m)
    return model, card, bs.clean_inputs(m, N_INPUTS, seed=1)


_REFERENCE_MODELS: dict = {}


def _reference_models(m: bs.Member) -> list:
    """The natural-feature check's clean reference models for ``m``: its family's, never its own seed's."""
    fam = bs.reference_name(m.recipe)
    if fam not in _REFERENCE_MODELS:
        _REFERENCE_MODELS[fam] = {r.seed: bs.load(r)[0] for r in bs.reference_members(fam)}
    return [net for seed, net in _REFERENCE_MODELS[fam].items() if seed != m.seed]


def record(m: bs.Member, *, compute: bool = True) -> dict | None:
    """All stages' per-class features for one member, with seconds per stage (each stage cached on its own).

    ``compute=False``: None when a stage's record is not cached (nothing is trained or scanned).
    """
    parts, memo = {}, {}

    def loader(member):  # the model and inputs are loaded once, and only if a stage needs computing
        if "v" not in memo:
            memo["v"] = _load(member)
        return memo["v"]

    for stage in STAGE_VERSIONS:
        parts[stage] = stage_record(m, stage, compute=compute, loader=loader)
        if parts[stage] is None:
            return None
    meta = parts["screen"]["meta"]
    return {
        "key": m.key,
        "recipe": m.recipe,
        "seed": m.seed,
        "split": m.split,
        "family": m.family,
        "target": m.target,
        "rate": m.rate,
        **meta,
        "seconds": sum(p["seconds"] for p in parts.values()),
        "stage_seconds": {st: p["seconds"] for st, p in parts.items()},
        "features": {k: v for p in parts.values() for k, v in p["features"].items()},
        "hist_share": parts["screen"]["hist_share"],
    }


def effective(rec: dict) -> bool:
    """Clean twins, and poisoned models whose attack works (attack success >= MIN_ATTACK_SUCCESS)."""
    return rec["target"] is None or (rec["attack_success"] or 0.0) >= MIN_ATTACK_SUCCESS


def _fit_rows(recs):
    return [{**r["features"], "target": r["target"]} for r in recs]


# ----------------------------------------------------------------------------- class references (docs/scan.md)

#: the per-class statistics a class reference holds
REF_FEATURES = ("nc_gap", "mm_local_z", "mm_z", "hist_z", "sink_z", "nat_gap", "nat_odds", "nat_window")


def _family(rec: dict) -> str:
    return bs.reference_name(rec["recipe"])


def references(recs: list[dict]) -> dict:
    """One class reference per model family (``'digits-cnn'``, ...) from the clean records among ``recs``."""
    out = {}
    for fam in sorted({_family(r) for r in recs}):
        clean = [r["features"] for r in recs if r["target"] is None and _family(r) == fam]
        if clean:
            out[fam] = R.fit(clean, REF_FEATURES)
    return out


def _read_against(rec: dict, ref: dict) -> dict:
    """The record with its features read against ``ref``, and why the natural-feature check would not hold for it
    (``transfer_reason``: the scan then names no class, :func:`innerprobe.perturb.scan.reference.transfer_reason`)."""
    rel = {k: v.tolist() for k, v in R.relative(rec["features"], ref).items()}
    return {**rec, "features": {**rec["features"], **rel}, "transfer_reason": R.transfer_reason(rec["features"], ref)}


def with_reference(recs: list[dict], refs: dict) -> list[dict]:
    """Records with their features also read against their family's reference (``refs`` from :func:`references`)."""
    missing = sorted({_family(r) for r in recs} - set(refs))
    if missing:
        raise ConfigError(f"no class reference for {', '.join(missing)}", hint="refit with write_calibration()")
    return [_read_against(r, refs[_family(r)]) for r in recs]


class _CleanPool:
    """The clean records of a pool stacked per family: a reference that leaves seeds out is a row selection."""

    def __init__(self, pool: list[dict], names=REF_FEATURES):
        self.stacked, self.seeds, self.names = {}, {}, tuple(names)
        for fam in sorted({_family(p) for p in pool if p["target"] is None}):
            clean = [p for p in pool if p["target"] is None and _family(p) == fam]
            self.stacked[fam] = R.stack([p["features"] for p in clean], self.names)
            self.seeds[fam] = np.array([p["seed"] for p in clean])

    def reference(self, fam: str, drop) -> dict:
        """The family's class reference from its clean records of seeds not in ``drop``."""
        if fam not in self.stacked:
            raise ConfigError(f"no clean tuning records of family {fam}", hint="every family needs clean twins")
        keep = ~np.isin(self.seeds[fam], list(drop))
        return R.fit_stacked({n: a[keep] for n, a in self.stacked[fam].items()}, self.names)


def _leave_seed_out_reference(recs: list[dict], pool, drop=()) -> list[dict]:
    """``recs`` read against references fitted on ``pool``'s clean records of other seeds (no model sees itself).

    ``pool``: records or a :class:`_CleanPool`; ``drop``: seeds also left out of every reference (a fold's).
    """
    pool = pool if isinstance(pool, _CleanPool) else _CleanPool(pool)
    return [_read_against(r, pool.reference(_family(r), {r["seed"], *drop})) for r in recs]


# ----------------------------------------------------------------------------- calibration (dev only)


def _tuning_name() -> str:
    return " + ".join(f"{sp} ({bs.seed_range(sp)})" for sp in bs.TUNING_SPLITS)


def calibrate(dev: list[dict]) -> dict:
    """Per method: logistic class model + Platt map fitted on tuning records; threshold and agreement chosen there.

    The full scan's rule (probability threshold, stages that must agree) is :func:`choose_rule`'s, by
    leave-one-seed-out on the same tuning records; a stage alone keeps P >= 0.5 and no agreement rule.
    """
    dev = [r for r in dev if effective(r)]
    n_bd = sum(r["target"] is not None for r in dev)
    fitted_on = f"backdoor eval set, tuning splits {_tuning_name()}: {n_bd} backdoored + {len(dev) - n_bd} clean models"
    cal, rows = {}, {ref: _fit_rows(_leave_seed_out_reference(dev, dev) if ref else dev) for ref in (False, True)}
    for method, ref, nat in ENTRIES:
        c = V.fit(rows[ref], V.method_features(method, ref, nat))
        full = method == "full"
        rule = choose_rule(leave_one_seed_out(dev, method, reference=ref, natural=nat)) if full else {"threshold": 0.5}
        c.update({"min_agree": 1, **rule, "fitted_on": fitted_on})
        cal[V.calibration_key(method, ref, nat)] = c
    cal["references"] = references(dev)
    cal["reference_models"] = {
        fam: [m.key for m in bs.reference_members(fam)] for fam in sorted({_family(r) for r in dev})
    }
    return cal


#: the calibration's entries: (method, class reference?, natural-feature check?); the check runs in the full scan
#: and in the ``natural`` method (its own features), so only the full scan has entries without and with it
ENTRIES = tuple((m, ref, False) for ref in (False, True) for m in V.FEATURES) + tuple(
    ("full", ref, True) for ref in (False, True)
)


def _entry(key: str) -> tuple[str, bool, bool]:
    """``'full+reference+natural'`` -> ``('full', True, True)``."""
    method, *flags = key.split("+")
    return method, "reference" in flags, "natural" in flags or method == "natural"


def _stages(key: str) -> list[str]:
    """The stages a calibration entry's scan runs (the natural-feature check only where the entry reads it)."""
    method, _, nat = _entry(key)
    return [st for st in METHODS[method] if st != "natural" or nat]


#: probability thresholds the full scan's rule is chosen from
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: the full scan names a class only when this many independent stages rank it first (a design choice, issue 13)
FULL_MIN_AGREE = 2


#: the full scan's threshold clears the largest leave-one-seed-out P of a clean tuning model by this much
#: (round 6; docs/scan.md: a threshold at the edge of the clean tail named a clean model on round 4's fresh split)
MARGIN = 0.1


def choose_rule(ds: list[dict], min_agree: int = FULL_MIN_AGREE, margin: float = MARGIN) -> dict:
    """The lowest of :data:`THRESHOLDS` at least ``margin`` above every clean model's P in decisions ``ds``.

    Only clean models whose stages agree (``n_agree >= min_agree``) count: the others are never named.
    The lowest such threshold names the most right classes with no false alarm and a margin; with
    none, the highest is taken.
    """
    clean = max(
        (d["p"] for d in ds if d["target"] is None and d["n_agree"] >= min_agree and not d.get("out_of_domain")),
        default=0.0,
    )
    ok = [t for t in THRESHOLDS if t >= clean + margin - 1e-9]
    return {"threshold": min(ok, default=THRESHOLDS[-1]), "min_agree": min_agree, "clean_max_p": round(clean, 4)}


def domain() -> dict:
    """What the tuning models look like on their clean inputs: class count, fewest predicted classes, largest share.

    The scan refuses to name a class outside it (:func:`innerprobe.perturb.scan.out_of_domain`).
    """
    import torch

    cover, share, classes = [], [], set()
    for m in (m for sp in bs.TUNING_SPLITS for m in bs.members(sp)):
        model, _, x = _load(m)
        with torch.no_grad():
            out = model(x)
        counts = torch.bincount(out.argmax(1), minlength=out.shape[1])
        classes.add(int(out.shape[1]))
        cover.append(int((counts > 0).sum()))
        share.append(float(counts.max()) / len(x))
    if len(classes) != 1:
        raise ConfigError(f"tuning models with {sorted(classes)} classes", hint="one class count per calibration")
    return {"num_classes": classes.pop(), "min_coverage": min(cover), "max_share": max(share), "n_inputs": N_INPUTS}


def _methods(cal: dict) -> list[str]:
    """The calibration's method entries (``'full'``, ``'full+reference'``, ...), not its ``references``."""
    return [k for k in cal if k not in ("references", "reference_models")]


def write_calibration(path: Path | None = None, cached_only: bool = False) -> Path:
    """Refit the shipped calibration from the tuning splits and record the held-out rates it was validated with."""
    dev = [record(m) for sp in bs.TUNING_SPLITS for m in bs.members(sp)]
    cal = calibrate(dev)
    dom = domain()
    for key in _methods(cal):
        cal[key]["domain"] = dom
    held = [r for r in (record(m, compute=not cached_only) for m in bs.members("held-out")) if r is not None]
    held = with_reference([r for r in held if effective(r)], cal["references"])
    for key in _methods(cal):
        c = cal[key]
        s = summary(held, c, key)
        c["validated_on"] = (
            f"held-out split (seeds {bs.seed_range('held-out')}) of the backdoor eval set ({s['n_bd']} backdoored + "
            f"{s['n_clean']} clean small digits / Fashion-MNIST MLPs and CNNs, 4 trigger families): right class named "
            f"{s['tp']}/{s['n_bd']}, false alarms {s['fp']}/{s['n_clean']}; nothing beyond that is validated"
        )
    p = Path(path) if path is not None else V.CALIBRATION_FILE
    p.write_text(json.dumps(cal, indent=1) + "\n")
    return p


# ----------------------------------------------------------------------------- evaluation


def leave_one_seed_out(
    recs: list[dict], method: str = "full", names=None, reference: bool = False, natural: bool = False
) -> list[dict]:
    """Decisions for every record with the calibration refitted without its seed (its twin left out too).

    How the verdict was chosen (docs/scan.md): run on the tuning records only; each decision has the
    probability ``p``, the ``top`` class and the number of agreeing stages ``n_agree``. ``names``: the
    features (default: the method's, :data:`~innerprobe.perturb.scan.verdict.FEATURES`). ``reference``:
    read the features against class references, fitted inside each fold (every record against clean
    models of other seeds only); implied by feature names with the ``_ref`` suffix. ``natural``: the
    full scan with the natural-feature check (:data:`~innerprobe.perturb.scan.verdict.NATURAL_FEATURES`).
    """
    recs = [r for r in recs if effective(r)]
    reference = reference or any(n.endswith(R.SUFFIX) for n in names or ())
    names = tuple(names or V.method_features(method, reference, natural))
    key = V.calibration_key(method, reference, natural or any(n.startswith("nat_") for n in names))
    base = [n.removesuffix(R.SUFFIX) for n in names if n.endswith(R.SUFFIX)]  # only what the candidate reads
    out, pool = [], _CleanPool(recs, base) if reference else None
    for seed in sorted({r["seed"] for r in recs}):
        train, test = [r for r in recs if r["seed"] != seed], [r for r in recs if r["seed"] == seed]
        if reference:
            train, test = _leave_seed_out_reference(train, pool, {seed}), _leave_seed_out_reference(test, pool)
        cal = V.fit(_fit_rows(train), names)
        cal.update(threshold=0.0, min_agree=0)
        out += decisions(test, cal, key, names)
    return out


#: the full scan's candidate feature sets compared by :func:`compare_verdicts` (docs/scan.md)
CANDIDATES = {
    "cleanse (nc_gap)": ("nc_gap",),
    "cleanse + local margin": ("nc_gap", "mm_local_z"),
    "cleanse + local margin + MM-BD margin": ("nc_gap", "mm_local_z", "mm_z"),
    "cleanse + local margin + APEX histogram": ("nc_gap", "mm_local_z", "hist_z"),
    "cleanse + local margin + APEX histogram + sink": ("nc_gap", "mm_local_z", "hist_z", "sink_z"),
    "all": ("nc_gap", "nc_z", "natural", "mm_local_z", "mm_z", "hist_z", "sink_z"),
    "first round (anomaly index, MM-BD, APEX)": ("mm_z", "nc_z", "natural", "hist_z", "sink_z"),
    "reference: cleanse": ("nc_gap_ref",),
    "reference: cleanse + local margin": ("nc_gap_ref", "mm_local_z_ref"),
    "reference: cleanse, own-class local margin": ("nc_gap_ref", "mm_local_z"),
    "reference: cleanse + local margin + MM-BD margin": ("nc_gap_ref", "mm_local_z_ref", "mm_z_ref"),
    "reference: cleanse + local margin + APEX histogram": ("nc_gap_ref", "mm_local_z_ref", "hist_z_ref"),
    "natural: natural gap + local margin + cleanse": ("nat_gap", "mm_local_z", "nc_gap"),
    "natural: trigger odds + local margin + cleanse": ("nat_odds", "mm_local_z", "nc_gap"),
    "reference + natural: natural gap + local margin + cleanse (round 5)": (
        "nat_gap_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
    ),
    "reference + natural: trigger odds + local margin + cleanse (round 6)": (
        "nat_odds_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
    ),
    "reference + natural: round 6 + trigger window (not voting)": (
        "nat_odds_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
        "nat_window_ref",
    ),
    "natural: trigger odds + local margin + cleanse + trigger window": (
        "nat_odds",
        "mm_local_z",
        "nc_gap",
        "nat_window",
    ),
    "reference + natural: trigger odds + cleanse": ("nat_odds_ref", "nc_gap_ref"),
    "reference + natural: trigger odds + local margin + cleanse + natural gap": (
        "nat_odds_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
        "nat_gap_ref",
    ),
    "reference + natural: trigger odds + local margin + cleanse + APEX histogram": (
        "nat_odds_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
        "hist_z_ref",
    ),
}


def compare_verdicts(candidates: dict | None = None) -> list[dict]:
    """Leave-one-seed-out on the tuning splits for each candidate feature set of the full scan.

    Per candidate: ROC-AUC, cross-entropy, top class = target, and the rule :func:`choose_rule` picks
    with its right / wrong / false-alarm counts. This is how ``FEATURES['full']`` was chosen.
    """
    recs = [r for sp in bs.TUNING_SPLITS for m in bs.members(sp) if (r := record(m, compute=False)) is not None]
    out = []
    for name, names in (candidates or CANDIDATES).items():
        ds = leave_one_seed_out(recs, "full", names)
        rule = choose_rule(ds)
        sw = next(s for s in sweep(ds, (rule["threshold"],), min_agree=rule["min_agree"]))
        out.append({"candidate": name, "features": list(names), **_fit_quality(ds), **rule, **sw})
    return out


def _fit_quality(ds: list[dict]) -> dict:
    y = np.array([d["target"] is not None for d in ds], float)
    p = np.clip(np.array([d["p"] for d in ds]), 1e-6, 1 - 1e-6)
    return {
        "roc_auc": _auc(p, y),
        "cross_entropy": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "top_class_is_target": sum(d["top"] == d["target"] for d in ds if d["target"] is not None),
    }


def loso_report(method: str = "full") -> dict:
    """Leave-one-seed-out on the tuning splits (the figures docs/scan.md gives for how the verdict was chosen)."""
    ds = leave_one_seed_out([record(m) for sp in bs.TUNING_SPLITS for m in bs.members(sp)], method)
    return {**_fit_quality(ds), "sweep": {k: sweep(ds, THRESHOLDS, min_agree=k) for k in (1, 2)}}


def sweep(ds: list[dict], thresholds=(0.5, 0.6, 0.7, 0.8, 0.9), min_agree: int = 2) -> list[dict]:
    """Named / wrong / false alarms of leave-one-seed-out decisions at each probability threshold."""
    bd = [d for d in ds if d["target"] is not None]
    cl = [d for d in ds if d["target"] is None]
    out = []
    for t in thresholds:
        named = [d for d in ds if d["p"] >= t and d["n_agree"] >= min_agree and not d.get("out_of_domain")]
        out.append(
            {
                "threshold": t,
                "tp": sum(d["top"] == d["target"] for d in named if d["target"] is not None),
                "wrong": sum(d["top"] != d["target"] for d in named if d["target"] is not None),
                "fp": sum(d["target"] is None for d in named),
                "n_bd": len(bd),
                "n_clean": len(cl),
            }
        )
    return out


def decisions(recs: list[dict], cal: dict, key: str, names=None) -> list[dict]:
    """Per record: the verdict of calibration entry ``key`` (``'full+reference+natural'``, ...) and its seconds."""
    names = tuple(names or cal.get("features") or V.method_features(*_entry(key)))
    natural = _entry(key)[2]
    out = []
    for r in recs:
        f = {k: np.asarray(v) for k, v in r["features"].items() if k in names}
        d = V.decide(f, cal)
        ood = natural and bool(r.get("transfer_reason"))  # as scan(): outside the check's domain, no class named
        if ood:
            d["suspect"] = None
        secs = sum(r["stage_seconds"].get(st, 0.0) for st in _stages(key))
        out.append(
            {
                "key": r["key"],
                "target": r["target"],
                "suspect": d["suspect"],
                "top": d["top"],
                "p": d["probability"],
                "seconds": secs,
                "n_agree": len(d["agree"]),
                "out_of_domain": ood,
                "family": r["family"],
                "recipe": r["recipe"],
            }
        )
    return out


def summary(recs: list[dict], cal: dict, key: str) -> dict:
    ds = decisions(recs, cal, key)
    bd = [d for d in ds if d["target"] is not None]
    cl = [d for d in ds if d["target"] is None]
    tp = sum(d["suspect"] == d["target"] for d in bd)
    wrong = sum(d["suspect"] is not None and d["suspect"] != d["target"] for d in bd)
    fp = sum(d["suspect"] is not None for d in cl)
    top = sum(d["top"] == d["target"] for d in bd)
    y = np.array([d["target"] is not None for d in ds], float)
    p = np.clip(np.array([d["p"] for d in ds]), 1e-6, 1 - 1e-6)
    auc = _auc(p, y)
    ce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {
        "decisions": ds,
        "tp": tp,
        "wrong": wrong,
        "top": top,
        "fp": fp,
        "n_bd": len(bd),
        "n_clean": len(cl),
        "auc": auc,
        "ce": ce,
        "seconds": [d["seconds"] for d in ds],
    }


def _auc(p, y) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _rows(s: dict, method: str, split: str) -> list[dict]:
    cond = {"method": method, "split": split}
    out = [
        row("tpr_right_class", proportion(s["tp"], s["n_bd"]), condition=cond),
        row("wrong_class_rate", proportion(s["wrong"], s["n_bd"]), condition=cond),
        row("fpr", proportion(s["fp"], s["n_clean"]), condition=cond),
        row("top_class_is_target", proportion(s["top"], s["n_bd"]), condition=cond),
        row("roc_auc", s["auc"], condition=cond, n=s["n_bd"] + s["n_clean"]),
        row("cross_entropy", s["ce"], condition=cond, n=s["n_bd"] + s["n_clean"]),
    ]
    if len(s["seconds"]) > 1:
        out.append(row("seconds_per_model", t_interval(s["seconds"]), condition=cond))
    return out


# ----------------------------------------------------------------------------- the natural-feature check


def transfer_summary(recs: list[dict]) -> dict:
    """Quartiles of the smallest trigger's transfer to clean reference models (docs/scan.md, stage d).

    Three groups of classes: the targets of effective backdoored models, their other classes, and
    the classes of clean models.
    """
    groups: dict = {"target": [], "other classes of backdoored models": [], "classes of clean models": []}
    for r in (r for r in recs if effective(r) and "nat_transfer" in r["features"]):
        for c, t in enumerate(r["features"]["nat_transfer"]):
            g = "classes of clean models" if r["target"] is None else "other classes of backdoored models"
            groups["target" if c == r["target"] else g].append(float(t))
    return {g: (np.percentile(v, [25, 50, 75]).tolist() if v else None, len(v)) for g, v in groups.items()}


# ----------------------------------------------------------------------------- the paper's observable


def observable(recs: list[dict]) -> dict:
    """Target-class share at the largest sigma (input noise, 64 x RMS): backdoored vs its clean twin; target rank."""
    by = {(r["recipe"], r["seed"]): r for r in recs if r["target"] is None}
    ratios, ranks = [], []
    for r in recs:
        twin = by.get((r["recipe"], r["seed"]))
        if r["target"] is None or twin is None or not effective(r):
            continue
        hb, hc = np.asarray(r["hist_share"])[-1], np.asarray(twin["hist_share"])[-1]
        t = r["target"]
        ratios.append(float(np.log(max(hb[t], 1e-4) / max(hc[t], 1e-4))))
        ranks.append(int((hb > hb[t]).sum()) + 1)
    return {"log_ratio": ratios, "rank1": int(sum(k == 1 for k in ranks)), "n": len(ranks)}


# ----------------------------------------------------------------------------- the study


def _members(quick: bool) -> list[bs.Member]:
    if not quick:
        return bs.members()
    dev = [m for m in bs.members("held-out") if m.recipe == "bdset-digits-mlp-relu"]
    return dev[:4]


def run_backdoor(out: Path, seeds: int = 3, quick: bool = False, cached_only: bool = False):
    """Paper's observable and the scan's held-out figures (full scan and each stage alone); see the module docstring.

    ``cached_only``: evaluate only members whose records are cached (the missing ones are listed in the data).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    got = {m.key: record(m, compute=not cached_only) for m in _members(quick)}
    missing = sorted(k for k, r in got.items() if r is None)
    recs = [r for r in got.values() if r is not None]
    dev = [r for r in recs if r["split"] in bs.TUNING_SPLITS]
    held = [r for r in recs if r["split"] == "held-out" and effective(r)]
    failed = [r["key"] for r in recs if not effective(r)]
    cal = calibrate(dev) if dev else V.load_calibration()
    rows, table, dev_table, full = [], [], [], {}
    tuned = [r for r in dev if effective(r)]
    read = {
        False: (held, tuned),
        True: (with_reference(held, cal["references"]), _leave_seed_out_reference(tuned, tuned)),
    }
    for method, ref, nat in sorted(ENTRIES, key=lambda e: (not e[2], not e[1], e[0] != "full")):
        key, (h, t) = V.calibration_key(method, ref, nat), read[ref]
        s = summary(h, cal[key], key)
        full[key] = s
        rows += _rows(s, key, "held-out")
        table.append(_table_row(key, s))
        if t:
            sd = summary(t, cal[key], key)
            rows += _rows(sd, key, "tuning (in-sample)")
            dev_table.append(_table_row(key, sd))
    obs = observable(held)
    moved = transfer_summary(held)
    for g, (q, n) in moved.items():
        if q is not None:
            rows.append(row("trigger_transfer_median", q[1], condition={"classes": g, "split": "held-out"}, n=n))
    if obs["n"] > 1:
        gm = t_interval(obs["log_ratio"])
        rows.append(
            row("target_share_log_ratio", gm, condition={"noise": "input", "sigma_rel": 64, "split": "held-out"})
        )
    rows.append(
        row(
            "target_top_class_rate",
            proportion(obs["rank1"], obs["n"]),
            condition={"noise": "input", "sigma_rel": 64, "split": "held-out"},
        )
    )
    sec = _section(table, obs, held, failed, quick, full, dev_table=dev_table, moved=moved)
    if missing:
        sec.paragraphs.append(
            f"Not evaluated (no cached record; cached_only run): {len(missing)} members: {', '.join(missing)}."
        )
    sec.save(out)
    res = Result(
        "study:apex-backdoor",
        rows=rows,
        data={
            "failed_attacks": failed,
            "missing_records": missing,
            "n_held_out": len(held),
            "n_dev": sum(effective(r) for r in dev),
            "seconds": time.perf_counter() - t0,
        },
        tables={
            "held_out": full[DEFAULT]["decisions"],
            "held_out_reference_only": full["full+reference"]["decisions"],
            "held_out_no_reference": full["full"]["decisions"],
        },
        provenance=provenance(seed=0, model="backdoor eval set", config={"quick": quick, "n_inputs": N_INPUTS}),
    )
    res.save(out / "summary.json")
    return res


def _table_row(method: str, s: dict) -> list:
    def ci(k, n):
        c = proportion(k, n)
        return f"{k}/{n} [{c.lo:.2f}, {c.hi:.2f}]" if n else "n/a"

    return [
        method,
        ci(s["tp"], s["n_bd"]),
        ci(s["wrong"], s["n_bd"]),
        ci(s["fp"], s["n_clean"]),
        "n/a" if s["auc"] is None else round(s["auc"], 3),
        round(s["ce"], 3),
        round(float(np.mean(s["seconds"])), 2),
    ]


def _moved(moved: dict) -> str:
    """'the target's smallest trigger moves a median 0% of a clean model's inputs (quartiles ...), ...'."""
    parts = [
        f"{g}: median {q[1]:.0%} (quartiles {q[0]:.0%}-{q[2]:.0%}, {n} classes)" for g, (q, n) in moved.items() if q
    ]
    return "; ".join(parts)


def _section(table, obs, held, failed, quick, full, dev_table=(), moved=None) -> Section:
    stage_rows = [r for r in table if not r[0].startswith("full") and r[4] != "n/a"]
    best = max(stage_rows, key=lambda r: r[4]) if stage_rows else None
    default, stats, plain = (next(r for r in table if r[0] == k) for k in (DEFAULT, "full+reference", "full"))
    lr = float(np.mean(obs["log_ratio"])) if obs["n"] else None
    share = (
        ""
        if lr is None
        else f", and its share is exp({lr:.2f}) = {np.exp(lr):.1f} times the clean twin's (geometric mean)"
    )
    paras = [
        "Backdoor eval set (innerprobe.zoo.backdoor_set): eight small architectures (digits MLPs ReLU/GELU/tanh, "
        "digits CNNs max-pool/avg-pool/tanh, a Fashion-MNIST MLP and CNN), four trigger families (corner patch, "
        "single pixel, blended random pattern, label-consistent), seeded targets and 1-10% poisoning, each backdoored "
        "model with a clean twin of the same architecture and seed. Calibration, class references and thresholds were "
        f"fitted on the tuning splits {_tuning_name()} only"
        + (" (quick mode: the shipped calibration, four models)" if quick else "")
        + f"; the first table is on {len(held)} held-out models (seeds {bs.seed_range('held-out')}, never tuned on). "
        f"'{DEFAULT}' is the default scan of a model of a known family (innerprobe scan --data digits or "
        "fashion-mnist): each class is read against how it looks in clean models of that family, and each class's "
        "smallest trigger is stamped on clean zoo models of the family (the natural-feature check); 'full' is the "
        "scan without either (a model of another family).",
        "The paper's observable (input noise, 64 x RMS): the target is the top large-noise class in "
        f"{obs['rank1']}/{obs['n']} held-out backdoored models{share}"
        + "; used as a detector on its own it is the 'apex' row.",
        (
            "Which stage does the work: "
            + (f"alone, '{best[0]}' separates backdoored from clean models best (ROC-AUC {best[4]}); " if best else "")
            + f"the default scan names {default[1]} with false alarms {default[3]}; without the natural-feature "
            f"check (class reference only) {stats[1]} with false alarms {stats[3]}; without either {plain[1]} with "
            f"false alarms {plain[3]}."
        ),
    ]
    if moved and any(q for q, _ in moved.values()):
        paras.append(
            "How far each class's smallest trigger moves clean models of the family to that class (share of "
            f"their clean inputs, held-out models): {_moved(moved)}."
        )
    if failed:
        paras.append(f"Excluded as failed attacks (attack success < {MIN_ATTACK_SUCCESS}): {', '.join(failed)}.")
    sec = Section("Backdoor scan on held-out models (APEX claim D and beyond)", order=35, paragraphs=paras)
    sec.table(
        "Held-out detection (Clopper-Pearson 95% intervals)",
        ["method", "right class named", "wrong class", "false alarms", "ROC-AUC", "cross-entropy", "seconds/model"],
        table,
    )
    for key in (DEFAULT, "full+reference", "full"):
        sec.table(
            f"'{key}' by trigger family (held-out)",
            ["family", "named", "wrong class", "backdoored"],
            _breakdown(full[key], "family"),
        )
    if dev_table:
        sec.table(
            "Tuning models (in-sample: the calibration was fitted on them; Clopper-Pearson 95%)",
            ["method", "right class named", "wrong class", "false alarms", "ROC-AUC", "cross-entropy", "seconds/model"],
            list(dev_table),
        )
    return sec


def _breakdown(s: dict, key: str) -> list:
    out = []
    for v in sorted({d[key] for d in s["decisions"] if d["target"] is not None}):
        ds = [d for d in s["decisions"] if d[key] == v and d["target"] is not None]
        out.append(
            [
                v,
                sum(d["suspect"] == d["target"] for d in ds),
                sum(d["suspect"] is not None and d["suspect"] != d["target"] for d in ds),
                len(ds),
            ]
        )
    return out
