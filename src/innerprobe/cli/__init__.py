"""The ``innerprobe`` command line: the application layer's one package (docs/cli.md).

One module per command group (``cli/perturb.py``, ``cli/patch.py``, ...), each with ``register(app)``;
all of them read ``--model`` with :mod:`innerprobe.cli.spec` and input files with
:mod:`innerprobe.cli.inputs`, so every command accepts the same specs and formats.

Errors raised on purpose (:class:`~innerprobe.errors.InnerprobeError`) print as one line plus a
hint and exit with status 2; ``INNERPROBE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from .. import __version__
from ..errors import InnerprobeError

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
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """innerprobe: APEX, path patching and excitation pullbacks."""


# Each command module defines ``register(app)``, adding its commands (to add one: a module here + its name below).
COMMANDS = ["zoo", "perturb", "scan", "patch", "pullback", "study", "report", "demo"]
for _name in COMMANDS:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def _click_exception_modules() -> list:
    """click's exception modules: typer >= 0.20 vendors click as ``typer._click``; older typer uses click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def command():
    """The click command tree with the shared option grammar and checks attached (cli/options.py)."""
    from .options import apply_grammar

    cmd = typer.main.get_command(app)
    apply_grammar(cmd)
    return cmd


def environment_error(e: BaseException) -> InnerprobeError:
    """An OSError / UnicodeError that reached the top (a file that cannot be written or read) as one line."""
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        where = where if len(where) < 120 else where[:100] + "..."
        return InnerprobeError(
            f"cannot use{where}: {e.strerror or type(e).__name__}",
            hint="check the path: that its folders exist, are folders, and are writable",
        )
    return InnerprobeError(
        f"text that is not valid UTF-8 ({type(e).__name__}: {str(e)[:120]})",
        hint="pass plain UTF-8 text and file names",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning innerprobe errors into one clear line plus a hint."""
    try:
        from .options import refuse_empty

        argv = list(sys.argv[1:] if argv is None else argv)
        refuse_empty(argv)
        rv = command().main(args=argv, prog_name="innerprobe", standalone_mode=False)
    except (InnerprobeError, OSError, UnicodeError) as e:
        if os.environ.get("INNERPROBE_DEBUG"):
            raise
        e = e if isinstance(e, InnerprobeError) else environment_error(e)
        typer.secho(f"error: {e.message}", fg="red", err=True)
        if e.hint:
            typer.echo(f"hint: {e.hint}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # typer.Exit / click usage errors
        if isinstance(e, typer.Exit):
            return int(e.exit_code or 0)
        if isinstance(e, typer.Abort) and isinstance(e.__context__, EOFError):  # click turns EOFError into Abort
            typer.secho(f"error: unexpected end of input ({e.__context__ or 'EOF'})", fg="red", err=True)
            return 2
        if isinstance(e, typer.Abort):
            typer.echo("aborted", err=True)
            return 130
        for mod in _click_exception_modules():
            if isinstance(e, getattr(mod, "Exit", ())):
                return e.exit_code
            if isinstance(e, getattr(mod, "ClickException", ())):
                e.show()
                return e.exit_code
            if isinstance(e, getattr(mod, "Abort", ())):
                typer.echo("aborted", err=True)
                return 130
        raise
    # with standalone_mode=False, a command's ``raise typer.Exit(code)`` comes back as the return value
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
