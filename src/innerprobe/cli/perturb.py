"""``innerprobe perturb``: an APEX sweep with plots; docs/apex.md. (``innerprobe scan`` lives in cli/scan.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from .executor import address_option, executor_kwargs, executor_option, workers_option
from .inputs import SUFFIXES, for_model, load_inputs, read_file
from .spec import parse_model

SIGMA_HELP = (
    "noise scales: a comma list '0.1,0.3,1,3' or a geometric grid 'LO:HI:N' (e.g. '0.02:20:31'); "
    "absolute unless --relative"
)


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


def _index_option(text: Optional[str], what: str, n: int):
    """--position / --tokens: None, an int or comma list, or a .npy/.pt/.npz file of integers (read by cli/inputs.py)."""
    if text is None:
        return None
    text = text.strip()
    if Path(text).suffix in SUFFIXES:
        v, _ = read_file(text, what=what)
        if v.is_floating_point():
            raise ConfigError(f"{what} file {text} holds {v.dtype} values", hint="positions and token ids are integers")
        return v[:n] if v.dim() >= 1 and len(v) > n else v  # the inputs were cut to the first n as well
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        extra = " (-1 is the last token)" if what == "--position" else " of token ids"
        raise ConfigError(
            f"cannot read {what} {text!r}", hint=f"an int, a comma list of ints, or a .npy/.pt file{extra}"
        ) from None
    if not vals:
        raise ConfigError(f"{what} is empty", hint="give an int or a comma list of ints")
    return vals[0] if what == "--position" and len(vals) == 1 else vals


def _short(v) -> str:
    return str(v) if not isinstance(v, list) else f"per input ({v[:4]}{'...' if len(v) > 4 else ''})"


def register(app: typer.Typer) -> None:
    @app.command("perturb")
    def perturb(
        model: str = typer.Option(
            ...,
            "--model",
            "-m",
            help="zoo name (e.g. digits-mlp or digits-mlp@1 for seed 1), path/file.py:factory, or a local HF folder",
        ),
        sigmas: str = typer.Option("0.02:20:31", "--sigmas", help=SIGMA_HELP),
        samples: int = typer.Option(64, "--samples", "-k", help="K noisy passes per input and sigma"),
        sites: Optional[List[str]] = typer.Option(
            None,
            "--sites",
            help="noise sites (repeat or comma-separate); default: after every hidden nonlinearity (module or "
            "functional, e.g. 'blocks.0.mlp/gelu#0'); 'residual' = after every transformer block; ':input' = the model input (token embedding for token ids)",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="output folder (results, plots, section.json); an interrupted run resumes here"
        ),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help="safetensors weights for a file.py:factory model"
        ),
        data: Optional[str] = typer.Option(
            None,
            "--data",
            help="inputs: a zoo recipe, 'digits', 'fashion-mnist', or a .npy/.npz/.pt/.safetensors file (default: the "
            "zoo model's own data, same seed)",
        ),
        inputs: int = typer.Option(200, "--inputs", "-n", help="number of inputs to probe"),
        split: str = typer.Option("test", "--split", help="'test' or 'train' inputs of a zoo dataset"),
        noise: str = typer.Option("gaussian", "--noise", help="gaussian (default), multiplicative or dropout"),
        relative: bool = typer.Option(False, "--relative", help="scale sigma by each site's clean activation RMS"),
        tau: float = typer.Option(0.5, "--tau", help="survival threshold for escape noise"),
        rule: str = typer.Option("survival", "--rule", help="escape rule: survival (share < tau) or majority"),
        seed: int = typer.Option(0, "--seed", help="seed of the common random numbers"),
        chunk_rows: Optional[int] = typer.Option(
            None,
            "--chunk-rows",
            help="max rows per forward pass (default: from a ~1 GiB activation budget, at most 8192)",
        ),
        position: Optional[str] = typer.Option(
            None,
            "--position",
            help="language models: the position whose logits are read: -1 (last token, default), an int, or a .npy/.pt "
            "file of one index per input",
        ),
        tokens: Optional[str] = typer.Option(
            None,
            "--tokens",
            help="language models: candidate token ids instead of the whole vocabulary: a comma list '5,17' or a "
            ".npy/.pt file [N, C] (one row per input)",
        ),
        executor: str = executor_option(),
        workers: Optional[int] = workers_option(),
        address: Optional[str] = address_option(),
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
        pos, cand = _index_option(position, "--position", len(x)), _index_option(tokens, "--tokens", len(x))
        site_list = _sites(sites)
        remote = executor_kwargs(executor, workers, address)
        opts = dict(
            samples=samples,
            sites=site_list[0] if site_list == ["residual"] else site_list,
            noise=noise,
            relative=relative,
            tau=tau,
            rule=rule,
            seed=seed,
            chunk_rows=chunk_rows,
            position=pos,
            tokens=cand,
        )
        labels = None if y is None or cand is not None or pos is not None else y.numpy()
        if remote is None:
            res = apex(net, x, sig, out=out, labels=labels, model_name=model, progress=True, **opts)
        else:  # shards of inputs as tasks (docs/scale.md); out/tasks makes the run resumable
            from .. import scale

            res = scale.apex(
                net, x, sig, store=out / "tasks", labels=labels, model_name=model, progress=True, **remote, **opts
            )
            res.save(out / "apex.json")
        d = res.data
        f1 = plots.escape_histogram(res, out / "escape_noise.png", title=f"escape noise, {model}")
        f2 = plots.sample_dependence_plot(
            {"D": res.arrays["D"]},
            res.arrays["sigmas"],
            out / "sample_dependence.png",
            floors={"D": res.arrays["D_floor"]},
            title=f"D(sigma), {model}",
        )
        f3 = plots.class_histograms(res, out / "class_histograms.png", names)
        med = d["median_escape_sigma"]
        sec = Section(
            f"APEX perturb: {model}",
            order=30,
            paragraphs=[
                f"{d['N']} inputs, K = {d['K']}, {d['S']} sigmas from {sig[0]:.3g} to {sig[-1]:.3g} ({d['noise']} "
                f"noise, "
                f"{'relative to RMS' if d['relative'] else 'absolute'}), sites: {', '.join(d['sites'])}.",
                f"Median escape noise {med if med is None else f'{med:.3g}'}; left-censored {d['left_censored']:.1%}, "
                f"right-censored {d['right_censored']:.1%}. D(sigma) crosses half-way at sigma = "
                f"{d['half_way_sigma']:.3g}. "
                f"Largest sigma: most frequent class {d['large_noise_argmax_class']}, normalised entropy "
                f"{d['large_noise_entropy']:.2f}.",
            ],
        )
        sec.table(
            "clean activation RMS per noise site", ["site", "RMS"], [[k, round(v, 4)] for k, v in d["site_rms"].items()]
        )
        sec.figure(f1, "escape-noise histogram (censored inputs shown separately)")
        sec.figure(f2, "sample-dependence curve with its Monte Carlo floor (dashed)")
        sec.figure(f3, "large-noise class histogram per sigma")
        sec.save(out)
        typer.echo(
            f"APEX on {model}: {d['N']} inputs x {d['S']} sigmas x K={d['K']} in {d['seconds']:.1f}s"
            + (f" (resumed {d['resumed_chunks']}/{d['chunks']} chunks)" if d["resumed_chunks"] else "")
        )
        typer.echo(f"  sites: {', '.join(d['sites'])}")
        typer.echo(
            f"  median escape noise: {'n/a (>50% censored)' if med is None else f'{med:.4g}'}; "
            f"censored left {d['left_censored']:.1%} / right {d['right_censored']:.1%}"
        )
        typer.echo(
            f"  D(sigma): {res.arrays['D'][0]:.3f} -> {res.arrays['D'][-1]:.3f} (floor "
            f"{res.arrays['D_floor'][-1]:.3f}); "
            f"half-way at sigma = {d['half_way_sigma']:.4g}"
        )
        top = "non-finite logits" if d["large_noise_argmax_is_nonfinite"] else f"class {d['large_noise_argmax_class']}"
        typer.echo(
            f"  largest sigma: top outcome {top} "
            f"(share {d['large_noise_argmax_share']:.3f}), entropy {d['large_noise_entropy']:.3f}"
        )
        if d["readout"]["kind"] == "lm":
            typer.echo(
                f"  readout: logits at position {_short(d['readout']['position'])}, over "
                + ("the whole vocabulary" if d["readout"]["tokens"] is None else f"{d['C']} candidate tokens")
            )
        if d["nonfinite_passes"]:
            typer.echo(
                f"  warning: {d['nonfinite_passes']} noisy passes gave non-finite logits (up to "
                f"{d['nonfinite_share_max']:.1%} "
                "at one sigma); counted as their own outcome, never as a class",
                err=True,
            )
        typer.echo(f"  wrote {out}/apex.json, apex.npz, 3 plots, section.json")
