"""``innerprobe study NAME``: run one registered case study into a folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ..studies import STUDIES
from .executor import address_option, executor_kwargs, executor_option, workers_option


def _study_list() -> str:
    return ", ".join(STUDIES) if STUDIES else "none registered yet"


def run_study(name: str, out: Path, *, seeds: int = 3, quick: bool = False):
    """Look ``name`` up in :data:`innerprobe.studies.STUDIES`, run it into ``out`` and return its Result."""

    fn = run_study_checks(name, seeds)
    out.mkdir(parents=True, exist_ok=True)
    return fn(out, seeds=seeds, quick=quick)


def run_study_checks(name: str, seeds: int):
    """The study's function, after checking its name and the seed count."""
    from ..errors import ConfigError
    from ..studies import get_study

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}", hint="use --seeds 3 for 95% CIs over three seeds")
    return get_study(name)


def register(app: typer.Typer) -> None:
    @app.command(
        "study",
        help="Run one case study (a small-scale reproduction) and write its results into --out: summary.json "
        "(headline figures with seeds and 95% CIs, provenance), section.json and PNG figures. Make a page of "
        f"them with 'innerprobe report DIR'. Studies: {_study_list()}.",
    )
    def study(
        name: str = typer.Argument(
            ..., metavar="NAME", help=f"Study name, one of: {_study_list()}.", show_default=False
        ),
        out: Path = typer.Option(None, "--out", "-o", help="Folder for the study's files (default: out/NAME)."),
        seeds: int = typer.Option(
            3, "--seeds", help="Seeds (independent repetitions) behind each headline figure and its 95% CI."
        ),
        quick: bool = typer.Option(
            False, "--quick", help="A smaller, faster version of the study (fewer samples and sweeps)."
        ),
        executor: str = executor_option(),
        workers: int = workers_option(),
        address: str = address_option(),
    ) -> None:
        import time

        out_dir = Path(out) if out is not None else Path("out") / name
        remote = executor_kwargs(executor, workers, address)
        t0 = time.perf_counter()
        if remote is None:
            result = run_study(name, out_dir, seeds=seeds, quick=quick)
        else:  # the study as a task on the executor (docs/scale.md); its files are written where it runs
            from .. import scale
            from ..results import Result

            run_study_checks(name, seeds)
            scale.studies([name], out_dir, seeds=seeds, quick=quick, nested=False, **remote)
            result = Result.load(out_dir / "summary.json")
        typer.echo(f"study {name} finished in {time.perf_counter() - t0:.1f} s -> {out_dir}")
        from ..results import describe

        rows = getattr(result, "rows", None) or []
        for r in rows[:12]:  # the headline rows, labelled for a terminal
            typer.echo(f"  {describe(r)}")
        if len(rows) > 12:
            typer.echo(f"  ... {len(rows) - 12} more rows in {out_dir / 'summary.json'}")
        typer.echo(f"see it as a page: innerprobe report {out_dir}")
