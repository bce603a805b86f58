"""End to end with the real parts: a Prefect server, a process work pool, the deployments of
prefect.yaml, a worker, and a deployment run of the pipeline (tf only, tiny parameters) in a
fresh git + DVC copy of the project. Everything it starts is stopped, and checked gone, at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from .workspace import copy_project, free_port, spawn_logged, stop, tail, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
HEALTH_TIMEOUT_S = 90
RUN_TIMEOUT_S = 600
UUID_RE = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def make_env(home: Path, repo: Path, api_url: str) -> dict[str, str]:
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
        "RNN_PROJECT_DIR": str(repo),
        "PYTHONPATH": str(repo),  # the flow imports the copy's rnn/, tasks/, flows/
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


def test_deployment_run_on_a_worker(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    repo = tmp_path / "repo"
    env = make_env(tmp_path, repo, url)
    copy_project(repo)
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

        cli("work-pool", "create", "rnn-pool", "--type", "process", cwd=repo, env=env)
        cli("--no-prompt", "deploy", "--all", cwd=repo, env=env)

        worker = spawn_logged(
            ["prefect", "worker", "start", "--pool", "rnn-pool"], repo, env, worker_log
        )
        started.insert(0, worker)  # stopped first

        run = subprocess.run(
            [
                "prefect",
                "deployment",
                "run",
                "rnn-pipeline/default",
                "--param",
                "backend=tf",
                "--watch",
                "--watch-interval",
                "1",
                "--watch-timeout",
                str(RUN_TIMEOUT_S),
            ],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S + 60,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, f"{output}\n--- worker log ---\n{tail(worker_log, 8000)}"
        match = UUID_RE.search(output)
        assert match, output
        flow_run_id = match.group(1)

        # Outputs in the copy: the two tf runs, their evaluations and the report; no torch runs.
        for run_name in ("tf-scratch", "tf-concise"):
            assert (repo / "data/models" / run_name / "model.safetensors").is_file()
            assert (repo / "data/models" / run_name / "run.json").is_file()
            assert (repo / "data/eval" / run_name / "eval.json").is_file()
        assert (repo / "reports/report.md").is_file()
        assert not (repo / "data/models/torch-scratch").exists()
        assert not (repo / "data/models/torch-concise").exists()
        assert not list((repo / "data/eval").glob("torch-*"))

        # The server's record: the run Completed, with both artifacts attached to it.
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters.get("backend") == "tf"
        by_key = {a.key: a for a in artifacts}
        assert {"rnn-comparison", "rnn-samples"} <= set(by_key), sorted(by_key)
        table = by_key["rnn-comparison"].data
        table = json.loads(table) if isinstance(table, str) else table
        assert sorted(row["run"] for row in table) == ["tf-concise", "tf-scratch"]
        assert "tf-scratch" in by_key["rnn-samples"].data
    finally:
        survivors = [p for proc in started for p in stop_tree(proc)]
    assert all(p.poll() is not None for p in started)
    assert not survivors, f"processes left running: {survivors}"
