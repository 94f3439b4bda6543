"""``innerprobe zoo list`` / ``innerprobe zoo train``: the model zoo from the command line."""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def _parse_sets(sets: list[str] | None) -> dict:
    from ..errors import ConfigError

    out = {}
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set {s!r} is not KEY=VALUE", hint="e.g. --set target=3 --set rate=0.05")
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out


OTHER_METRICS = ("attack_success", "flipped_memorized", "loss_predictable", "loss_unpredictable", "ln_vocab")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _rows(seeds: list[int] | None) -> list[dict]:
    from ..zoo import RECIPES, status
    from ..zoo.cache import list_entries

    rows = []
    for name, recipe in RECIPES.items():
        from ..errors import InnerprobeError
        from ..zoo.cache import fingerprint

        try:
            fp = fingerprint(name, recipe.version, recipe.resolve({}))
        except InnerprobeError as e:  # e.g. the induction trainer is not installed
            rows.append(
                {
                    "recipe": name,
                    "description": recipe.description,
                    "seed": None,
                    "status": "unavailable",
                    "detail": e.message,
                }
            )
            continue
        wanted = sorted(set(seeds) if seeds else ({0} | {s for s, f, _ in list_entries(name) if f == fp}))
        for seed in wanted:
            state, card = status(name, seed)
            row = {
                "recipe": name,
                "description": recipe.description,
                "seed": seed,
                "status": state.split(":")[0],
                "detail": state if state.startswith("invalid") else None,
            }
            if card:
                row.update(
                    metrics=card.get("metrics", {}),
                    floors=card.get("floors", []),
                    floors_met=card.get("floors_met", {}),
                    all_floors_met=card.get("all_floors_met"),
                    train_seconds=card.get("train_seconds"),
                    path=str(card_dir(name, seed)),
                )
            rows.append(row)
    return rows


def card_dir(name: str, seed: int) -> str:
    from ..zoo import card_path

    return str(card_path(name, seed))


def register(app: typer.Typer) -> None:
    zoo_app = typer.Typer(
        name="zoo",
        no_args_is_help=True,
        add_completion=False,
        help="The model zoo: named recipes (digits, Fashion-MNIST, induction), trained reproducibly "
        "on the CPU and cached in $INNERPROBE_CACHE (default ~/.cache/innerprobe).",
    )

    @zoo_app.command("list")
    def list_cmd(
        as_json: bool = typer.Option(
            False, "--json", help="Print JSON (one object per recipe and seed) instead of a table."
        ),
        seed: Optional[List[int]] = typer.Option(
            None, "--seed", help="Seed(s) to show (repeatable); default: 0 and every cached seed."
        ),
    ):
        """Show every recipe with its cache status per seed, its metrics and whether its floors are met."""
        from ..zoo.cache import cache_root

        rows = _rows(seed)
        if as_json:
            typer.echo(json.dumps({"cache": str(cache_root()), "recipes": rows}, indent=1))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"innerprobe zoo (cache: {cache_root()})")
        for col in ("recipe", "seed", "status", "test acc", "train acc", "other metrics", "floors", "train s"):
            t.add_column(col, overflow="fold")
        for r in rows:
            m = r.get("metrics") or {}
            other = ", ".join(
                f"{k}={_fmt(v)}" for k, v in m.items() if k in OTHER_METRICS and isinstance(v, (int, float))
            )
            fl = r.get("floors") or []
            floors = (
                ("ok" if all(f["met"] for f in fl) else "MISSED " + ",".join(f["metric"] for f in fl if not f["met"]))
                if fl
                else ("-" if m else "")
            )
            style = {"cached": "green", "missing": "yellow"}.get(r["status"], "red")
            secs = f"{r['train_seconds']:.1f}" if r.get("train_seconds") is not None else ""
            t.add_row(
                r["recipe"],
                str(r["seed"]),
                f"[{style}]{r.get('detail') or r['status']}[/{style}]",
                _fmt(m.get("test_accuracy", "")),
                _fmt(m.get("train_accuracy", "")),
                other,
                floors,
                secs,
            )
        Console(width=max(Console().width, 130)).print(t)
        typer.echo("descriptions, parameters and full metrics: innerprobe zoo list --json")

    @zoo_app.command("train")
    def train_cmd(
        name: Optional[str] = typer.Argument(None, help="Recipe name (see 'innerprobe zoo list')."),
        seed: int = typer.Option(0, "--seed", help="Seed: model init, shuffling and data transforms."),
        force: bool = typer.Option(False, "--force", help="Retrain even if a valid cache entry exists."),
        all_: bool = typer.Option(False, "--all", help="Train every recipe (skipping the cached ones unless --force)."),
        sets: Optional[List[str]] = typer.Option(
            None, "--set", help="Override a recipe parameter, KEY=VALUE (repeatable), e.g. --set target=3."
        ),
    ):
        """Train a recipe (or --all) for one seed, with a progress bar, and cache it."""
        import time

        from ..errors import ConfigError
        from ..zoo import RECIPES, get_recipe, load

        if all_ == (name is not None):
            raise ConfigError(
                "give a recipe NAME or --all (not both, not neither)", hint="innerprobe zoo train digits-mlp --seed 0"
            )
        overrides = _parse_sets(sets)
        if all_ and overrides:
            raise ConfigError("--set applies to one recipe, not --all")
        names = list(RECIPES) if all_ else [get_recipe(name).name]
        t0 = time.perf_counter()
        failed = []
        for n in names:
            t = time.perf_counter()
            try:
                _, card = load(n, seed=seed, force=force, progress=None, **overrides)
            except Exception as e:
                if not all_:
                    raise
                failed.append(n)
                typer.secho(f"{n}: failed: {type(e).__name__}: {e}", fg="red", err=True)
                continue
            took = time.perf_counter() - t
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in card["metrics"].items() if isinstance(v, (int, float)))
            floors = (
                "floors met"
                if card.get("all_floors_met")
                else "FLOORS MISSED: " + ", ".join(m for m, ok in card.get("floors_met", {}).items() if not ok)
            )
            typer.echo(
                f"{n} (seed {seed}): {metrics}; {floors}; train {card['train_seconds']:.1f}s, this call {took:.1f}s"
            )
        if all_:
            typer.echo(
                f"zoo seed {seed}: {len(names) - len(failed)}/{len(names)} recipes ready in "
                f"{time.perf_counter() - t0:.1f}s"
            )
            if failed:
                raise typer.Exit(1)

    app.add_typer(zoo_app, name="zoo")
