"""Named kill points for the fault-injection tests: ``RNN_KILL_AT=point`` makes the process
SIGKILL itself when it reaches ``point`` (``point@n``: the n-th time), the way a lost machine or
the OOM killer would stop it there. Unset (always, outside the tests) it costs one dict lookup.

The points sit where a crash is most harmful: inside a write before its rename, between two
files that belong together, in the middle of training.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "RNN_KILL_AT"
_passed: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
