"""``innerprobe demo``: the one-command demo (zoo cards, every study, the HTML report)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import typer


@dataclass
class Step:
    """One step of the demo: a zoo model or a study, how long it took and whether it worked."""

    kind: str
    name: str
    status: str = "ok"
    seconds: float = 0.0
    note: str = ""
    cpu_seconds: float = 0.0  # CPU time of this process (wall time on a busy machine says little)


@dataclass
class DemoRun:
    out: Path
    steps: list[Step] = field(default_factory=list)

    @property
    def failures(self) -> list[Step]:
        return [s for s in self.steps if s.status != "ok"]


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _error_text(e: BaseException) -> tuple[str, str]:
    """(one line, a traceback tail) for a failure section."""
    from ..errors import InnerprobeError

    if isinstance(e, InnerprobeError):
        line = f"{type(e).__name__}: {e.message}" + (f" (hint: {e.hint})" if e.hint else "")
    else:
        line = f"{type(e).__name__}: {e}"
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    return line, tail


def _failure_section(folder: Path, title: str, what: str, e: BaseException, seconds: float) -> None:
    from ..report.sections import Section

    line, tail = _error_text(e)
    sec = Section(
        title=f"FAILED: {title}",
        order=1,
        paragraphs=[
            f"{what} failed after {seconds:.1f} s with **{line}**",
            "The demo went on with the remaining steps. Traceback tail:",
            f"```{tail}```",
        ],
    )
    sec.save(folder)


def _zoo_step(run: DemoRun, *, quick: bool) -> None:
    """Train what is missing (seed 0) and write one zoo card section per model into out/zoo/."""
    from ..report import zoo_section

    names = zoo_section.demo_recipes(quick)
    _say(f"zoo: {len(names)} models ({'quick: ' if quick else ''}{', '.join(names)}); training the ones not cached")
    for i, name in enumerate(names, 1):
        t0, c0 = time.perf_counter(), time.process_time()
        folder = run.out / "zoo" / name
        try:
            _say(f"  [{i}/{len(names)}] {name}")
            zoo_section.write_model_section(folder, name, seed=0, order=800 + i)  # cards after the studies
            step = Step("model", name, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        except Exception as e:  # keep going: one broken recipe must not hide the rest
            dt = time.perf_counter() - t0
            _failure_section(folder, f"zoo model {name}", f"Training or loading zoo model `{name}` (seed 0)", e, dt)
            step = Step("model", name, "failed", dt, _error_text(e)[0])
            _say(f"    failed: {step.note}")
        run.steps.append(step)
    try:
        zoo_section.write_overview_section(
            run.out / "zoo", [s.name for s in run.steps if s.kind == "model" and s.status == "ok"], seed=0, order=20
        )
    except Exception as e:
        _failure_section(run.out / "zoo", "zoo overview", "Writing the zoo overview", e, 0.0)
        run.steps.append(Step("model", "zoo overview", "failed", 0.0, _error_text(e)[0]))


def _study_steps(run: DemoRun, *, quick: bool, seeds: int) -> None:
    from ..studies import STUDIES, get_study

    names = list(STUDIES)
    if not names:
        _say("studies: none registered yet")
    for i, name in enumerate(names, 1):
        folder = run.out / name
        stale = folder / "section.json"
        if stale.exists():
            stale.unlink()
        _say(f"study [{i}/{len(names)}] {name} (seeds={seeds}{', quick' if quick else ''})")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            fn = get_study(name)
            folder.mkdir(parents=True, exist_ok=True)
            fn(folder, seeds=seeds, quick=quick)
            dt = time.perf_counter() - t0
            run.steps.append(Step("study", name, seconds=dt, cpu_seconds=time.process_time() - c0))
            _say(f"  done in {dt:.1f} s")
        except Exception as e:  # keep going, record it visibly
            dt = time.perf_counter() - t0
            _failure_section(folder, f"study {name}", f"Study `{name}`", e, dt)
            run.steps.append(Step("study", name, "failed", dt, _error_text(e)[0]))
            _say(f"  failed after {dt:.1f} s: {run.steps[-1].note}")


def _summary_section(run: DemoRun, *, quick: bool, seeds: int, total: float) -> None:
    from ..report.sections import Section

    n_fail = len(run.failures)
    sec = Section(
        title="Demo run",
        order=0,
        paragraphs=[
            f"`innerprobe demo{' --quick' if quick else ''} --seeds {seeds}` ran {len(run.steps)} steps in {total:.1f} "
            f"s: "
            f"{len(run.steps) - n_fail} ok, {n_fail} failed."
            + (" Failed steps have their own section below, with the error." if n_fail else ""),
            "Zoo models are seed 0 of each recipe (trained only if not already cached); each study trains any other "
            "seeds it needs. Times include training.",
        ],
    )
    sec.table(
        "Steps (wall and CPU seconds of this process)",
        ["kind", "name", "status", "seconds", "CPU seconds", "note"],
        [
            [
                s.kind,
                s.name,
                s.status if s.status == "ok" else "failed",
                round(s.seconds, 2),
                round(s.cpu_seconds, 2),
                s.note,
            ]
            for s in run.steps
        ],
    )
    sec.save(run.out / "demo-run")


def run_demo(
    out: str | Path = "out/demo", *, quick: bool = False, seeds: int = 3, zoo: bool = True
) -> tuple[Path, DemoRun]:
    """Train what is missing, write the zoo sections, run every registered study, write ``out/report.html``.

    A failing step is recorded (a "FAILED" section with the error) and the demo goes on; the caller
    decides what to do with ``run.failures``. Returns (report path, run).
    """
    from ..errors import ConfigError
    from ..report.html import build_report

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}", hint="use --seeds 3 for 95% CIs over three seeds")
    run = DemoRun(Path(out))
    run.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if zoo:
        _zoo_step(run, quick=quick)
    _study_steps(run, quick=quick, seeds=seeds)
    _summary_section(run, quick=quick, seeds=seeds, total=time.perf_counter() - t0)
    title = "innerprobe demo" + (" (quick)" if quick else "")
    return build_report(run.out, run.out / "report.html", title=title), run


def register(app: typer.Typer) -> None:
    @app.command(
        "demo",
        help="The whole show in one command: train the zoo models that are not cached yet, write a card per model, "
        "run every registered case study into OUT/<study>/, and write OUT/report.html (its path is printed last). "
        "A failing study is recorded in the report and the demo goes on; the exit status is then 1. "
        "--quick uses the 8x8-digits recipes plus induction-attn2l and quick studies (a few minutes once the "
        "models are cached); the full demo uses all twelve recipes, Fashion-MNIST included.",
    )
    def demo(
        out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="Digits recipes + induction-attn2l only, and quick studies."),
        seeds: int = typer.Option(3, "--seeds", help="Seeds per study (headline figures carry 95% CIs over them)."),
    ) -> None:
        t0 = time.perf_counter()
        path, run = run_demo(out, quick=quick, seeds=seeds)
        _say(
            f"demo finished in {time.perf_counter() - t0:.1f} s: {len(run.steps) - len(run.failures)} steps ok, "
            f"{len(run.failures)} failed"
        )
        for s in run.failures:
            _say(f"  FAILED {s.kind} {s.name}: {s.note}")
        typer.echo(str(path))
        if run.failures:
            raise typer.Exit(1)
