"""Background processes that can be stopped whole: a server or worker started in a session of
its own with its output in a log, a health poll, and a stop that leaves no process behind (the
tests and the benchmarks start their servers with these)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def stop(p: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate, wait, terminate again (Prefect turns a 2nd SIGTERM into SIGKILL), kill; then
    the process group (started with start_new_session, so its id is the pid)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


def spawn_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a background ``cmd`` with its output in ``log``, in a session of its own so that
    ``stop`` can kill its whole process group."""
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Poll a Prefect API's ``/health`` until it answers 200; RuntimeError (with the server log's
    tail) if the server exits or is not healthy within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prefect server not healthy after {timeout:g} s:\n{tail(log)}")
