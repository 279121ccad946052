"""A rich progress bar on stderr driven by the core's ``progress(stage, fraction, message, **metrics)`` callback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def progress_bar(title: str, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """Yields the callback; the bar shows only on a terminal unless ``enabled`` says otherwise."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(title, total=1.0, message="")

        def update(stage: str, fraction: float, message: str = "", **_: Any) -> None:
            bar.update(task, completed=fraction, description=f"{title}: {stage}", message=message)

        yield update
