"""Helpers shared by the DVC/Prefect tests and benchmarks/bench_orchestration.py: the tiny
configuration, a fresh git copy of the project, and starting/stopping server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
CORPORA = SHARED / "corpora"
TIME_MACHINE = CORPORA / "timemachine.txt"
# What the pipeline writes in a working tree; a copy must start without it.
PIPELINE_OUTPUTS = ("data/", "reports/", "dvc.lock", "dvc_plots/", ".rnn-workspace.lock")
KEPT = {"data/README.md"}


def tiny_params(lr: float = 1.0) -> dict:
    """params.yaml shrunk so the whole pipeline (four runs) takes seconds."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source=str(TIME_MACHINE), sha1=None)
    params["partition"].update(
        max_tokens=3000, train=0.8, valid=0.1, test=0.1, batch_size=4, num_steps=10
    )
    params["train"].update(
        epochs=2,
        lr=lr,
        checkpoint_every=0,
        threads=1,  # 16 units: a second thread only adds synchronisation
    )
    params["models"]["rnn"]["num_hiddens"] = 16
    params["evaluate"].update(num_preds=10)
    return params


def project_files() -> list[str]:
    """The working tree's files, tracked or untracked but not ignored, minus pipeline outputs."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        f
        for f in files
        if (f in KEPT or not f.startswith(PIPELINE_OUTPUTS)) and (ROOT / f).is_file()
    ]


def copy_project(dest: Path, params: dict | None = None, git: bool = True) -> Path:
    """Copy the project to ``dest`` with ``params`` (default: tiny) as params.yaml; with ``git``,
    make it a fresh repository with one commit (DVC needs one)."""
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    if git:
        ident = ["-c", "user.email=t@t", "-c", "user.name=t"]
        for cmd in (["init", "-q"], [*ident, "add", "-A"], [*ident, "commit", "-qm", "init"]):
            subprocess.run(["git", *cmd], cwd=dest, check=True, capture_output=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
