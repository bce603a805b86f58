"""End to end with the real parts: a Prefect server, a process work pool, the deployments of
prefect.yaml, a worker, a bare git repository as the code origin (tiny parameters) and a local
directory as the shared DVC remote. Two deployment runs of the pipeline with different `train.lr`
start at once on the one worker: each clones origin into its own workspace, and each ends with
its own results, recorded as an experiment on origin. Everything it starts is stopped, and
checked gone, at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from tests.support.machines import git, make_origin
from tests.support.workspace import free_port, spawn_logged, stop, tail, tiny_params, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
HEALTH_TIMEOUT_S = 90
RUN_TIMEOUT_S = 600
UUID_RE = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def make_env(home: Path, api_url: str, remote: Path) -> dict[str, str]:
    """An explicit environment for every child: none of this process's PREFECT_* settings
    (conftest sets some at import) leak in, and the API, home and storage are private."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {
        **base,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-storage"),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "RNN_DVC_REMOTE": str(remote),
    }


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120):
    result = subprocess.run(
        ["prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def stop_tree(p: subprocess.Popen) -> list[psutil.Process]:
    """Stop ``p``, then kill its process group and every descendant seen before it stopped
    (the worker starts flow runs in sessions of their own). Returns the ones still alive."""
    try:
        family = psutil.Process(p.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    stop(p)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
    for child in family:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    _, alive = psutil.wait_procs(family, timeout=10)
    return alive


def start_run(lr: float, cwd: Path, env: dict[str, str]) -> str:
    params = json.dumps({"backend": "tf", "overrides": {"train": {"lr": lr}}})
    out = cli("deployment", "run", "rnn-pipeline/default", "--params", params, cwd=cwd, env=env)
    match = UUID_RE.search(out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    return match.group(1)


def wait_final(client, run_ids: list[str], worker_log: Path) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = {i: client.read_flow_run(i) for i in run_ids}
        if all(r.state is not None and r.state.is_final() for r in runs.values()):
            return runs
        assert time.monotonic() < deadline, tail(worker_log, 8000)
        time.sleep(1)


def test_concurrent_deployment_runs_on_a_worker(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = make_env(tmp_path, url, tmp_path / "dvc-remote")
    origin = make_origin(tmp_path, tiny_params())
    deployer = tmp_path / "deployer"  # where `prefect deploy` runs: a clone, as a user has
    git("clone", "-q", str(origin), str(deployer), cwd=tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()

    started: list[subprocess.Popen] = []
    server_log, worker_log = logs / "server.log", logs / "worker.log"
    try:
        server = spawn_logged(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path,
            env,
            server_log,
        )
        started.append(server)
        wait_healthy(url, server, server_log, HEALTH_TIMEOUT_S)

        cli("work-pool", "create", "rnn-pool", "--type", "process", cwd=deployer, env=env)
        cli("variable", "set", "rnn_git_origin", str(origin), cwd=deployer, env=env)
        cli("variable", "set", "rnn_git_ref", "main", cwd=deployer, env=env)
        cli("--no-prompt", "deploy", "--all", cwd=deployer, env=env)

        worker_dir = tmp_path / "worker"  # the worker's machine: no checkout of the project
        worker_dir.mkdir()
        worker = spawn_logged(
            ["prefect", "worker", "start", "--pool", "rnn-pool"], worker_dir, env, worker_log
        )
        started.insert(0, worker)  # stopped first

        ids = {lr: start_run(lr, deployer, env) for lr in (0.5, 2.0)}
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            runs = wait_final(client, list(ids.values()), worker_log)
            artifacts = {
                lr: {
                    a.key: a
                    for a in client.read_artifacts(
                        artifact_filter=ArtifactFilter(
                            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
                        )
                    )
                }
                for lr, run_id in ids.items()
            }
            logs = {
                lr: [
                    log.message
                    for log in client.read_logs(
                        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
                    )
                ]
                for lr, run_id in ids.items()
            }
        for run in runs.values():
            assert run.state.is_completed(), f"{run.state}\n{tail(worker_log, 8000)}"
        perplexities = {}
        for lr, by_key in artifacts.items():
            assert {"rnn-comparison", "rnn-samples", "train-tf-scratch-rnn"} <= set(by_key)
            table = by_key["rnn-comparison"].data
            table = json.loads(table) if isinstance(table, str) else table
            assert sorted(row["run"] for row in table) == ["tf-concise-rnn", "tf-scratch-rnn"]
            perplexities[lr] = {row["run"]: row["train ppl"] for row in table}
            assert float(by_key["train-tf-scratch-rnn"].data) == 100.0  # the progress artifact
        assert perplexities[0.5] != perplexities[2.0]
        for messages in logs.values():  # one line per epoch in the run's logs
            assert any(m.startswith("tf-scratch-rnn epoch 2/2: train ppl") for m in messages)

        # Each run is recorded on origin with its own parameters and models.
        check = tmp_path / "check"
        git("clone", "-q", str(origin), str(check), cwd=tmp_path)
        for key, value in (("user.name", "e2e"), ("user.email", "e2e@localhost")):
            git("config", key, value, cwd=check)  # `dvc exp apply` commits
        # the remote first: `dvc exp pull` brings the experiment's outputs from it too
        sh(["dvc", "remote", "add", "--local", "-d", "shared", env["RNN_DVC_REMOTE"]], check, env)
        for lr, run_id in ids.items():
            run = runs[run_id]
            name = f"{run.name}-{run_id[:8]}"
            sh(["dvc", "exp", "pull", "origin", name], check, env)
            sh(["dvc", "exp", "apply", name], check, env)
            sh(["dvc", "pull", "train@tf-scratch-rnn"], check, env)
            record = json.loads((check / "data/models/tf-scratch-rnn/run.json").read_text())
            assert record["params"]["train"]["lr"] == lr
            assert not (check / "data/models/torch-scratch-rnn").exists()
    finally:
        survivors = [p for proc in started for p in stop_tree(proc)]
    assert all(p.poll() is not None for p in started)
    assert not survivors, f"processes left running: {survivors}"


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout
