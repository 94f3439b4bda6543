"""``innerprobe pullback``: excitation-pullback maps (and gradient / ascent for comparison) as PNG grids + arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .inputs import load_inputs
from .spec import ModelSpec, parse_model


def _parse_target(text: str, n: int, n_classes: int):
    """'pred' | 'label' | 'all' | an int | a comma list (one per input) -> (mode, list or None)."""
    from ..errors import ConfigError

    t = text.strip().lower()
    if t in ("pred", "label", "all"):
        return t, None
    try:
        vals = [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"cannot read --target {text!r}", hint="use pred, label, all, a class index (3) or one per input (3,1,4)"
        ) from None
    if not vals or any(not 0 <= v < n_classes for v in vals):
        raise ConfigError(
            f"--target {text!r} has classes outside 0..{n_classes - 1}", hint=f"the model has {n_classes} classes"
        )
    if len(vals) not in (1, n):
        raise ConfigError(f"--target lists {len(vals)} classes for {n} inputs", hint="give one class, or one per input")
    return "classes", vals * n if len(vals) == 1 else vals


def _load_inputs(inputs: Optional[str], spec: ModelSpec, n: int, indices: Optional[str]):
    """(x [N, ...] float tensor, labels or None, description): pullbacks explain float inputs."""
    from ..errors import ConfigError

    idx = None
    if indices:
        try:
            idx = [int(i) for i in indices.split(",") if i.strip()]
        except ValueError:
            raise ConfigError(
                f"cannot read --indices {indices!r}", hint="comma-separated integers, e.g. 0,5,9"
            ) from None
        if not idx:
            raise ConfigError(
                f"--indices {indices!r} names no input", hint="comma-separated integers, e.g. --indices 0,5,9"
            )
    inp = load_inputs(inputs, spec, n=None if idx is not None else n, indices=idx, what="--data")
    return inp.x, inp.y, inp.description  # token ids stay integer (language models)


def register(app: typer.Typer) -> None:
    @app.command("pullback")
    def pullback(
        model: str = typer.Option(
            ...,
            "--model",
            "-m",
            help="Zoo name (digits-cnn, digits-cnn@1), path/file.py:factory (with --weights), or a local HF folder.",
        ),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help=".safetensors weights for a file.py:factory model."
        ),
        inputs: Optional[str] = typer.Option(
            None,
            "--data",
            help="Inputs: a .npy [N, ...], .npz / .safetensors (array 'x', optional labels 'y') or .pt file, or a zoo "
            "recipe / dataset name. Default: the zoo model's test images (same seed).",
        ),
        n: int = typer.Option(6, "--inputs", "-n", help="How many inputs to explain (the first N)."),
        indices: Optional[str] = typer.Option(
            None, "--indices", help="Comma-separated input indices to explain instead of the first N."
        ),
        target: str = typer.Option(
            "pred",
            "--target",
            "-t",
            help="Classifiers: pred (predicted class), label (true class), all (every class: a counterfactual grid), a "
            "class index, or one per input (3,1,4). Language models: pred (next token), a token id, one per input (5,7,9), or a logit difference IO-S (5-7).",
        ),
        position: int = typer.Option(
            -1, "--position", help="Language models: the position whose logits the target reads (-1: the last token)."
        ),
        preset: Optional[str] = typer.Option(
            None,
            "--preset",
            help="original (the authors' first code) or successor (their successor's defaults). Language models "
            "default to successor, on every call.",
        ),
        layer: Optional[str] = typer.Option(
            None, "--layer", help="Language models: the site to attribute to (default: the token embedding)."
        ),
        temperature: Optional[float] = typer.Option(
            None,
            "--temperature",
            "-T",
            help="Gate temperature T; T->0 is the plain gradient. Default: 0.3 (logistic), 0.6 (probit), or the "
            "preset's.",
        ),
        gate: str = typer.Option(
            "logistic", "--gate", help="logistic (sigmoid(z/T), original) or probit (Phi(z/T), successor; try T=0.6)."
        ),
        pool: str = typer.Option(
            "soft", "--pool", help="Max-pool backward: soft (softmax-weighted surrogate at T) or hard."
        ),
        scale: str = typer.Option(
            "global",
            "--scale",
            help="global (one T) or spread (T_l = T * std of each layer's pre-activation; for nets without BatchNorm).",
        ),
        ascent_steps: int = typer.Option(
            5, "--ascent-steps", help="Pullback-ascent steps for the counterfactual column (0 to skip)."
        ),
        out: Path = typer.Option(
            Path("out/pullback"),
            "--out",
            "-o",
            help="Output folder: PNG grids, attributions.npz, summary.json, section.json.",
        ),
    ):
        """Excitation pullbacks (Satkiewicz 2025, arXiv 2507.22832) next to plain gradients, as PNG grids and raw arrays."""
        import torch

        from ..core.checks import call_model
        from ..core.trees import logits_of
        from ..errors import ConfigError, ModelError
        from ..pullback.attribution import ExcitationPullback, Gradient, pullback_ascent
        from ..report.sections import Section
        from ..results import Result, provenance
        from ..studies.pullback_plots import image_grid

        if n < 1:
            raise ConfigError(f"--inputs must be >= 1, got {n}")
        if ascent_steps < 0:
            raise ConfigError(f"--ascent-steps must be >= 0, got {ascent_steps}")
        torch.manual_seed(0)
        spec = parse_model(model)
        net = spec.load(weights)
        x, y, desc = _load_inputs(inputs, spec, n, indices)
        has_embedding = any(isinstance(m, torch.nn.Embedding) for m in net.modules())
        if not x.is_floating_point():
            if not has_embedding:
                raise ConfigError(
                    f"--data holds integers {tuple(x.shape)} but the model has no token embedding",
                    hint="pass float images for a classifier, or token ids [N, T] for a language model",
                )
            from .pullback_lm import run_lm

            return run_lm(net, x, model, target, position, preset or "successor", temperature, layer, out, desc)
        if layer is not None:
            raise ConfigError(
                "--layer is for language models (token ids in --data)", hint="drop --layer for an image classifier"
            )
        try:
            with torch.no_grad():
                logits = logits_of(call_model(net, x))  # a shape the model cannot take: one ModelError line
        except ModelError:
            if not has_embedding:
                raise
            logits = None  # a language model given floats: said below, with the right hint
        if has_embedding and (logits is None or logits.dim() == 3):
            raise ConfigError(
                f"--data holds floats {tuple(x.shape)} but the model is a language model",
                hint="pass integer token ids [N, T] (e.g. torch.save(ids.long(), 'tokens.pt'))",
            )
        if logits.dim() != 2:
            raise ConfigError(
                f"the model returned logits of shape {tuple(logits.shape)}",
                hint="innerprobe pullback explains classifiers (logits [N, classes])",
            )
        n_in, n_classes = x.shape[0], logits.shape[1]
        mode, vals = _parse_target(target, n_in, n_classes)
        pred = logits.argmax(-1)
        if mode == "label" and y is None:
            raise ConfigError(
                "--target label needs labels", hint="use a zoo model's test images, or an .npz with an array 'y'"
            )
        ep = ExcitationPullback(net, temperature, gate=gate, pool=pool, scale=scale, preset=preset)
        temperature = ep.temperature
        gr = Gradient(net)
        if mode == "all":
            targets = torch.arange(n_classes)
            pb = torch.stack([ep.attribute(x, c) for c in range(n_classes)], 1)  # [N, C, ...]
            gd = torch.stack([gr.attribute(x, c) for c in range(n_classes)], 1)
        else:
            t = pred if mode == "pred" else (y if mode == "label" else torch.tensor(vals))
            targets = t
            pb, gd = ep.attribute(x, t), gr.attribute(x, t)
        arrays = {
            "inputs": x.numpy(),
            "targets": targets.numpy(),
            "logits": logits.numpy(),
            "pullback": pb.numpy(),
            "gradient": gd.numpy(),
        }
        if y is not None:
            arrays["labels"] = y.numpy()
        out.mkdir(parents=True, exist_ok=True)
        section = Section(f"Excitation pullbacks: {model}", order=60)
        section.paragraphs.append(f"{desc}; rules: {ep.rules.description}, scale {scale}; {ep.coverage}.")
        if mode == "all":
            cells = [
                [("input", x[i].numpy())] + [("map", pb[i, c].numpy()) for c in range(n_classes)] for i in range(n_in)
            ]
            image_grid(
                cells,
                out / "pullback_grid.png",
                col_labels=["input"] + [f"class {c}" for c in range(n_classes)],
                row_labels=[f"#{i} pred {int(pred[i])}" for i in range(n_in)],
                title=f"excitation pullback, T={temperature:g}",
            )
            cells = [
                [("input", x[i].numpy())] + [("map", gd[i, c].numpy()) for c in range(n_classes)] for i in range(n_in)
            ]
            image_grid(
                cells,
                out / "gradient_grid.png",
                col_labels=["input"] + [f"class {c}" for c in range(n_classes)],
                row_labels=[f"#{i} pred {int(pred[i])}" for i in range(n_in)],
                title="plain gradient",
            )
            section.figure(
                "pullback_grid.png",
                f"Pullbacks (T={temperature:g}) of every class logit; the diagonal-like entries at the predicted "
                f"class, the rest counterfactual.",
            )
            section.figure("gradient_grid.png", "Plain gradients of every class logit, same layout.")
        else:
            cols = ["input", "gradient", f"pullback T={temperature:g}"]
            cells = [[("input", x[i].numpy()), ("map", gd[i].numpy()), ("map", pb[i].numpy())] for i in range(n_in)]
            if ascent_steps:
                asc = pullback_ascent(net, x, targets, steps=ascent_steps, rules=ep._rules_for(x))
                arrays["ascent_delta"] = asc.delta.numpy()
                arrays["ascent_logits"] = asc.logits.numpy()
                cols += [f"ascent ({ascent_steps} steps)", "ascent result"]
                for i in range(n_in):
                    cells[i] += [("delta", asc.delta[i].numpy()), ("input", asc.x[i].numpy())]
            image_grid(
                cells,
                out / "pullback_grid.png",
                col_labels=cols,
                row_labels=[f"#{i} target {int(targets[i])}" for i in range(n_in)],
                title=f"{model}: gradient vs excitation pullback",
            )
            section.figure(
                "pullback_grid.png",
                "Per input: the plain gradient and the excitation pullback of the target logit (red +, blue -, each "
                "map scaled by its max |A|)"
                + (
                    "; the pullback-ascent change x_K - x0 (min-max scaled) and the resulting input."
                    if ascent_steps
                    else "."
                ),
            )
        res = Result(
            "pullback",
            data={
                "model": model,
                "inputs": desc,
                "target": target,
                "temperature": temperature,
                "gate": gate,
                "pool": pool,
                "scale": scale,
                "coverage": ep.coverage.to_dict(),
                "n_inputs": n_in,
                "arrays": "attributions.npz",
            },
            provenance=provenance(
                model=model,
                config={
                    "temperature": temperature,
                    "gate": gate,
                    "pool": pool,
                    "scale": scale,
                    "target": target,
                    "ascent_steps": ascent_steps,
                    "rules": ep.rules.to_dict(),
                },
            ),
        )
        res.save(out / "summary.json")
        import numpy as np

        np.savez_compressed(out / "attributions.npz", **arrays)
        section.save(out)
        typer.echo(f"wrote {out}/pullback_grid.png, attributions.npz, summary.json, section.json ({ep.coverage})")
