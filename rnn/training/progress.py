"""Training progress: a rich bar over epochs on a terminal, one plain line per epoch elsewhere
(CI, DVC, a worker's log), so a run's progress is visible wherever its output goes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def epoch_line(name: str, row: dict, total: int) -> str:
    line = (
        f"{name} epoch {row['epoch']}/{total}: train ppl {row['train/perplexity']:.3f}, "
        f"{row['train/tokens_per_s']:,.0f} tokens/s"
    )
    if "valid/perplexity" in row:
        line += f", valid ppl {row['valid/perplexity']:.3f}"
    return line


@contextlib.contextmanager
def epoch_progress(
    name: str, total: int, done: int, enabled: bool = True
) -> Iterator[Callable[[dict], None]]:
    console = Console(file=sys.stderr)
    if not enabled:
        yield lambda row: None
        return
    if not console.is_terminal:
        yield lambda row: print(epoch_line(name, row, total), file=sys.stderr, flush=True)
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
