"""Flows that end badly, served as deployments for tests/e2e/test_alerts.py: one fails with the
project's one-line error, one is killed by a termination signal mid-run (Crashed)."""

from __future__ import annotations

import os
import signal

from prefect import flow, serve

from rnn.errors import PipelineError


@flow(name="always-fails")
def always_fails() -> None:
    raise PipelineError("the corpus URL answered 404", "fix ingest.source")


@flow(name="crashes")
def crashes() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # as a machine shutting down would


if __name__ == "__main__":
    serve(always_fails.to_deployment("alerts"), crashes.to_deployment("alerts"))
