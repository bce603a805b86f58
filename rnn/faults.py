"""Named kill points for the fault-injection tests: ``RNN_KILL_AT=point`` makes the process
SIGKILL itself when it reaches ``point`` (``point@n``: the n-th time), the way a lost machine or
the OOM killer would stop it there; ``point:raise`` raises an unexpected exception there instead
(a bug's path through the CLI), ``point:interrupt`` sends it SIGINT (Ctrl-C). Unset (always,
outside the tests) it costs one dict lookup.

The points sit where a crash is most harmful: inside a write before its rename, between two
files that belong together, in the middle of training.
"""

from __future__ import annotations

import os
import signal

from rnn.names import KILL_ENV

ACTIONS = ("raise", "interrupt")
_passed: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    head, _, action = wanted.rpartition(":")  # point names hold colons themselves
    if action in ACTIONS:
        wanted = head
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] < int(nth or 1):
        return
    if action == "raise":
        raise RuntimeError(f"fault injected at {name}")
    os.kill(os.getpid(), signal.SIGINT if action == "interrupt" else signal.SIGKILL)
