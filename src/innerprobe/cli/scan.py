"""``innerprobe scan``: the backdoor scan (smallest trigger + maximum margin, APEX screen reported), docs/scan.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .inputs import dataset_of, for_model, load_inputs
from .spec import parse_model

METHOD_HELP = (
    "full (default): smallest-trigger search + local maximum margin, with a class reference also the "
    "natural-feature check (do the triggers flip clean models of the family?); each read against the reference, "
    "2 stages must agree; the APEX screen runs and is reported. apex: the APEX screen alone; "
    "triggers: data-free maximum margin alone; cleanse: smallest trigger alone; natural: smallest trigger + "
    "natural-feature check (needs a reference)"
)


def _shape(text: Optional[str]):
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(
            f"cannot read --shape {text!r}", hint="one input's shape as comma-separated integers, e.g. 1,8,8"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"--shape {text!r} has a non-positive dimension", hint="e.g. --shape 1,28,28")
    return dims


def _inputs(data, spec, net, inputs, shape):
    if shape is not None:
        if data is not None:
            raise ConfigError(
                "--shape is for a data-free scan; it cannot be combined with --data", hint="drop one of them"
            )
        return None, None
    inp = load_inputs(data, spec, n=inputs, split="test")
    return for_model(inp.x, net), inp.classes


def _echo(res, model: str, err: bool):
    d = res.data
    verdict = (
        f"suspected backdoor target class {d['suspect']} ({d['suspect_name']})"
        if d["suspect"] is not None
        else f"no backdoor named (top class {d['top_class']})"
    )
    typer.echo(
        f"{model}: {verdict}; P(backdoored) = {d['probability']:.3f}; stages agreeing on class {d['top_class']}: "
        f"{', '.join(d['agree']) or 'none'}",
        err=err,
    )
    ref = d.get("reference")
    typer.echo(
        f"  class reference: {ref} (each class read against clean models of that family)"
        if ref
        else "  class reference: none (classes compared only with the model's own other classes)",
        err=err,
    )
    nat = d["stages"].get("natural", {})
    if nat.get("reference_models"):
        typer.echo(
            f"  natural-feature check: triggers stamped on {nat['reference_models']} clean zoo models of {ref}", err=err
        )
    if nat.get("architecture_seen") is False:
        typer.echo(
            "  caution: the model's architecture is none of the eval set's (the reference models'); on unseen "
            "architectures false alarms are more likely (docs/scan.md, leave-one-architecture-out)",
            err=err,
        )
    for why in d.get("out_of_domain", []):
        typer.echo(f"  outside what the scan was calibrated on, no class named: {why}", err=err)
    for st, info in d["stages"].items():
        stat = info.get("statistic", "score")
        typer.echo(f"  {st}: top class {info['top']} ({stat} {info['score']:.2f}), {info['seconds']:.1f} s", err=err)
    typer.echo(f"  {d['seconds']:.1f} s in all. Validated on: {d['validated_on']}", err=err)


def _section(res, out: Path, model: str):
    from ..perturb.scan.figures import trigger_figure
    from ..report.sections import Section

    d = res.data
    sec = Section(
        f"Backdoor scan: {model}",
        order=36,
        paragraphs=[
            f"Method {d['method']} (stages {', '.join(d['stages_run'])}); P(backdoored) = {d['probability']:.3f}; "
            + (f"named class {d['suspect']} ({d['suspect_name']})." if d["suspect"] is not None else "no class named.")
            + "".join(f" Outside what the scan was calibrated on: {why}." for why in d.get("out_of_domain", []))
            + f" Validated on: {d['validated_on']}."
        ],
    )
    cols = [k for k in res.tables["classes"][0] if k != "index"]
    sec.table(
        "per class",
        cols,
        [[r[k] if not isinstance(r[k], float) else round(r[k], 3) for k in cols] for r in res.tables["classes"]],
    )
    f = trigger_figure(res, out / "scan_triggers.png", title=f"synthesised triggers, {model}")
    if f is not None:
        sec.figure(
            f, "per class: the maximum-margin input (top) and the smallest trigger m*p (bottom, with clean inputs)"
        )
    sec.save(out)


def _reference(text: str, data, spec, net) -> str | None:
    """``--reference``: ``auto`` names the family of the inputs' embedded dataset when the calibration has it."""
    from ..perturb.scan import reference as R
    from ..perturb.scan.verdict import load_calibration

    if text == "none":
        return None
    cal = load_calibration()
    if text != "auto":
        R.lookup(cal, text)  # an unknown name is refused here, in one line
        return text
    ds = dataset_of(data, spec)
    name = None if ds is None else R.name_for(ds, net)
    return name if name in cal.get("references", {}) else None


def _reference_models(ref: str | None, method: str, data_free: bool):
    """The natural-feature check's clean zoo models of the reference family (trained on first use), or None."""
    from ..zoo import backdoor_set as bs

    if method == "natural" and ref is None:
        raise ConfigError(
            "--method natural needs a class reference (its clean models are the ones the triggers are stamped on)",
            hint="pass --reference digits-cnn (or another family), or --data digits / fashion-mnist with auto",
        )
    if ref is None or data_free or method not in ("full", "natural"):
        return None
    return bs.reference_models(ref, progress=None)


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        model: str = typer.Option(
            ..., "--model", "-m", help="zoo name (e.g. digits-cnn-backdoor), path/file.py:factory, or a local HF folder"
        ),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help="safetensors weights for a file.py:factory model"
        ),
        data: Optional[str] = typer.Option(
            None,
            "--data",
            help="clean inputs: a zoo recipe, 'digits', 'fashion-mnist', or a .npy/.npz/.pt/.safetensors file "
            "(default: a zoo model's own test set)",
        ),
        shape: Optional[str] = typer.Option(
            None, "--shape", help="data-free scan: one input's shape, e.g. 1,8,8 (runs the maximum-margin stage only)"
        ),
        inputs: int = typer.Option(64, "--inputs", "-n", help="number of clean inputs (>= 1)"),
        method: str = typer.Option("full", "--method", help=METHOD_HELP),
        sites: Optional[str] = typer.Option(
            None, "--sites", help="APEX screen: where noise enters (input (default), first, last, all, or a site spec)"
        ),
        samples: Optional[int] = typer.Option(
            None, "--samples", "-k", help="APEX screen: noisy passes per input and sigma (default 16, >= 1)"
        ),
        restarts: Optional[int] = typer.Option(
            None, "--restarts", help="maximum-margin stage: random starts per class (default 4)"
        ),
        steps: Optional[int] = typer.Option(None, "--steps", help="trigger searches: optimisation steps (default 150)"),
        threshold: Optional[float] = typer.Option(
            None,
            "--threshold",
            help="P(backdoored) at or above which a class may be named "
            "(default: the method's calibrated threshold, recorded in scan.json)",
        ),
        reference: str = typer.Option(
            "auto",
            "--reference",
            help="class reference of clean models of the model's family (docs/scan.md): auto (default: the "
            "family of --data digits / fashion-mnist or a zoo model's dataset, and mlp or cnn; none for other "
            "data), none, or a name such as digits-cnn; with a reference the family's clean zoo models "
            "(trained on first use) also run the natural-feature check",
        ),
        seed: int = typer.Option(0, "--seed", help="seed of the noise and the random starts"),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="write scan.json, scan.npz, scan_triggers.png and section.json here"
        ),
        as_json: bool = typer.Option(
            False, "--json", help="print the scan.json object on stdout (the summary goes to stderr)"
        ),
    ):
        """Backdoor scan: a calibrated P(backdoored), per-class scores, a suspected target class when stages agree."""
        from ..perturb.scan import scan as run_scan

        if inputs < 1:
            raise ConfigError(f"--inputs must be >= 1, got {inputs}", hint="e.g. --inputs 64")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold is a probability in [0, 1], got {threshold}", hint="e.g. --threshold 0.5")
        dims = _shape(shape)
        spec = parse_model(model)
        net = spec.load(weights)
        x, names = _inputs(data, spec, net, inputs, dims)
        ref = _reference(reference, data, spec, net)
        models = _reference_models(ref, method, dims is not None)
        res = run_scan(
            net,
            x,
            method=method,
            shape=dims,
            sites=sites,
            samples=samples,
            restarts=restarts,
            steps=steps,
            threshold=threshold,
            reference=ref,
            reference_models=models,
            seed=seed,
            class_names=names,
            model_name=model,
        )
        if out is not None:
            res.save(Path(out) / "scan.json")
            _section(res, Path(out), model)
        if as_json:
            typer.echo(json.dumps(res.to_dict(), indent=2))
        _echo(res, model, err=as_json)
        if out is not None:
            typer.echo(f"  wrote {out}/scan.json, scan.npz, scan_triggers.png, section.json", err=as_json)
