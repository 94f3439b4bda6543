"""``innerprobe pullback`` on a language model: token ids in, one relevance per token out (docs/pullback.md).

Called by :mod:`innerprobe.cli.pullback` when ``--data`` holds integer token ids [N, T] and the model
has a token embedding (a local Hugging Face folder, a TransformerLens or zoo transformer). The
pullback is taken at the token embedding (or ``--layer``) and reduced per token as
sum_d embedding_d x map_d (``reduce='dot'``), next to the plain gradient reduced the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ..errors import ConfigError


def lm_target(text: str, n: int, vocab: int, position: int):
    """--target for a language model: 'pred', a token id, one per input (5,7,9), or a logit difference 'A-B'."""
    from ..pullback import LogitDiff, TokenTarget

    t = text.strip().lower()
    if t == "pred":
        return (
            None,
            f"the predicted next token at position {position}" if position == -1 else "the predicted next token",
        )
    try:
        if "-" in t.lstrip("-"):
            a, b = t.split("-", 1)
            ids = [int(a), int(b)]
            target, desc = LogitDiff(ids[0], ids[1], position), f"logit[{ids[0]}] - logit[{ids[1]}]"
        else:
            ids = [int(v) for v in t.split(",") if v.strip()]
            if len(ids) not in (1, n):
                raise ConfigError(
                    f"--target lists {len(ids)} tokens for {n} inputs", hint="give one token id, or one per input"
                )
            one = ids if len(ids) > 1 else ids[0]
            target, desc = TokenTarget(one, position), f"token {one}"
    except ValueError:
        raise ConfigError(
            f"cannot read --target {text!r} for a language model",
            hint="use pred, a token id (42), one per input (5,7,9) or a logit difference IO-S (5-7)",
        ) from None
    if not ids or any(not 0 <= v < vocab for v in ids):
        raise ConfigError(
            f"--target {text!r} has token ids outside 0..{vocab - 1}", hint=f"the vocabulary has {vocab} tokens"
        )
    return target, f"{desc} at position {position}"


def token_heatmap(rel: dict, tokens, path: Path, title: str) -> None:
    """Rows: inputs; columns: positions; one panel per method; diverging colours symmetric around 0."""
    import numpy as np

    from ..core.plotting import new_figure, savefig

    n, T = tokens.shape
    fig, axes = new_figure(len(rel), 1, size=(max(4.0, 0.45 * T + 1.5), 1.0 + 0.35 * n * len(rel)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], rel.items()):
        m = float(np.abs(r).max()) or 1.0
        ax.imshow(r, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
        ax.set_yticks(range(n), [f"#{i}" for i in range(n)], fontsize=7)
        ax.set_xticks(range(T), [str(int(v)) for v in tokens[0]], fontsize=7)
        ax.set_title(f"{name}: embedding x map per token (x labels: input #0's token ids)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)


def run_lm(
    net, x, spec_text: str, target: str, position: int, preset: str | None, temperature, layer, out: Path, desc: str
) -> None:
    """Pullback and gradient token attributions of one target; writes attributions.npz, summary.json,
    section.json and token_relevance.png, and echoes the coverage (and a warning when nothing was gated)."""
    import numpy as np
    import torch

    from ..core.trees import logits_of
    from ..pullback import ExcitationPullback, Gradient, PullbackWarning
    from ..report.sections import Section
    from ..results import Result, provenance

    with torch.no_grad():
        logits = logits_of(net(x))
    if logits.dim() != 3:
        raise ConfigError(
            f"the model returned logits of shape {tuple(logits.shape)} for token ids",
            hint="a language model returns logits [N, positions, vocab]",
        )
    tgt, tdesc = lm_target(target, x.shape[0], logits.shape[-1], position)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PullbackWarning)
        ep = ExcitationPullback(net, temperature, preset=preset, functional=True, layer=layer)
        pb = ep.attribute(x, tgt)
    site = ep._tap.rsite
    gd = Gradient(net, layer=site.site).attribute(x, tgt)
    values = ep.layer_values
    rel = (
        {"pullback": (pb * values).sum(-1).numpy(), "gradient": (gd * values).sum(-1).numpy()} if pb.dim() == 3 else {}
    )
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "tokens": x.numpy(),
        "logits_last": logits[:, -1].numpy(),
        "pullback_map": pb.numpy(),
        "gradient_map": gd.numpy(),
        **{f"{k}_relevance": v for k, v in rel.items()},
    }
    np.savez_compressed(out / "attributions.npz", **arrays)
    section = Section(f"Excitation pullbacks: {spec_text}", order=60)
    section.paragraphs.append(
        f"{desc}; target {tdesc}; attributed at {site}; rules: {ep.rules.description}; {ep.coverage}. "
        "Relevance per token: sum over the embedding dimension of embedding x map."
    )
    if rel:
        token_heatmap(rel, x.numpy(), out / "token_relevance.png", f"{spec_text}: {tdesc}")
        section.figure(
            "token_relevance.png",
            "Per input (rows) and position (columns): embedding x pullback and embedding x "
            "gradient, summed over the embedding dimension (red +, blue -, each panel scaled by its max |r|).",
        )
    res = Result(
        "pullback",
        data={
            "model": spec_text,
            "inputs": desc,
            "target": target,
            "target_read": tdesc,
            "position": position,
            "preset": preset,
            "layer": str(site),
            "coverage": ep.coverage.to_dict(),
            "n_inputs": int(x.shape[0]),
            "arrays": "attributions.npz",
        },
        provenance=provenance(
            model=spec_text,
            config={
                "preset": preset,
                "temperature": temperature,
                "target": target,
                "position": position,
                "rules": ep.rules.to_dict(),
            },
        ),
    )
    res.save(out / "summary.json")
    section.save(out)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    typer.echo(
        f"wrote {out}/attributions.npz, summary.json, section.json"
        + (", token_relevance.png" if rel else "")
        + f" ({ep.coverage})"
    )
