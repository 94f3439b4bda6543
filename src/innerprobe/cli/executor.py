"""The options every long-running command shares: where its tasks run (docs/scale.md).

``--executor local|ray``, ``--workers N``, ``--address HOST:PORT|auto``: checked by
:func:`innerprobe.core.tasks.get_executor` (out-of-range values are refused, never replaced).
"""

from __future__ import annotations

from typing import Optional

import typer

from ..core.tasks import EXECUTORS, get_executor

EXECUTOR_HELP = (
    f"Run as tasks on {' or '.join(EXECUTORS)} (ray needs Ray: the 'ray' extra of innerprobe; docs/scale.md). "
    "Default: in-process, without tasks."
)
WORKERS_HELP = "Parallel workers: processes for --executor local, CPUs of a local Ray instance for --executor ray."
ADDRESS_HELP = "Join a running Ray cluster at HOST:PORT (or 'auto'); needs --executor ray. Default: a local instance."


def executor_option():
    return typer.Option(None, "--executor", help=EXECUTOR_HELP, show_default=False)


def workers_option():
    return typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False)


def address_option():
    return typer.Option(None, "--address", help=ADDRESS_HELP, show_default=False)


def executor_kwargs(executor: Optional[str], workers: Optional[int], address: Optional[str]) -> dict | None:
    """The checked executor options, or None when none was given (the command runs in-process, without tasks).

    Any executor option makes the run a list of tasks, so ``--executor local`` and ``--executor ray`` give
    bitwise-identical results (the same shards, merged the same way).
    """
    if executor is None and workers is None and address is None:
        return None
    executor = executor or "local"
    get_executor(executor, workers, address)
    return {"executor": executor, "workers": workers, "address": address}
