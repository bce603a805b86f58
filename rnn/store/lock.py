"""One writer per workspace: a second run that would write the same workspace fails at once,
naming the run that holds it, instead of mixing its outputs with the other's.

The lock is ``flock`` on a file in the workspace root: the kernel releases it when its holder
exits, even by SIGKILL, so a crashed run never leaves a stale lock behind. A process may take the
lock again while it holds it (the retraining flow calls the pipeline flow; a flow runs stages).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rnn.errors import PipelineError
from rnn.names import WORKSPACE_HELD_ENV
from rnn.store.atomic import sweep_temporaries
from rnn.workspace import Workspace

# Set by `rnn repro` for the stage commands dvc starts under it: they write the workspace that
# their ancestor holds, as its part of the same run.
INHERITED_ENV = WORKSPACE_HELD_ENV
_held: dict[Path, tuple[IO[str], int]] = {}
_guard = threading.Lock()


def _holder_line(lock_file: Path) -> str:
    try:
        owner = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    if not owner:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"{owner.get('run', 'a run')} (pid {owner.get('pid')} on {owner.get('host')}, since {since})"


def _inherited(path: Path) -> bool:
    """True when a live ancestor (`rnn repro`) holds ``path`` for this process's run."""
    if os.environ.get(INHERITED_ENV) != str(path):
        return False
    try:
        pid = int(json.loads(path.read_text() or "{}").get("pid", 0))
    except (OSError, ValueError, TypeError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def workspace_lock(ws: Workspace, run: str) -> Iterator[None]:
    """Hold ``ws`` for writing as ``run`` (a name a user recognises: a flow run, a command)."""
    path = ws.lock_file.resolve()
    if _inherited(path):
        yield
        return
    with _guard:
        if path in _held:
            handle, depth = _held[path]
            _held[path] = (handle, depth + 1)
            reentered = True
        else:
            reentered = False
    if not reentered:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held across the yield
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise PipelineError(
                f"workspace {ws.root} is in use by {_holder_line(path)}",
                "wait for that run to finish, or give this run its own workspace "
                "(--workdir DIR, or a deployment run, which clones its own)",
            ) from None
        sweep_temporaries(ws.data)  # what a killed holder left half-written
        handle.truncate(0)
        owner = {"run": run, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.write(json.dumps(owner))
        handle.flush()
        with _guard:
            _held[path] = (handle, 1)
    try:
        yield
    finally:
        with _guard:
            handle, depth = _held[path]
            if depth > 1:
                _held[path] = (handle, depth - 1)
            else:
                del _held[path]
                handle.truncate(0)
                handle.close()  # closing the descriptor releases the flock
