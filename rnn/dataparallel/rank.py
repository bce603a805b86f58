"""One rank of a data-parallel training: ``rnn train`` inside a launched world joins it and
trains as its rank, straight through the training layer (not the stage, which would launch
again). Rank 0 writes the outputs and reports each epoch, checkpoint and its summary as JSON
lines in the events file that the launcher (rnn/dataparallel/launcher.py) reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
from pathlib import Path

from rnn.backends.engine import backend_module, resolve_threads
from rnn.backends.world import World, launched_world_size
from rnn.errors import PipelineError
from rnn.names import LAUNCHER_ENV
from rnn.registry import RunKey
from rnn.store.lock import workspace_lock
from rnn.training.loop import train_in_workspace
from rnn.workspace import Workspace

PR_SET_PDEATHSIG = 1


class EventRelay:
    """Rank 0's side: epochs, checkpoints and the summary as JSON lines for the launcher. It
    stands in for the launcher's ``on_epoch`` and ``CheckpointSync`` (rnn/training/loop.py)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _emit(self, event: dict) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(event) + "\n")

    def __call__(self, run: str, row: dict, total: int) -> None:
        self._emit({"kind": "epoch", "run": run, "row": row, "total": total})

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """The launcher fetched before it started the ranks."""

    def push(self, key: str, ckpt_dir: Path) -> None:
        self._emit({"kind": "checkpoint", "key": key})

    def summary(self, summary) -> None:
        from dataclasses import asdict

        self._emit({"kind": "summary", "summary": asdict(summary)})


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (the launcher, or torchrun)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train_as_rank(
    ws: Workspace, params, run: RunKey, epoch_budget: int | None, events: Path | None
) -> object | None:
    """``rnn train`` inside a launched world: join it, train as this rank; rank 0 writes (and
    takes the workspace lock, unless the launcher holds it). Returns rank 0's summary."""
    launched = LAUNCHER_ENV in os.environ
    if launched:
        die_with_parent()
    size = launched_world_size()
    if size != params.train.data_parallel:
        raise PipelineError(
            f"{size} processes were started but train.data_parallel is "
            f"{params.train.data_parallel}",
            f"set train.data_parallel: {size} in params.yaml (it is part of the run's record)",
        )
    threads = resolve_threads(params.train.threads)
    world: World = backend_module(run.backend).join_world(params.train.device, threads)
    try:
        relay = EventRelay(events) if events is not None and world.is_root else None
        lock = (
            workspace_lock(ws, f"`rnn train {run.name}` (rank 0 of {size})")
            if world.is_root and not launched
            else contextlib.nullcontext()
        )
        with lock:
            summary = train_in_workspace(
                ws,
                params,
                run,
                world=world,
                epoch_budget=epoch_budget,
                progress=world.is_root and not launched,
                on_epoch=relay,
                checkpoint_sync=relay,
            )
        if relay is not None:
            relay.summary(summary)
        return summary if world.is_root else None
    finally:
        world.close()
