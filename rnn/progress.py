"""A rich progress bar over epochs on a terminal; silent when output is not a terminal (CI, DVC)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextlib.contextmanager
def epoch_progress(
    name: str, total: int, done: int, enabled: bool = True
) -> Iterator[Callable[[dict], None]]:
    console = Console(file=sys.stderr)
    if not (enabled and console.is_terminal):
        yield lambda row: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(name, total=total, completed=done, status="")

        def advance(row: dict) -> None:
            status = f"ppl {row['train/perplexity']:.2f}  {row['train/tokens_per_s']:,.0f} tok/s"
            if "valid/perplexity" in row:
                status += f"  valid {row['valid/perplexity']:.2f}"
            bar.update(task, advance=1, status=status)

        yield advance
