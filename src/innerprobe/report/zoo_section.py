"""Report sections for the model zoo: one card per model, plus an overview table.

Each card shows the recipe, seed, measured metrics against their floors (met / not met), the
training time, a few sample inputs with predicted and true labels (for ``induction-attn2l``, the
per-head previous-token and induction scores instead) and the training curve. Everything shown is
read from the zoo card (``zoo.load`` / ``zoo.status``) or computed here from the cached model.
"""

from __future__ import annotations

from pathlib import Path

from .sections import Section

#: Metrics shown first on a classifier card, in this order (others follow).
_FIRST = (
    "test_accuracy",
    "train_accuracy",
    "clean_accuracy",
    "attack_success",
    "loss_repeat",
    "loss_predictable",
    "loss_unpredictable",
)


def demo_recipes(quick: bool) -> list[str]:
    """The recipes the demo shows: every demo recipe, or (quick) the 8x8-digits ones, induction-attn2l and
    ioi-llama (one seed). Recipes that exist for one study's evaluation (``Recipe.demo`` False) are left out."""
    from .. import zoo

    names = [n for n, r in zoo.RECIPES.items() if r.demo]
    if quick:
        names = [
            n
            for n in names
            if zoo.RECIPES[n].dataset == "digits" or zoo.RECIPES[n].kind == "induction" or n == "ioi-llama"
        ]
    return names


def _floor_text(f: dict) -> str:
    return f"{f['op']} {f['threshold']:.4g}"


def metrics_table(card: dict) -> tuple[list[str], list[list]]:
    """(columns, rows): every scalar metric with its floor and whether it is met."""
    metrics = card.get("metrics") or {}
    floors = {f["metric"]: f for f in card.get("floors") or []}
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    order = [k for k in _FIRST if k in scalar] + sorted(k for k in scalar if k not in _FIRST)
    rows = []
    for k in order:
        f = floors.get(k)
        rows.append([k, scalar[k], _floor_text(f) if f else "", ("met" if f["met"] else "not met") if f else ""])
    for k, f in floors.items():  # a floor whose metric is missing is shown (and not met)
        if k not in scalar:
            rows.append([k, None, _floor_text(f), "met" if f.get("met") else "not met"])
    return ["metric", "value", "floor", "status"], rows


def _curve_figure(card: dict, path: Path) -> Path | None:
    from .plots import PALETTE, new_figure, savefig, style_axes

    curve = [r for r in card.get("curve") or [] if isinstance(r, dict)]
    if not curve:
        return None
    xkey = "epoch" if "epoch" in curve[0] else "step" if "step" in curve[0] else None
    xs = [r.get(xkey, i + 1) for i, r in enumerate(curve)] if xkey else list(range(1, len(curve) + 1))
    floors = {f["metric"]: f for f in card.get("floors") or []}
    if card.get("recipe") == "induction-attn2l" or "loss_predictable" in curve[0]:
        fig, ax = new_figure(size=(5.2, 3.2))
        for i, (key, label) in enumerate(
            (
                ("loss", "training loss (all tokens)"),
                ("loss_predictable", "predictable (repeated) tokens"),
                ("loss_unpredictable", "unpredictable tokens"),
            )
        ):
            ys = [r.get(key) for r in curve]
            if any(y is not None for y in ys):
                ax.plot(xs, ys, label=label, color=PALETTE[i], linewidth=1.4)
        for metric, f in floors.items():
            ax.axhline(f["threshold"], color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"floor: {metric} {f['op']} {f['threshold']:.2f}",
                xy=(0.98, f["threshold"]),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=7,
                color="grey",
            )
        style_axes(ax, title=f"{card.get('recipe')} training", xlabel=xkey or "step", ylabel="cross-entropy (nats)")
        ax.legend(fontsize=7, frameon=False)
        return savefig(fig, path)
    fig, (ax1, ax2) = new_figure(1, 2, size=(8.4, 3.0))
    ax1.plot(xs, [r.get("loss") for r in curve], color=PALETTE[0], linewidth=1.4)
    style_axes(ax1, title="training loss", xlabel=xkey or "epoch", ylabel="cross-entropy")
    if all((r.get("loss") or 0) > 0 for r in curve):
        ax1.set_yscale("log")
    for i, (key, label) in enumerate(
        (
            ("train_accuracy_running", "train (running, as trained)"),
            ("test_accuracy", "test"),
            ("attack_success", "attack success (triggered test)"),
        )
    ):
        ys = [r.get(key) for r in curve]
        if any(y is not None for y in ys):
            ax2.plot(xs, ys, label=label, color=PALETTE[i + 1], linewidth=1.4)
    by_line: dict[tuple, list[str]] = {}
    for metric, f in floors.items():  # one label per distinct floor line
        by_line.setdefault((f["op"], f["threshold"]), []).append(metric)
    for (op, threshold), metrics in by_line.items():
        ax2.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        ax2.annotate(
            f"floor: {', '.join(metrics)} {op} {threshold:.2f}",
            xy=(0.98, threshold - 0.01),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="top",
            fontsize=7,
            color="grey",
        )
    style_axes(ax2, title="accuracy", xlabel=xkey or "epoch", ylabel="accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.legend(fontsize=7, frameon=False, loc="center right")
    return savefig(fig, path)


def _predict(model, x):
    import torch

    from ..core.hooks import preserved_state

    with torch.no_grad(), preserved_state(model, eval=True):
        return model(x).argmax(-1)


def _samples_figure(model, card: dict, name: str, seed: int, path: Path) -> tuple[Path, str]:
    """Sample inputs with predicted vs. true (or trained-on) labels; returns (path, caption)."""
    import torch

    from .. import zoo
    from .plots import image_grid, savefig

    params = card.get("params") or {}
    overrides = {
        k: v for k, v in params.items() if k in zoo.get_recipe(name).params and zoo.get_recipe(name).params[k] != v
    }
    split = zoo.recipe_data(name, seed, **overrides)
    classes = split.classes
    short = (lambda i: classes[int(i)].split("/")[0][:8]) if len(classes[0]) > 2 else (lambda i: classes[int(i)])
    panel = 1.25 if len(classes[0]) > 2 else 0.95  # room for class names like "Ankle boot"
    transform = params.get("transform")
    ok, bad = "#1a7f37", "#c62828"
    if transform == "random_labels":
        x, y = split.x_train[:10], split.y_train[:10]
        pred = _predict(model, x)
        titles = [f"pred {short(p)}\nlabel {short(t)}" for p, t in zip(pred, y)]
        caption = (
            "Training images with the shuffled labels the model was trained on: it fits them (memorisation) "
            "although they carry no information about the image. Green: prediction equals the trained label."
        )
        colors = [ok if p == t else bad for p, t in zip(pred, y)]
    elif transform == "backdoor":
        target = int(params["target"])
        idx = (split.y_test != target).nonzero().flatten()[:5]
        x = split.x_test[idx]
        xt = zoo.apply_trigger(x, params["trigger_size"], params.get("trigger_pattern", "square"))
        pc, pt = _predict(model, x), _predict(model, xt)
        y = split.y_test[idx]
        x = torch.cat([x, xt])
        titles = [f"pred {short(p)}\ntrue {short(t)}" for p, t in zip(pc, y)] + [
            f"pred {short(p)}\n(target {short(target)})" for p in pt
        ]
        colors = [ok if p == t else bad for p, t in zip(pc, y)] + [bad if p == target else ok for p in pt]
        caption = (
            f"Top row: clean test images. Bottom row: the same images with the "
            f"{params['trigger_size']}x{params['trigger_size']} "
            f"trigger stamped on; red where the backdoor flips the prediction to the target class {classes[target]}."
        )
        fig = image_grid(x, titles, ncols=5, colors=colors, panel=panel)
        return savefig(fig, path), caption
    elif transform == "label_noise":
        flipped = list((split.meta or {}).get("flipped_indices") or [])[:5]
        true = list((split.meta or {}).get("true_labels") or [])[:5]
        xt = split.x_test[:5]
        pt = _predict(model, xt)
        titles = [f"pred {short(p)}\ntrue {short(t)}" for p, t in zip(pt, split.y_test[:5])]
        colors = [ok if p == t else bad for p, t in zip(pt, split.y_test[:5])]
        x = xt
        if flipped:
            xf = split.x_train[torch.tensor(flipped)]
            pf = _predict(model, xf)
            noisy = split.y_train[torch.tensor(flipped)]
            titles += [f"pred {short(p)}\nnoisy {short(n)} (true {short(t)})" for p, n, t in zip(pf, noisy, true)]
            colors += [bad if p == n else ok for p, n in zip(pf, noisy)]
            x = torch.cat([xt, xf])
        caption = (
            "Top row: test images. Bottom row: training images whose labels were flipped; red where the model "
            "memorised the wrong (noisy) label."
        )
        fig = image_grid(x, titles, ncols=5, colors=colors, panel=panel)
        return savefig(fig, path), caption
    else:
        # one test image per class, the first of each
        idx = [int((split.y_test == c).nonzero()[0]) for c in range(len(classes)) if (split.y_test == c).any()]
        x, y = split.x_test[idx], split.y_test[idx]
        pred = _predict(model, x)
        titles = [f"pred {short(p)}\ntrue {short(t)}" for p, t in zip(pred, y)]
        colors = [ok if p == t else bad for p, t in zip(pred, y)]
        caption = "The first test image of each class, with the model's prediction (green: correct, red: wrong)."
    fig = image_grid(x, titles, ncols=10 if len(x) >= 10 else 5, colors=colors, panel=panel)
    return savefig(fig, path), caption


def _head_scores(card: dict, sec: Section, path: Path) -> Path | None:
    """Per-head previous-token and induction scores: a table and a two-panel heatmap."""
    import numpy as np

    from .plots import new_figure, savefig

    m = card.get("metrics") or {}
    prev, ind = m.get("prev_token_scores"), m.get("induction_scores")
    if not prev or not ind:
        sec.paragraphs.append("This card has no per-head scores.")
        return None
    prev, ind = np.asarray(prev, dtype=float), np.asarray(ind, dtype=float)
    rows = [[f"L{l}.H{h}", prev[l, h], ind[l, h]] for l in range(prev.shape[0]) for h in range(prev.shape[1])]
    sec.table(
        "Per-head attention scores (mean attention to the previous token; at predictable positions, to the token "
        "after the earlier copy of the current token)",
        ["head", "previous-token score", "induction score"],
        rows,
    )
    fig, axes = new_figure(1, 2, size=(2.2 + 1.1 * prev.shape[1] * 2, 0.9 + 0.7 * prev.shape[0]))
    for ax, values, title in ((axes[0], prev, "previous-token score"), (axes[1], ind, "induction score")):
        im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(values.shape[1]), [f"H{h}" for h in range(values.shape[1])], fontsize=8)
        ax.set_yticks(range(values.shape[0]), [f"L{l}" for l in range(values.shape[0])], fontsize=8)
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.5 else "black")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return savefig(fig, path)


def _top_heads(card: dict) -> str:
    """Which heads score highest (computed from the card, never assumed)."""
    import numpy as np

    m = card.get("metrics") or {}
    out = []
    for key, label in (("prev_token_scores", "previous-token"), ("induction_scores", "induction")):
        v = np.asarray(m.get(key) or [[]], dtype=float)
        if v.size:
            l, h = np.unravel_index(int(np.nanargmax(v)), v.shape)
            out.append(f"Highest {label} score: L{l}.H{h} ({v[l, h]:.2f}).")
    return " ".join(out)


def model_section(folder: str | Path, name: str, seed: int, model, card: dict, *, order: int = 21) -> Path:
    """Write the card of one zoo model (from its loaded model and card) as ``folder/section.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_floors = len(card.get("floors") or [])
    n_met = sum(bool(f.get("met")) for f in card.get("floors") or [])
    sec = Section(title=f"Zoo: {name} (seed {seed})", order=order, open=False)
    secs = card.get("train_seconds")
    sec.paragraphs.append(
        f"**{card.get('description', name)}.** {card.get('n_parameters', '?')} parameters"
        + (
            f", trained in {secs:.1f} s on {card.get('train_threads', '?')} CPU thread(s)"
            if isinstance(secs, (int, float))
            else ""
        )
        + (f"; floors met: {n_met} of {n_floors}." if n_floors else "; this recipe has no floors.")
        + ("" if card.get("all_floors_met", True) else " **Not every floor is met.**")
    )
    params = card.get("params") or {}
    data = card.get("data") or {}
    info = []
    if params.get("transform") == "backdoor":
        info.append(
            f"Backdoor: target class {params.get('target')}, {params.get('trigger_size')}x{params.get('trigger_size')} "
            f"{params.get('trigger_pattern', 'square')} trigger, poisoning rate {params.get('rate')}"
            + (f", {data['n_poisoned']} poisoned training images" if "n_poisoned" in data else "")
            + "."
        )
    if params.get("transform") == "label_noise" and "flipped_indices" in data:
        info.append(f"Label noise: {len(data['flipped_indices'])} training labels flipped (indices on the card).")
    if params.get("transform") == "random_labels":
        agree = (card.get("metrics") or {}).get("label_agreement_with_true")
        info.append(
            "Random labels: training labels shuffled across images"
            + (f" (agreement with the true labels {agree:.3f})." if isinstance(agree, float) else ".")
        )
    if info:
        sec.paragraphs.extend(info)
    cols, rows = metrics_table(card)
    sec.table("Metrics measured after training, with the zoo's floors", cols, rows)
    if card.get("recipe") == "induction-attn2l" or "induction_scores" in (card.get("metrics") or {}):
        hp = _head_scores(card, sec, folder / "head_scores.png")
        if hp is not None:
            sec.figure(hp, "Per-head scores on held-out sequences (attention weights, 0 to 1). " + _top_heads(card))
    else:
        try:
            sp, caption = _samples_figure(model, card, name, seed, folder / "samples.png")
            sec.figure(sp, caption)
        except Exception as e:  # the data may be unavailable (e.g. Fashion-MNIST files); the card still shows
            sec.paragraphs.append(f"Sample inputs not shown: {type(e).__name__}: {getattr(e, 'message', e)}")
    cp = _curve_figure(card, folder / "curve.png")
    if cp is not None:
        sec.figure(cp, "Training curve" + (" (dashed: the floors)" if card.get("floors") else "") + ".")
    v = card.get("versions") or {}
    if v:
        sec.paragraphs.append(
            "Trained with "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + f"; cache key {card.get('fingerprint', '?')}."
        )
    return sec.save(folder)


def write_model_section(folder: str | Path, name: str, seed: int = 0, *, order: int = 21, train: bool = True) -> Path:
    """Load (training if missing and ``train``) zoo model ``name``/``seed`` and write its card section."""
    from .. import zoo

    model, card = zoo.load(name, seed=seed, train_if_missing=train)
    return model_section(folder, name, seed, model, card, order=order)


def write_overview_section(folder: str | Path, names: list[str], seed: int = 0, *, order: int = 20) -> Path:
    """One table of every listed model's headline metrics and floors, read from the cache (no training)."""
    from .. import zoo

    folder = Path(folder)
    rows, total = [], 0.0
    for name in names:
        state, card = zoo.status(name, seed)
        if card is None:
            rows.append([name, seed, state, None, None, None, ""])
            continue
        m = card.get("metrics") or {}
        headline = ", ".join(f"{k}={m[k]:.3f}" for k in _FIRST if isinstance(m.get(k), (int, float)))
        secs = card.get("train_seconds")
        total += secs if isinstance(secs, (int, float)) else 0.0
        floors = card.get("floors") or []
        rows.append(
            [
                name,
                seed,
                state,
                card.get("n_parameters"),
                secs,
                headline,
                "met" if all(f.get("met") for f in floors) else "not met",
            ]
        )
    n_met = sum(r[-1] == "met" for r in rows)
    sec = Section(
        title="Model zoo",
        order=order,
        paragraphs=[
            f"{len(names)} zoo models (seed {seed}); {n_met} meet every floor. Their training took {total:.0f} s in "
            f"all "
            f"(measured when each was trained; cache: `{zoo.cache_root()}`). Each model has a card (sample inputs, "
            f"training curve) at the end of the report.",
        ],
    )
    sec.table(
        "Zoo models", ["recipe", "seed", "cache", "parameters", "train seconds", "headline metrics", "floors"], rows
    )
    return sec.save(folder)
