"""Helpers shared by the DVC/Prefect tests and benchmarks/bench_orchestration.py: the tiny
configuration, a fresh git copy of the project, and starting/stopping server processes."""

from __future__ import annotations

import os
from pathlib import Path

from pool import checkout
from pool.checkout import KEPT, PIPELINE_OUTPUTS, project_files  # noqa: F401
from pool.processes import spawn_logged, stop, tail, wait_healthy  # noqa: F401
from rnn.ports import free_port  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
CORPORA = SHARED / "corpora"
TIME_MACHINE = CORPORA / "timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
GUTENBERG = CORPORA / "timemachine-gutenberg.txt"
SHAKESPEARE = CORPORA / "tinyshakespeare.txt"


def tiny_params(lr: float = 1.0) -> dict:
    """params.yaml shrunk so the whole pipeline (four runs) takes seconds, on the book's text."""
    return checkout.tiny_params(TIME_MACHINE, lr)


def copy_project(dest: Path, params: dict | None = None, git: bool = True) -> Path:
    """The project copied to ``dest`` (pool/checkout.py) with ``params`` (default: tiny)."""
    return checkout.copy_project(dest, params or tiny_params(), git)


def drain_prefect_clients() -> None:
    """Send this process's queued Prefect logs and events now and stop their workers, while the
    server they go to is up: a test that points the client at a server of its own and then stops
    it would otherwise leave a worker that never drains (the session's harness waits on it)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()
