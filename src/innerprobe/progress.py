"""Progress bars for long work (rich), quiet when not on a terminal or when disabled.

Set ``INNERPROBE_PROGRESS=0`` to silence them, ``=1`` to force them.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    flag = os.environ.get("INNERPROBE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(
    iterable: Iterable[T], description: str = "working", total: int | None = None, enable: bool | None = None
) -> Iterator[T]:
    """``for x in track(items, "training digits-mlp"): ...`` with a rich progress bar on stderr."""
    if not (enabled() if enable is None else enable):
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
