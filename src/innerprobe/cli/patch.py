"""``innerprobe patch``: test path hypotheses, or measure every edge's effect (exact and EAP)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..errors import ConfigError, DataError
from .executor import address_option, executor_kwargs, executor_option, workers_option
from .inputs import FORMATS, SUFFIXES, load_inputs, read_file
from .spec import ModelSpec, parse_model

HYP_HELP = (
    "a hypothesis file (.txt/.hyp) or its text, ';' between lines: 'all', 'none', "
    "'edge SRC -> DST[:SLOT]' (globs allowed) or a path 'embed -> a0.1:v -> a1.2:k -> out' ('...' = any run of nodes). "
    "Repeat for several hypotheses. Node names: run with --show-graph."
)


def _inputs(spec: ModelSpec, net, data: Optional[str], counterfactual: str, n: int, seed: int):
    """(x_r, x_c, loss_fn or None, mask or None, description, metric) where ``metric`` names the loss for
    sharded runs (innerprobe.scale.edge_effects): {"metric": "kl"|"lm_loss"|"label_loss", "mask", "labels"}."""
    import torch

    from ..patch.metrics import label_loss, lm_loss

    gen = torch.Generator().manual_seed(seed)
    cfg = getattr(net, "cfg", None)
    if data is None and isinstance(cfg, dict) and "vocab" in cfg:
        from ..zoo.induction import sample_induction

        kw = {"vocab": cfg["vocab"], "seq_len": cfg["n_ctx"]}
        xr = sample_induction(n, gen, **kw)
        if counterfactual == "structure":
            xc = sample_induction(n, gen, structure=xr, **kw).tokens
        elif counterfactual == "resample":
            xc = sample_induction(n, gen, **kw).tokens
        else:
            xc = _tensor(counterfactual, "--counterfactual")[:n]
        return (
            xr.tokens,
            xc,
            lm_loss(xr.tokens, xr.predictable),
            xr.predictable,
            f"induction task ({n} pairs), loss on predictable tokens",
            {"metric": "lm_loss", "mask": xr.predictable},
        )
    y = None
    if data is None:
        inp = load_inputs(None, spec, n=2 * n)
        x, y = inp.x, inp.y
    else:  # a file's labels 'y' (if any) define the loss that EAP / EAP-IG differentiate
        x, y = _tensor(data, "--data", labels=True)
    if counterfactual in ("resample", "structure"):
        if len(x) < 2:
            raise DataError("need at least 2 inputs to resample counterfactuals")
        x_r = x[:n]
        perm = torch.randperm(len(x), generator=gen)
        perm = perm[perm >= 0][: len(x_r)]
        perm = torch.where(perm == torch.arange(len(x_r)), (perm + 1) % len(x), perm)  # never pair an input with itself
        x_c = x[perm]
    else:
        x_r, x_c = x[:n], _tensor(counterfactual, "--counterfactual")[:n]
    if x_r.shape != x_c.shape:
        raise DataError(f"reference inputs {tuple(x_r.shape)} and counterfactuals {tuple(x_c.shape)} differ in shape")
    loss, metric = None, {"metric": "kl"}
    if y is not None and x_r.dtype.is_floating_point:
        loss, metric = label_loss(y[: len(x_r)]), {"metric": "label_loss", "labels": y[: len(x_r)]}
    elif not x_r.dtype.is_floating_point:
        loss, metric = lm_loss(x_r), {"metric": "lm_loss"}
    return x_r, x_c, loss, None, f"{len(x_r)} pairs, counterfactual: {counterfactual}", metric


def _rho(r) -> str:
    """A rank correlation, or why there is none (every exact effect tied: no ranking to compare)."""
    return f"{r:.3f}" if r is not None and np.isfinite(r) else "undefined (all exact effects tied)"


def _ci(lo, hi) -> str:
    return "[no CI]" if lo is None else f"[{lo:.3f}, {hi:.3f}]"


def _tensor(path: str, what: str, *, labels: bool = False):
    if Path(path).suffix not in SUFFIXES:
        raise DataError(
            f"{what} {path!r} is not an input file",
            hint=f"--counterfactual takes resample, structure or a file; --data a file: {FORMATS}",
        )
    x, y = read_file(path, what=what)
    return (x, y) if labels else x


def _hypothesis_rows(
    graph, runs, hyps, h0, delta, kl, ue0, sec, out: Path, *, model: str, counterfactual: str, seed: int
):
    """Per hypothesis: proportion explained (ratio of means, bootstrap CI), AUE, KL; a circuit figure for edge sets.
    Returns (table records, headline rows)."""
    from ..patch import plots
    from ..patch.path import evaluate
    from ..patch.workflow import proportion_ci
    from ..results import row

    clean = runs.clean["out"]
    rows, heads_rows = [], []
    for h in hyps:
        o = evaluate(graph, runs, h)
        ue = delta(o).numpy()
        ci = proportion_ci(ue, ue0, seed=seed)
        est, lo, hi = ci.estimate, ci.lo, ci.hi
        heads_rows.append(
            row(
                "proportion_explained",
                ci,
                model=model,
                seeds=[seed],
                condition={"hypothesis": h.name, "baseline": h0.name, "counterfactual": counterfactual},
            )
        )
        r = h.resolve(graph)
        rows.append(
            {
                "hypothesis": h.name,
                "edge_set": r.edges is not None,
                "proportion": est,
                "lo": lo,
                "hi": hi,
                "aue": float(ue.mean()),
                "kl": float(kl(clean, o).mean()),
            }
        )
        typer.echo(
            f"{h.name}: proportion explained {est:.3f} {_ci(lo, hi)}  (AUE {ue.mean():.4f}, "
            f"baseline AUE {ue0.mean():.4f})"
        )
        if r.edges is not None and r.edges:
            fname = f"hypothesis_{len(rows)}.png"
            plots.draw_circuit(graph, set(r.edges), out / fname, title=h.name[:80])
            sec.figure(fname, f"Edges of hypothesis '{h.name}'.")
    return rows, heads_rows


def _head_panels(graph, runs, metric, clean, exact) -> dict | None:
    """Per-head [layers, heads] panels: node-patching effect and the summed exact effects of edges into Q, K, V."""
    import numpy as np

    from ..patch.path import avoid_node, edge_mask, evaluate_edges

    heads = [n for n in graph.nodes.values() if n.head is not None]
    if not heads:
        return None
    L, H = 1 + max(n.layer for n in heads), 1 + max(n.head for n in heads)
    o = evaluate_edges(graph, runs, edge_mask(graph, [avoid_node(graph, n.name) for n in heads]))
    node = np.zeros((L, H))
    for n, oo in zip(heads, o):
        node[n.layer, n.head] = float(metric(oo).mean() - metric(clean).mean())
    panels = {"node patching effect": node}
    for s in ("q", "k", "v"):
        arr = np.zeros((L, H))
        for i, e in enumerate(graph.edges):
            if e.slot == s:
                nd = graph.nodes[e.dst]
                arr[nd.layer, nd.head] += float(exact[i])
        panels[f"sum of edge effects into {s}"] = arr
    return panels


def register(app: typer.Typer) -> None:
    @app.command("patch")
    def patch(
        model: str = typer.Option(
            ...,
            "--model",
            "-m",
            help="zoo name (e.g. induction-attn2l or induction-attn2l@1), path/file.py:factory, or a local HF GPT-2 "
            "folder",
        ),
        hypothesis: Optional[List[str]] = typer.Option(None, "--hypothesis", "-H", help=HYP_HELP),
        edges: bool = typer.Option(
            False,
            "--edges",
            help="measure every single edge's effect, exactly (batched) and by EAP / EAP-IG; draw the circuit and head "
            "heatmaps",
        ),
        counterfactual: str = typer.Option(
            "structure",
            "--counterfactual",
            "-c",
            help="'structure' (same segment layout, new tokens; induction models), 'resample' (independent inputs) or "
            "an input file of x_c (.npy/.npz/.pt/.safetensors)",
        ),
        baseline: str = typer.Option(
            "none",
            "--baseline",
            help="baseline hypothesis H0 for proportion explained (text like --hypothesis); default: no paths",
        ),
        data: Optional[str] = typer.Option(
            None,
            "--data",
            help="x_r inputs: a .npy/.npz/.pt/.safetensors file (default: the model's own task data, same seed)",
        ),
        pairs: int = typer.Option(256, "--inputs", "--pairs", "-n", help="number of inputs: (x_r, x_c) pairs"),
        graph_kind: str = typer.Option("auto", "--graph", help="graph builder: auto, transformer, tl, hf or fx"),
        ig_steps: int = typer.Option(10, "--ig-steps", help="EAP-IG interpolation steps (with --edges)"),
        top: int = typer.Option(15, "--top", help="edges drawn in the --edges circuit diagram"),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help="safetensors weights for a file.py:factory model"
        ),
        seed: int = typer.Option(0, "--seed", help="seed for sampling pairs and bootstrap"),
        show_graph: bool = typer.Option(False, "--show-graph", help="print the graph's nodes and edges and exit"),
        out: Optional[Path] = typer.Option(
            None,
            "--out",
            "-o",
            help="output folder: summary.json, section.json, PNG figures [required unless --show-graph]",
        ),
        executor: str = executor_option(),
        workers: Optional[int] = workers_option(),
        address: Optional[str] = address_option(),
    ):
        """Path patching (Goldowsky-Dill et al. 2023): proportion of loss explained by path hypotheses, or every edge's effect."""
        import torch

        from ..core.graph import build_graph
        from ..patch import plots
        from ..patch.hypothesis import Hypothesis
        from ..patch.metrics import kl_div
        from ..patch.path import evaluate, prepare
        from ..patch.workflow import edge_report
        from ..report.sections import Section
        from ..results import Result, provenance

        spec = parse_model(model)
        net = spec.load(weights)
        graph = build_graph(net, graph_kind)
        if show_graph:
            if data is not None:  # never ignored: a --data given with --show-graph is still checked
                _tensor(data, "--data")
            typer.echo(graph.summary())
            typer.echo("edges: " + ", ".join(str(e) for e in graph.edges))
            return
        if out is None:
            raise ConfigError("--out is required", hint="e.g. --out runs/patch")
        remote = executor_kwargs(executor, workers, address)
        if not hypothesis and not edges:
            raise ConfigError("nothing to do: pass --hypothesis and/or --edges")
        if pairs < 2:
            raise ConfigError(f"--inputs (pairs) must be >= 2, got {pairs}")
        hyps = [Hypothesis.load(h) for h in (hypothesis or [])]
        for h in hyps:
            h.resolve(graph)  # validate before any work
        h0 = Hypothesis.load(baseline)
        x_r, x_c, loss, mask, desc, metric_spec = _inputs(spec, net, data, counterfactual, pairs, seed)
        runs = prepare(graph, x_r, x_c)
        clean = runs.clean["out"]
        kl = kl_div(mask)
        delta_name = "signed loss" if loss is not None else "KL to G(x_r)"
        delta = (lambda o: loss(o) - loss(clean)) if loss is not None else (lambda o: kl(clean, o))  # noqa: E731
        ue0 = delta(evaluate(graph, runs, h0)).numpy()
        out.mkdir(parents=True, exist_ok=True)
        sec = Section(f"Path patching: {model}", order=45)
        sec.paragraphs.append(
            f"{graph.summary().splitlines()[0]}. Data: {desc}. delta = {delta_name}; baseline H0 = {h0.name}. "
            f"Command: innerprobe patch --model {model} ..."
        )
        tables = {}
        rows, heads_rows = _hypothesis_rows(
            graph, runs, hyps, h0, delta, kl, ue0, sec, out, model=model, counterfactual=counterfactual, seed=seed
        )
        if rows:
            tables["hypotheses"] = rows
            sec.table(
                "Proportion explained (ratio of means, 95% bootstrap CI over pairs)",
                ["hypothesis", "proportion [CI]", "AUE", "KL"],
                [
                    [
                        r["hypothesis"],
                        f"{r['proportion']:.3f} {_ci(r['lo'], r['hi'])}",
                        f"{r['aue']:.4f}",
                        f"{r['kl']:.4f}",
                    ]
                    for r in rows
                ],
            )
        if edges:
            metric = loss if loss is not None else (lambda o: kl(clean, o))  # noqa: E731
            sharded = None
            if remote is not None:  # exact effects as edge shards on the executor (docs/scale.md)
                from .. import scale

                sharded = scale.edge_effects(
                    net, x_r, x_c, graph=graph_kind, store=out / "tasks", progress=True, **metric_spec, **remote
                )[1]
            rep = edge_report(
                graph, runs, metric, ig_steps=ig_steps, estimates=loss is not None, progress=True, exact=sharded
            )
            exact = rep.exact
            nan = torch.full_like(exact, float("nan"))
            eap, eapig = (rep.eap, rep.eap_ig) if loss is not None else (nan, nan)
            tables["edges"] = rep.table()
            order = rep.order()
            topk = {graph.edges[int(i)]: float(exact[i]) for i in order[:top]}
            plots.draw_circuit(
                graph, topk, out / "edges_circuit.png", title=f"top {top} edges by exact effect ({delta_name})"
            )
            sec.figure(
                "edges_circuit.png", f"The {top} edges with the largest exact single-edge effect; width ~ effect."
            )
            panels = _head_panels(graph, runs, metric, clean, exact)
            if panels:
                plots.head_heatmaps(panels, out / "heads.png", title=f"{model}: per-head effects ({delta_name})")
                sec.figure(
                    "heads.png",
                    "Per head: node-patching effect and the summed exact effects of edges into its Q, K and V.",
                )
            if loss is not None:
                corr = rep.correlations()
                rho, rho_ig = corr[0]["eap"], corr[0]["eap_ig"]
                typer.echo(f"Spearman(exact, EAP) = {_rho(rho)}; Spearman(exact, EAP-IG {ig_steps}) = {_rho(rho_ig)}")
                plots.scatter(
                    exact.numpy(),
                    eap.numpy(),
                    out / "eap_vs_exact.png",
                    xlabel="exact effect",
                    ylabel="EAP",
                    title=f"Spearman {_rho(rho)}",
                )
                sec.figure("eap_vs_exact.png", "EAP estimates vs exact single-edge effects.")
                tables["rank_correlation"] = corr
            if loss is None:
                typer.echo(
                    "EAP / EAP-IG not computed: they differentiate a loss, and these inputs have no labels "
                    "(pass --data FILE with a 'y' array); exact effects are against KL to G(x_r)"
                )
            for i in order[:10]:
                est = f"  EAP {float(eap[i]):+.4f}  EAP-IG {float(eapig[i]):+.4f}" if loss is not None else ""
                typer.echo(f"  {str(graph.edges[int(i)]):<22} exact {float(exact[i]):+.4f}{est}")
        sec.save(out)
        Result(
            "patch",
            rows=heads_rows,
            data={
                "model": model,
                "graph": graph.summary(),
                "delta": delta_name,
                "baseline": h0.name,
                "data": desc,
                "baseline_aue": float(ue0.mean()),
            },
            tables=tables,
            provenance=provenance(seed=seed, model=model, config={"pairs": pairs, "counterfactual": counterfactual}),
        ).save(out / "summary.json")
        typer.echo(f"wrote {out}/summary.json and section.json")
