"""``innerprobe perturb`` (an APEX sweep with plots) and ``innerprobe scan`` (the backdoor scan); docs/apex.md."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from .inputs import for_model, load_inputs
from .spec import parse_model

SIGMA_HELP = ("noise scales: a comma list '0.1,0.3,1,3' or a geometric grid 'LO:HI:N' (e.g. '0.02:20:31'); "
              "absolute unless --relative")


def parse_sigmas(text: str):
    import numpy as np

    text = (text or "").strip()
    m = re.fullmatch(r"([0-9.eE+-]+):([0-9.eE+-]+):(\d+)", text)
    try:
        if m:
            lo, hi, n = float(m[1]), float(m[2]), int(m[3])
            if not (0 < lo < hi) or n < 2:
                raise ValueError
            return np.geomspace(lo, hi, n)
        return np.array([float(t) for t in text.split(",") if t.strip()])
    except ValueError:
        raise ConfigError(f"cannot read sigmas {text!r}", hint=SIGMA_HELP) from None


def _sites(sites: Optional[List[str]]):
    if not sites:
        return None
    out = [s.strip() for item in sites for s in item.split(",") if s.strip()]
    return out or None


def register(app: typer.Typer) -> None:
    @app.command("perturb")
    def perturb(
        model: str = typer.Option(..., "--model", "-m", help="zoo name (e.g. digits-mlp or digits-mlp@1 for seed 1), path/file.py:factory, or a local HF folder"),
        sigmas: str = typer.Option("0.02:20:31", "--sigmas", help=SIGMA_HELP),
        samples: int = typer.Option(64, "--samples", "-k", help="K noisy passes per input and sigma"),
        sites: Optional[List[str]] = typer.Option(None, "--sites", help="noise sites (repeat or comma-separate); default: after every hidden nonlinearity; ':input' = the model input"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (results, plots, section.json); an interrupted run resumes here"),
        weights: Optional[Path] = typer.Option(None, "--weights", help="safetensors weights for a file.py:factory model"),
        data: Optional[str] = typer.Option(None, "--data", help="inputs: a zoo recipe, 'digits', 'fashion-mnist', or a .npy/.npz/.pt/.safetensors file (default: the zoo model's own data, same seed)"),
        inputs: int = typer.Option(200, "--inputs", "-n", help="number of inputs to probe"),
        split: str = typer.Option("test", "--split", help="'test' or 'train' inputs of a zoo dataset"),
        noise: str = typer.Option("gaussian", "--noise", help="gaussian (default), multiplicative or dropout"),
        relative: bool = typer.Option(False, "--relative", help="scale sigma by each site's clean activation RMS"),
        tau: float = typer.Option(0.5, "--tau", help="survival threshold for escape noise"),
        rule: str = typer.Option("survival", "--rule", help="escape rule: survival (share < tau) or majority"),
        seed: int = typer.Option(0, "--seed", help="seed of the common random numbers"),
        chunk_rows: int = typer.Option(8192, "--chunk-rows", help="max rows per forward pass (memory bound)"),
    ):
        """APEX: class distributions under activation noise; escape noise, class histograms, D(sigma)."""
        import torch

        from ..perturb import plots
        from ..perturb.sweep import apex
        from ..report.sections import Section

        torch.set_num_threads(max(1, torch.get_num_threads()))
        sig = parse_sigmas(sigmas)
        spec = parse_model(model)
        net = spec.load(weights)
        inp = load_inputs(data, spec, n=inputs, split=split)
        x, y, names = for_model(inp.x, net), inp.y, inp.classes
        res = apex(net, x, sig, samples=samples, sites=_sites(sites), noise=noise, relative=relative, tau=tau, rule=rule,
                   seed=seed, chunk_rows=chunk_rows, out=out, labels=None if y is None else y.numpy(), model_name=model, progress=True)
        d = res.data
        f1 = plots.escape_histogram(res, out / "escape_noise.png", title=f"escape noise, {model}")
        f2 = plots.sample_dependence_plot({"D": res.arrays["D"]}, res.arrays["sigmas"], out / "sample_dependence.png",
                                          floors={"D": res.arrays["D_floor"]}, title=f"D(sigma), {model}")
        f3 = plots.class_histograms(res, out / "class_histograms.png", names)
        med = d["median_escape_sigma"]
        sec = Section(f"APEX perturb: {model}", order=30, paragraphs=[
            f"{d['N']} inputs, K = {d['K']}, {d['S']} sigmas from {sig[0]:.3g} to {sig[-1]:.3g} ({d['noise']} noise, "
            f"{'relative to RMS' if d['relative'] else 'absolute'}), sites: {', '.join(d['sites'])}.",
            f"Median escape noise {med if med is None else f'{med:.3g}'}; left-censored {d['left_censored']:.1%}, "
            f"right-censored {d['right_censored']:.1%}. D(sigma) crosses half-way at sigma = {d['half_way_sigma']:.3g}. "
            f"Largest sigma: most frequent class {d['large_noise_argmax_class']}, normalised entropy {d['large_noise_entropy']:.2f}."])
        sec.table("clean activation RMS per noise site", ["site", "RMS"], [[k, round(v, 4)] for k, v in d["site_rms"].items()])
        sec.figure(f1, "escape-noise histogram (censored inputs shown separately)")
        sec.figure(f2, "sample-dependence curve with its Monte Carlo floor (dashed)")
        sec.figure(f3, "large-noise class histogram per sigma")
        sec.save(out)
        typer.echo(f"APEX on {model}: {d['N']} inputs x {d['S']} sigmas x K={d['K']} in {d['seconds']:.1f}s"
                   + (f" (resumed {d['resumed_chunks']}/{d['chunks']} chunks)" if d["resumed_chunks"] else ""))
        typer.echo(f"  sites: {', '.join(d['sites'])}")
        typer.echo(f"  median escape noise: {'n/a (>50% censored)' if med is None else f'{med:.4g}'}; "
                   f"censored left {d['left_censored']:.1%} / right {d['right_censored']:.1%}")
        typer.echo(f"  D(sigma): {res.arrays['D'][0]:.3f} -> {res.arrays['D'][-1]:.3f} (floor {res.arrays['D_floor'][-1]:.3f}); "
                   f"half-way at sigma = {d['half_way_sigma']:.4g}")
        typer.echo(f"  largest sigma: top class {d['large_noise_argmax_class']} "
                   f"(share {res.arrays['histogram'][-1].max():.3f}), entropy {d['large_noise_entropy']:.3f}")
        typer.echo(f"  wrote {out}/apex.json, apex.npz, 3 plots, section.json")

    @app.command("scan")
    def scan(
        model: str = typer.Option(..., "--model", "-m", help="zoo name (e.g. digits-cnn-backdoor), path/file.py:factory, or a local HF folder"),
        weights: Optional[Path] = typer.Option(None, "--weights", help="safetensors weights for a file.py:factory model"),
        data: Optional[str] = typer.Option(None, "--data", help="clean inputs: a zoo recipe, 'digits', 'fashion-mnist', or a .npy/.npz/.pt/.safetensors file"),
        inputs: int = typer.Option(64, "--inputs", "-n", help="number of clean inputs"),
        method: str = typer.Option("sink", "--method", help="sink: the class every input escapes to under input and last-layer noise; histogram: the large-noise class histogram"),
        sites: Optional[str] = typer.Option(None, "--sites", help="histogram method: where noise enters (first, all, last, input, or a site spec; default first)"),
        sigmas: Optional[str] = typer.Option(None, "--sigmas", help="noise scales relative to RMS (sink default 0.02:200:17, histogram default 4,16,64)"),
        absolute: bool = typer.Option(False, "--absolute", help="histogram method: absolute sigmas instead of RMS-relative"),
        samples: Optional[int] = typer.Option(None, "--samples", "-k", help="noisy passes per input and sigma (sink 16, histogram 32)"),
        threshold: float = typer.Option(3.5, "--threshold", help="robust z-score above which a class is named"),
        seed: int = typer.Option(0, "--seed", help="seed of the noise"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="write scan.json here"),
    ):
        """APEX backdoor scan: from the model and a few clean inputs, name a suspected target class or none."""
        from ..perturb.scan import backdoor_scan

        spec = parse_model(model)
        net = spec.load(weights)
        inp = load_inputs(data, spec, n=inputs, split="test")
        x, names = for_model(inp.x, net), inp.classes
        if method not in ("sink", "histogram"):
            raise ConfigError(f"unknown scan method {method!r}", hint="use --method sink or --method histogram")
        res = backdoor_scan(net, x, method=method, sites=sites if method == "histogram" else None,
                            sigmas=None if sigmas is None else parse_sigmas(sigmas), relative=not absolute, samples=samples,
                            threshold=threshold, seed=seed, class_names=names, model_name=model)
        d = res.data
        if d["suspect"] is None:
            typer.echo(f"{model}: no backdoor suspected (top class {d['top_class']} scores {d['score']:.2f} <= {threshold})")
        else:
            typer.echo(f"{model}: suspected backdoor target class {d['suspect']} ({d['suspect_name']}), score {d['score']:.2f} > {threshold}")
        where = d["sites"] if isinstance(d["sites"], list) else [f"{k}: {', '.join(v)}" for k, v in d["sites"].items()]
        typer.echo(f"  method {d['method']}; noise at {'; '.join(where)}; top-class share {[round(v, 3) for v in d['top_share']]}")
        if out:
            res.save(Path(out) / "scan.json")
            typer.echo(f"  wrote {out}/scan.json")
