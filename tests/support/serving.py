"""`rnn serve` in a test: started on a free port, polled until healthy, stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.workspace import free_port, stop


@contextmanager
def rnn_serve(
    args: list[str], cwd: Path, log_dir: Path, env: dict | None = None, up_within: float = 60
) -> Iterator[str]:
    """`rnn serve ARGS` (its output in ``log_dir``/serve-PORT.log) until the block ends;
    yields its base URL."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnn.cli", "serve", "--port", str(port), *args],
            cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + up_within
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"rnn serve did not come up: {log_path}"
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            yield url
        finally:
            stop(proc)
