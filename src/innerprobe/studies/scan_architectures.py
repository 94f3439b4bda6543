"""The backdoor scan on an architecture it has not seen: leave-one-architecture-out (docs/scan.md).

The eval set's held-out split has the tuning splits' eight architectures; a user's model usually has
none of them. Here each digits architecture in turn is scanned as if unseen: its models are read
against class references, a calibration and natural-feature **reference models** of the other
architectures only (the reference models of its own architecture are dropped from each class's
transfer, which needs the transfer per reference model, cached here per member). The Fashion-MNIST
recipes are the only ones of their kind (no reference is left without them), so they are not held out.

``leave_one_architecture_out()`` returns one row per candidate feature set: ROC-AUC, and named /
wrong / false alarms at each threshold, over every effective model of the eval set (all splits).
The per-reference transfers cost one smallest-trigger search per member (about 15 minutes on two
cores for the 512 members); ``compute=False`` uses only what is cached.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..perturb.scan import evidence
from ..perturb.scan import natural as N
from ..perturb.scan import verdict as V
from ..zoo import backdoor_set as bs
from . import apex_backdoor as A

#: the feature sets compared (the defaults of rounds 7, 6 and 5, and the scan without the natural-feature check)
CANDIDATES = {
    "round 7 (default): nat_odds_ref, mm_local_z_ref, nc_gap_ref, nat_window_ref": (
        "nat_odds_ref",
        "mm_local_z_ref",
        "nc_gap_ref",
        "nat_window_ref",
    ),
    "round 6: nat_odds_ref, mm_local_z_ref, nc_gap_ref": ("nat_odds_ref", "mm_local_z_ref", "nc_gap_ref"),
    "round 5: nat_gap_ref, mm_local_z_ref, nc_gap_ref": ("nat_gap_ref", "mm_local_z_ref", "nc_gap_ref"),
    "no natural-feature check: nc_gap_ref, mm_local_z_ref": ("nc_gap_ref", "mm_local_z_ref"),
}


def per_reference(m: bs.Member, *, compute: bool = True) -> dict | None:
    """``{"recipes": [R], "transfer": [R][C]}``: each class's smallest trigger stamped on each reference model."""
    key = ["per-reference", 2, A.STAGE_VERSIONS["cleanse"], m.recipe, m.seed, m.overrides, A.N_INPUTS]
    path = A._cache_path(key)  # 2: also the trigger's window (nat_window) per reference model
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not compute:
            return None
    model, _, x = A._load(m)
    ev = evidence(model, x, method="cleanse")
    mask, pattern = (torch.as_tensor(ev["arrays"][k], dtype=x.dtype) for k in ("nc_mask", "nc_pattern"))
    members = [r for r in bs.reference_members(bs.reference_name(m.recipe)) if r.seed != m.seed]
    nets = A._reference_models(m)  # the same members, in the same order
    core = N.window(mask)
    rec = {
        "recipes": [r.recipe for r in members],
        "transfer": [N.transfer([g], x, mask, pattern).tolist() for g in nets],
        "window_transfer": [N.transfer([g], x, core, pattern).tolist() for g in nets],
        "window_own": N.transfer([model], x, core, pattern).tolist(),
    }
    A._write(path, rec)
    return rec


def _without(rec: dict, per: dict, recipe: str) -> dict:
    """The record with its natural-feature statistics recomputed from reference models not of ``recipe``."""
    keep = [i for i, r in enumerate(per["recipes"]) if r != recipe]
    t = np.mean(np.asarray(per["transfer"], float)[keep], axis=0)
    f = {**rec["features"], "nat_transfer": t.tolist(), "nat_odds": N.odds(t).tolist()}
    f["nat_gap"] = N.natural_gap(f["nc_gap"], t).tolist()
    tw = np.mean(np.asarray(per["window_transfer"], float)[keep], axis=0)
    f["nat_window"] = (np.asarray(per["window_own"], float) * (1.0 - tw)).tolist()
    return {**rec, "features": f}


def _fold(recs: list[dict], pers: dict, arch: str, names) -> list[dict]:
    pool = [_without(r, pers[r["key"]], arch) for r in recs]
    train, test = [r for r in pool if r["recipe"] != arch], [r for r in pool if r["recipe"] == arch]
    cp = A._CleanPool(train, [n.removesuffix("_ref") for n in names if n.endswith("_ref")])
    train = A._leave_seed_out_reference(train, cp)
    test = [A._read_against(r, cp.reference(A._family(r), set())) for r in test]
    cal = V.fit(A._fit_rows(train), names)
    cal.update(threshold=0.0, min_agree=0)
    key = V.calibration_key("full", True, any(n.startswith("nat_") for n in names))  # the domain rule as scan()'s
    return A.decisions(test, cal, key, names)


def leave_one_architecture_out(candidates: dict | None = None, thresholds=(0.9, 0.95), compute: bool = True):
    """Per candidate: ROC-AUC and the sweep over ``thresholds`` with every digits architecture held out in turn."""
    recs, pers = [], {}
    for m in bs.members():
        r = A.record(m, compute=compute)
        p = per_reference(m, compute=compute) if r is not None and A.effective(r) else None
        if p is not None:
            recs.append(r)
            pers[r["key"]] = p
    archs = sorted({r["recipe"] for r in recs if bs.reference_name(r["recipe"]).startswith("digits")})
    out = []
    for name, names in (candidates or CANDIDATES).items():
        ds = [d for arch in archs for d in _fold(recs, pers, arch, names)]
        sweep = A.sweep(ds, thresholds, min_agree=A.FULL_MIN_AGREE)
        out.append({"candidate": name, "features": list(names), **A._fit_quality(ds), "sweep": sweep})
    return out
