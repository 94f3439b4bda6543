"""APEX backdoor study (claim D of Ren, Luo, Li 2026, arXiv 2602.03586; docs/apex.md, docs/scan.md).

``apex-backdoor``: target-class concentration at large noise (the paper's observable) and the backdoor scan.
Moved out of :mod:`innerprobe.studies.apex` so the scan's evaluation can grow on its own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report.sections import Section
from .apex_common import Headlines, available, data, finish, load, run_apex
BD_SIGMAS = np.array([4.0, 16.0, 64.0])
BD_SITES = ("all", "first", "last", "input")
SCANS = ("sink", "histogram")


def _bd_site(model, which):
    from ..perturb.scan import scan_sites

    return scan_sites(model, which)


def geo_ci(values):
    """Geometric mean and 95% t-interval on the log scale (ratios span orders of magnitude)."""
    from .apex_common import t_ci

    m, lo, hi = t_ci(np.log(np.asarray(values, float)))
    return float(np.exp(m)), float(np.exp(lo)), float(np.exp(hi))


def _wilson(k, n):
    if n == 0:
        return float("nan"), float("nan")
    z = 1.96
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(c - h), float(c + h)


def run_backdoor(out: Path, seeds: int = 3, quick: bool = False):
    """Large-noise class histograms of backdoored vs paired clean models, and the scan's detection rate."""
    from ..perturb.scan import backdoor_scan
    from ..report.plots import new_figure, savefig, style_axes

    out = Path(out)
    archs = ["digits-mlp", "digits-cnn"] if quick else ["digits-mlp", "digits-cnn", "fashion-cnn"]
    targets = [0] if quick else [0, 3, 7]
    S = [0] if quick else list(range(min(2, max(1, seeds))))
    skipped = [a for a in archs if not all(available(a, s) and available(f"{a}-backdoor", s, target=t) for s in S for t in targets)]
    archs = [a for a in archs if a not in skipped]
    N = 100 if quick else 200
    Kb = 16
    floor = 1.0 / (N * Kb)  # one pass: ratios against a clean share of 0 use this instead
    heads, rows, scan_rows = Headlines(), [], []
    share_rows = []
    scans = {"bd": [], "clean": []}
    for arch in archs:
        per_site = {w: {"ratio": [], "rank1": [], "bd": [], "clean": [], "ctrl": [], "by_sigma": []} for w in BD_SITES}
        for s in S:
            clean_model, _ = load(arch, s)
            xs = data(arch, s).x_test[:N]
            clean_runs = {w: run_apex(arch, s, xs, BD_SIGMAS, samples=Kb, sites=_bd_site(clean_model, w)) for w in BD_SITES}
            scans["clean"].append((arch, s, None, {m: backdoor_scan(clean_model, xs[:64], method=m, seed=0).data for m in SCANS}))
            for t in targets:
                bd_name = f"{arch}-backdoor"
                bd_model, card = load(bd_name, s, target=t)
                for w in BD_SITES:
                    r = run_apex(bd_name, s, xs, BD_SIGMAS, samples=Kb, sites=_bd_site(bd_model, w), overrides={"target": t})
                    hb = r["counts"][:, -1].sum(0) / r["counts"][:, -1].sum()
                    hc = clean_runs[w]["counts"][:, -1].sum(0) / clean_runs[w]["counts"][:, -1].sum()
                    rank = int((hb > hb[t]).sum()) + 1
                    others = [c for c in range(10) if c != t]
                    ctrl = float(np.mean([hb[c] / max(hc[c], floor) for c in others]))
                    P = per_site[w]
                    allb = r["counts"].sum(0) / r["counts"].sum((0, 2))[:, None]  # [S, C]
                    allc = clean_runs[w]["counts"].sum(0) / clean_runs[w]["counts"].sum((0, 2))[:, None]
                    P["by_sigma"].append([float(allb[i, t] / max(allc[i, t], floor)) for i in range(len(BD_SIGMAS))])
                    P["ratio"].append(hb[t] / max(hc[t], floor))
                    P["rank1"].append(float(rank == 1))
                    P["bd"].append(hb[t])
                    P["clean"].append(hc[t])
                    P["ctrl"].append(ctrl)
                    rows.append([arch, s, t, w, round(float(hb[t]), 3), round(float(hc[t]), 3), round(float(hb[t] / max(hc[t], floor)), 2),
                                 rank, round(ctrl, 2), round(card["metrics"].get("attack_success", float("nan")), 3)])
                    share_rows.append({"arch": arch, "seed": s, "target": t, "sites": w, "bd_hist": hb.tolist(), "clean_hist": hc.tolist()})
                scans["bd"].append((arch, s, t, {m: backdoor_scan(bd_model, xs[:64], method=m, seed=0).data for m in SCANS}))
        n = len(S) * len(targets)
        for w in BD_SITES:
            P = per_site[w]
            heads.add(f"{arch} [{w} noise] target share, backdoored (sigma=64)", P["bd"], [f"s{s}t{t}" for s in S for t in targets])
            heads.add(f"{arch} [{w} noise] same class share, clean (sigma=64)", P["clean"], [f"s{s}t{t}" for s in S for t in targets])
            heads.add(f"{arch} [{w} noise] target share ratio backdoored/clean (geometric mean)", P["ratio"], [f"s{s}t{t}" for s in S for t in targets],
                      ci=geo_ci(P["ratio"]))
            heads.add(f"{arch} [{w} noise] non-target share ratio (control)", P["ctrl"], [f"s{s}t{t}" for s in S for t in targets])
            for i, sg in enumerate(BD_SIGMAS[:-1]):
                heads.add(f"{arch} [{w} noise] target share ratio at sigma={sg:g} (geometric mean)", [v[i] for v in P["by_sigma"]],
                          [f"s{s}t{t}" for s in S for t in targets], ci=geo_ci([v[i] for v in P["by_sigma"]]))
            k = int(sum(P["rank1"]))
            lo, hi = _wilson(k, n)
            heads.add(f"{arch} [{w} noise] share of models where the target is the top class", P["rank1"], [f"s{s}t{t}" for s in S for t in targets],
                      ci=(k / n, lo, hi))
    # drivers: a larger trigger and a higher poisoning rate (digits-mlp, target 3, seed 0; full mode only)
    driver_rows = []
    if not quick:
        clean_model, _ = load("digits-mlp", 0)
        xs = data("digits-mlp", 0).x_test[:N]
        cr = run_apex("digits-mlp", 0, xs, BD_SIGMAS, samples=Kb, sites=_bd_site(clean_model, "first"))
        hc = cr["counts"][:, -1].sum(0) / cr["counts"][:, -1].sum()
        for ov in ({"target": 3}, {"target": 3, "trigger_size": 4}, {"target": 3, "rate": 0.25}, {"target": 3, "trigger_size": 4, "rate": 0.25}):
            m, card = load("digits-mlp-backdoor", 0, **ov)
            r = run_apex("digits-mlp-backdoor", 0, xs, BD_SIGMAS, samples=Kb, sites=_bd_site(m, "first"), overrides=ov)
            hb = r["counts"][:, -1].sum(0) / r["counts"][:, -1].sum()
            sc = {meth: backdoor_scan(m, xs[:64], method=meth, seed=0).data for meth in SCANS}
            driver_rows.append([", ".join(f"{k}={v}" for k, v in ov.items()), round(float(hb[3]), 3), round(float(hb[3] / max(hc[3], floor)), 2),
                                int((hb > hb[3]).sum()) + 1, round(card["metrics"].get("attack_success", float("nan")), 3),
                                f"{sc['sink']['suspect']} ({sc['sink']['score']:.1f})", f"{sc['histogram']['suspect']} ({sc['histogram']['score']:.1f})"])
    # scan evaluation, per method; 'dev' = the seed-0 digits models the sink statistic was chosen on
    scan_summary = {}
    for meth in SCANS:
        for part, keep in (("all", lambda a, s: True), ("held-out", lambda a, s: not (s == 0 and a.startswith("digits")))):
            bd = [(a, s, t, d[meth]) for a, s, t, d in scans["bd"] if keep(a, s)]
            cl = [(a, s, t, d[meth]) for a, s, t, d in scans["clean"] if keep(a, s)]
            if not bd:
                continue
            det = sum(1 for (_, _, t, d) in bd if d["suspect"] == t)
            wrong = sum(1 for (_, _, t, d) in bd if d["suspect"] is not None and d["suspect"] != t)
            fa = sum(1 for (_, _, _, d) in cl if d["suspect"] is not None)
            nb, nc = len(bd), len(cl)
            scan_summary[f"{meth}/{part}"] = {"detected": det, "backdoored": nb, "wrong_class": wrong, "false_alarms": fa, "clean": nc}
            heads.add(f"scan[{meth}, {part} models] detection rate (target named)", [det / nb], ["pooled"], ci=(det / nb, *_wilson(det, nb)))
            if nc:
                heads.add(f"scan[{meth}, {part} models] false-alarm rate on clean models", [fa / nc], ["pooled"], ci=(fa / nc, *_wilson(fa, nc)))
            heads.add(f"scan[{meth}, {part} models] wrong class named on backdoored models", [wrong / nb], ["pooled"],
                      ci=(wrong / nb, *_wilson(wrong, nb)))
    for kind in ("bd", "clean"):
        for arch, s, t, dd in scans[kind]:
            for meth in SCANS:
                d = dd[meth]
                scan_rows.append([arch + ("-backdoor" if kind == "bd" else ""), s, "-" if t is None else t, meth, d["top_class"],
                                  round(d["score"], 2), "none" if d["suspect"] is None else d["suspect"]])
    main = scan_summary.get("sink/all", {})
    det, nb, fa, nc, wrong = (main.get(k, 0) for k in ("detected", "backdoored", "false_alarms", "clean", "wrong_class"))
    # figure: mean target-share ratio per site config and arch
    fig, ax = new_figure(size=(5.2, 3.2))
    width = 0.8 / len(archs)
    for i, arch in enumerate(archs):
        vals = [np.mean([r[6] for r in rows if r[0] == arch and r[3] == w]) for w in BD_SITES]
        ax.bar(np.arange(len(BD_SITES)) + i * width, vals, width=width, label=arch)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(BD_SITES)) + width * (len(archs) - 1) / 2, [f"{w} noise" for w in BD_SITES])
    style_axes(ax, title="target share at sigma=64, backdoored / clean", ylabel="ratio (log; clean share floored at 1/(N K))")
    ax.legend(fontsize=7, frameon=False)
    f1 = savefig(fig, out / "backdoor_ratio.png")
    ex = next(r for r in share_rows if r["sites"] == "first")
    fig, ax = new_figure(size=(5.2, 3.0))
    ax.bar(np.arange(10) - 0.2, ex["clean_hist"], width=0.4, label="clean")
    ax.bar(np.arange(10) + 0.2, ex["bd_hist"], width=0.4, label=f"backdoored (target {ex['target']})")
    ax.set_xticks(range(10))
    style_axes(ax, title=f"class histogram at sigma=64, first-layer noise, {ex['arch']} seed {ex['seed']}", xlabel="class", ylabel="share")
    ax.legend(fontsize=7, frameon=False)
    f2 = savefig(fig, out / "backdoor_histogram.png")
    sec = Section("APEX: backdoor concentration at large noise and a reference-free scan (claim D)", order=35, paragraphs=[
        f"BadNets-style corner-patch backdoors (zoo recipes *-backdoor), targets {targets}, seeds {S}, each paired with the clean model "
        f"of the same seed. Class histograms on {N} clean test inputs, K = {Kb}, absolute sigma {BD_SIGMAS.tolist()}, common random numbers "
        "across the pair. Noise sites: after all hidden nonlinearities, the first only, the last only, or at the input.",
        "Scans (64 clean inputs, no clean reference, robust z threshold 3.5): 'sink' = the class that inputs escape to, under input noise "
        "and under last-hidden-layer noise (the smaller of the two z-scores; chosen on the seed-0 digits models, so 'held-out' excludes "
        "them); 'histogram' = the large-noise class histogram with first-layer noise at 4, 16, 64 x RMS (the pilot's suggestion). "
        f"Sink scan over all models: target named in {det}/{nb} backdoored models, a wrong class in {wrong}/{nb}, "
        f"false alarms on {fa}/{nc} clean models."] + ([f"Not run (models not trained; INNERPROBE_APEX_SKIP_UNCACHED=1): "
                                                        f"{', '.join(skipped)}."] if skipped else []))
    sec.table("Target-class share at sigma = 64", ["model", "seed", "target", "noise", "share (backdoored)", "share (clean)", "ratio",
                                                  "rank in backdoored", "non-target ratio", "attack success"], rows)
    sec.table("Backdoor scan on every model", ["model", "seed", "target", "method", "top class", "score", "named"], scan_rows)
    if driver_rows:
        sec.table("Drivers (digits-mlp-backdoor, target 3, seed 0; first-layer noise, sigma = 64; scans: named class (score))",
                  ["recipe overrides", "target share", "ratio vs clean", "rank", "attack success", "sink scan", "histogram scan"], driver_rows)
    sec.figure(f1, "target-class share ratio (backdoored / paired clean) by noise site")
    sec.figure(f2, "example class histograms at sigma = 64")
    return finish(out, "study:apex-backdoor", heads, sec, seeds=S, data={"scan": scan_summary},
                  tables={"shares": share_rows, "drivers": [dict(zip(["overrides", "target_share", "ratio", "rank", "attack_success", "sink_scan",
                                                                       "histogram_scan"], r)) for r in driver_rows], "scan": [dict(zip(["model", "seed", "target", "method", "top_class", "score", "named"], r)) for r in scan_rows]},
                  config={"archs": archs, "skipped": skipped, "targets": targets, "N": N, "K": Kb, "sigmas": BD_SIGMAS.tolist()})
