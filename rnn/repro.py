"""``rnn repro``: `dvc repro` holding the workspace for its whole run.

`dvc repro` locks only the files of the stage it is running, so a second `dvc repro` in the same
workspace gets as far as that stage and then fails with advice to delete DVC's lock file, which
is wrong while the first run lives. Under ``rnn repro`` the workspace lock (rnn/store/lock.py) is held
from start to end: a second ``rnn repro``, a flow run or a stage command in the workspace fails
at once, naming the run that holds it. The stage commands dvc starts inherit the lock.
"""

from __future__ import annotations

import os
import subprocess

from rnn.store.dvc_cli import dvc_command
from rnn.store.lock import INHERITED_ENV, workspace_lock
from rnn.workspace import Workspace


def repro(ws: Workspace, dvc_args: list[str]) -> int:
    """Run `dvc repro DVC_ARGS` in ``ws`` holding its lock; returns dvc's exit status."""
    with workspace_lock(ws, "`rnn repro` (dvc repro)"):
        env = {**os.environ, INHERITED_ENV: str(ws.lock_file.resolve())}
        return subprocess.run([*dvc_command(), "repro", *dvc_args], cwd=ws.root, env=env).returncode
