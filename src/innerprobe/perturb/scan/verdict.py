"""The backdoor scan's verdict: per-class evidence -> a calibrated probability and a named class (docs/scan.md).

Each stage gives every class a score relative to the model's other classes (a robust z: the null
is fitted to the model's own classes, so no threshold depends on one architecture's scale), and,
with a class reference (:mod:`.reference`), relative to how that class scores in clean models of
the model's family (features ``*_ref``, each voting for its stage). The
verdict combines them per class with a logistic model,

    s_c = b + sum_f w_f * sign(v) log(1 + |v|),   v = feature_f[c],

fitted on the tuning splits (dev ... dev8) of the backdoor eval set (class rows: is c the target of a
backdoored model?), and turns the top class's score **and its gap over the runner-up** into a
probability that the model is backdoored with a Platt fit on the tuning models,

    P = sigmoid(a * s_(1) + g * (s_(1) - s_(2)) + b'),   s_(1) >= s_(2) the two largest class scores,

so a model is judged by how far its top class stands out of its own classes rather than by an
absolute score alone (chosen by leave-one-seed-out in the first round, on dev + dev2: ROC-AUC 0.81 -> 0.85). A
calibration with a two-entry ``platt`` ``[a, b']`` (no gap term) is still read. A class is named only when
``P >= threshold`` **and** independent statistics agree: at least ``min_agree`` of the stages that
ran rank it first; a stage votes with its first feature in the calibration's list. The coefficients live
in ``calibration.json`` next to this file, written by ``innerprobe.studies.apex_backdoor.calibrate`` from
the tuning models only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import ConfigError

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")

#: the features each method reads (names of per-class arrays in the stage outputs)
FEATURES = {
    "full": ("nc_gap", "mm_local_z"),
    "apex": ("hist_z", "sink_z"),
    "triggers": ("mm_z",),
    "cleanse": ("nc_gap",),
    "natural": ("nat_odds", "nc_gap"),
}
#: the full scan's features when the natural-feature check ran (clean reference models given): three voting stages
#: and the trigger's compact core (``nat_window``, read but not voting)
NATURAL_FEATURES = ("nat_odds", "mm_local_z", "nc_gap", "nat_window")
#: which stage each feature belongs to (agreement counts stages, not features)
STAGE_OF = {
    "mm_local_z": "triggers",
    "mm_z": "triggers",
    "nc_gap": "cleanse",
    "nc_z": None,
    "natural": None,
    "hist_z": "screen",
    "sink_z": None,
    "nat_odds": "natural",
    "nat_gap": "natural",
    "nat_transfer": None,
    "nat_window": None,
}
#: a feature read against a class reference (:mod:`.reference`) votes for the same stage as the feature itself
STAGE_OF.update({n + "_ref": st for n, st in list(STAGE_OF.items())})


def calibration_key(method: str, reference: bool, natural: bool = False) -> str:
    """A method's calibration entry: ``'full'``, ``'full+reference'`` with a class reference, ``'+natural'`` after
    either when the full scan ran the natural-feature check (``'full+reference+natural'``)."""
    return method + ("+reference" if reference else "") + ("+natural" if natural and method == "full" else "")


def method_features(method: str, reference: bool = False, natural: bool = False) -> tuple[str, ...]:
    """The features a calibration entry reads: the method's own, with ``_ref`` when read against a class reference."""
    names = NATURAL_FEATURES if natural and method == "full" else FEATURES[method]
    return tuple(n + "_ref" for n in names) if reference else tuple(names)


def reference_features(method: str) -> tuple[str, ...]:
    """The features a method reads against a class reference: its own, each with the ``_ref`` suffix."""
    return method_features(method, True)


def design(features: dict, names) -> np.ndarray:
    """[C, F] matrix of per-class features, compressed as sign(v) log(1 + |v|).

    The compression (not a clip at +-10 as in the first round) keeps the order among large z-scores,
    e.g. the histogram z of 20-50 that clean CNNs reach; chosen by leave-one-seed-out on the first round's dev + dev2
    (ROC-AUC 0.847 -> 0.862, docs/scan.md).
    """
    v = np.stack([np.asarray(features[n], float) for n in names], 1)
    return np.sign(v) * np.log1p(np.abs(v))


def load_calibration(path: Path | None = None) -> dict:
    p = Path(path) if path is not None else CALIBRATION_FILE
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no scan calibration at {p}", hint="run innerprobe.studies.apex_backdoor.calibrate() (dev models only)"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"unreadable scan calibration {p}: {e}",
            hint="regenerate it with innerprobe.studies.apex_backdoor.calibrate()",
        ) from None


def class_scores(features: dict, cal: dict) -> np.ndarray:
    """Per-class logistic score s_c from the method's calibration entry."""
    X = design(features, cal["features"])
    return X @ np.asarray(cal["coef"], float) + float(cal["intercept"])


def platt_features(scores: np.ndarray) -> list[float]:
    """``[s_(1), s_(1) - s_(2)]``: the top class score and its gap over the runner-up."""
    o = np.sort(np.asarray(scores, float))[::-1]
    return [float(o[0]), float(o[0] - o[1]) if len(o) > 1 else 0.0]


def probability(scores: np.ndarray, cal: dict) -> float:
    """Calibrated P(backdoored) from the class scores (Platt map over :func:`platt_features`)."""
    pl = [float(v) for v in cal["platt"]]
    top, gap = platt_features(scores)
    z = pl[0] * top + pl[-1] + (pl[1] * gap if len(pl) == 3 else 0.0)
    return float(1.0 / (1.0 + np.exp(-z)))


def agreeing_stages(features: dict, names, cls: int) -> list[str]:
    """Stages (of those whose feature is present) that rank ``cls`` first."""
    out, seen = [], set()
    for n in names:  # a stage's first feature in ``names`` is the one that votes
        st = STAGE_OF.get(n)
        if st and st not in seen and n in features:
            seen.add(st)
            if int(np.argmax(features[n])) == cls:
                out.append(st)
    return out


def decide(features: dict, cal: dict, *, threshold: float | None = None, min_agree: int | None = None) -> dict:
    """``{"scores", "probability", "top", "suspect", "agree"}`` for one model's per-class features."""
    s = class_scores(features, cal)
    top = int(np.argmax(s))
    p = probability(s, cal)
    thr = float(cal.get("threshold", 0.5) if threshold is None else threshold)
    need = int(cal.get("min_agree", 1) if min_agree is None else min_agree)
    agree = agreeing_stages(features, cal["features"], top)
    named = p >= thr and len(agree) >= need
    return {
        "scores": s,
        "probability": p,
        "top": top,
        "suspect": top if named else None,
        "agree": agree,
        "threshold": thr,
        "min_agree": need,
    }


def fit(rows: list[dict], names, *, l2: float = 1.0) -> dict:
    """Fit the class-level logistic model and the Platt map on tuning ``rows`` (per-class features + ``target``)."""
    from sklearn.linear_model import LogisticRegression

    X = np.concatenate([design(r, names) for r in rows])
    y = np.concatenate(
        [np.arange(len(r[names[0]])) == (-1 if r["target"] is None else r["target"]) for r in rows]
    ).astype(int)
    clf = LogisticRegression(C=l2, class_weight="balanced", max_iter=2000).fit(X, y)
    coef, icpt = clf.coef_[0].tolist(), float(clf.intercept_[0])
    cal = {"features": list(names), "coef": coef, "intercept": icpt, "platt": [1.0, 0.0]}
    top = np.array([platt_features(class_scores(r, cal)) for r in rows])
    lab = np.array([r["target"] is not None for r in rows]).astype(int)
    pl = LogisticRegression(C=l2).fit(top, lab)
    cal["platt"] = [float(pl.coef_[0][0]), float(pl.coef_[0][1]), float(pl.intercept_[0])]
    return cal
