"""``innerprobe report DIR``: the HTML report of a folder of results (docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "report",
        help="Turn the result files below DIR (every section.json with its PNG figures, and any result JSON) into "
        "one self-contained static HTML page: inline CSS, figures embedded, a table of contents and a provenance "
        "footer. Opens offline; nothing is fetched.",
    )
    def report(
        folder: Path = typer.Argument(
            ...,
            metavar="DIR",
            help="Folder written by a study, a command's --out or 'innerprobe demo'.",
            show_default=False,
        ),
        out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default: DIR/report.html)."),
        title: str = typer.Option("innerprobe report", "--title", help="Page title."),
    ) -> None:
        from ..report.html import build_report

        path = build_report(folder, out, title=title)
        typer.echo(str(path))
