"""The options every long-running command shares: where its tasks run (docs/scale.md).

``--executor local|ray``, ``--workers N``, ``--address HOST:PORT|auto``: checked by
:func:`innerprobe.core.tasks.get_executor` (out-of-range values are refused, never replaced).
"""

from __future__ import annotations

from typing import Optional

import typer

from ..core.tasks import EXECUTORS, get_executor

EXECUTOR_HELP = f"Where tasks run: {' or '.join(EXECUTORS)} (ray needs Ray: the 'ray' extra of innerprobe; docs/scale.md)."
WORKERS_HELP = "Parallel workers: processes for --executor local, CPUs of a local Ray instance for --executor ray."
ADDRESS_HELP = "Join a running Ray cluster at HOST:PORT (or 'auto'); needs --executor ray. Default: a local instance."


def executor_option():
    return typer.Option("local", "--executor", help=EXECUTOR_HELP, show_default=True)


def workers_option():
    return typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False)


def address_option():
    return typer.Option(None, "--address", help=ADDRESS_HELP, show_default=False)


def executor_kwargs(executor: str, workers: Optional[int], address: Optional[str]) -> dict | None:
    """The checked executor options, or None when the command should run in-process as before."""
    get_executor(executor, workers, address)
    if executor == "local" and workers in (None, 1):
        return None
    return {"executor": executor, "workers": workers, "address": address}
