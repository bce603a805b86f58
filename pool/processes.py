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
from contextlib import suppress
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


def spawn_logged(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, append: bool = False
) -> subprocess.Popen:
    """Start a background ``cmd`` with its output in ``log`` (appended to, or anew), in a
    session of its own so that ``stop`` can kill its whole process group."""
    with log.open("ab" if append else "wb") as out:
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


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with suppress(OSError):  # a zombie child of ours counts as gone
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """A stack process (server, worker) logging to ``log`` across restarts; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return spawn_logged(cmd, cwd, env, log, append=True).pid


def healthy(url: str) -> bool:
    with suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
        return r.status == 200
    return False


def stop_tree(pid: int | None, timeout: float = 15) -> None:
    """SIGTERM a process and everything under it (flow runs sit in sessions of their own), then
    SIGKILL what is left; returns once all are gone."""
    if not alive(pid):
        return
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, left = psutil.wait_procs(family, timeout=timeout)
    for p in left:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(left, timeout=10)
