"""The ``innerprobe`` command line. Each area contributes its commands from ``<area>/cli.py``.

Errors raised on purpose (:class:`~innerprobe.errors.InnerprobeError`) print as one line plus a
hint and exit with status 2; ``INNERPROBE_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from . import __version__
from .errors import InnerprobeError

app = typer.Typer(
    name="innerprobe",
    help="Probe trained neural networks from the inside: APEX activation perturbation, path patching, "
    "excitation pullbacks, on any PyTorch model. Models: a zoo name (see 'innerprobe zoo list'), "
    "path/to/file.py:factory with --weights file.safetensors, or a local Hugging Face folder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"innerprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """innerprobe: APEX, path patching and excitation pullbacks."""


# Each area module defines ``register(app)``, adding its commands; missing areas are skipped.
AREAS = ["innerprobe.zoo.cli", "innerprobe.perturb.cli", "innerprobe.patch.cli", "innerprobe.pullback.cli",
         "innerprobe.studies.cli", "innerprobe.report.cli"]
for _name in AREAS:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:
        if _e.name != _name:
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning innerprobe errors into one clear line plus a hint."""
    try:
        app(args=argv, standalone_mode=False)
    except InnerprobeError as e:
        if os.environ.get("INNERPROBE_DEBUG"):
            raise
        typer.secho(f"error: {e.message}", fg="red", err=True)
        if e.hint:
            typer.echo(f"hint: {e.hint}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as e:  # typer.Exit
        return int(e.code or 0)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            return 130
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
