"""The pool under test, brought up by the project's own stack script (`python -m pool`): its
settings, the test's view of its API, and the steps every pool test shares (bringing it up,
killing a machine, tearing everything down and checking it gone)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from tests.support.machines import git, make_origin, model_hashes
from tests.support.webhook import Receiver
from tests.support.workspace import ROOT, free_port, tiny_params

HEARTBEAT_S, ZOMBIE_AFTER_S = 30, 90  # Prefect's shortest heartbeat; three of them (the default):
# with two, a coordinator whose heartbeat came late under the whole suite's load was crashed
# Crashed within: the automation's window, plus at most one heartbeat interval (the last beat
# may have come just before the kill... or up to one interval earlier) and its evaluation.
CRASH_BOUND_S = ZOMBIE_AFTER_S + HEARTBEAT_S + 15
# A run under a restarted server and database completes within: its own remaining training
# (~2 min alone, up to twice that beside other tests on 2 cores), with room for the restarts.
RESTART_BOUND_S = 420
RUN_TIMEOUT_S = 900
# worker-2 stands for a machine with a GPU: a trainer of its own on the training-gpu queue
MACHINE_WORKERS = (
    "worker-1", "worker-1-pipelines", "worker-2", "worker-2-pipelines", "worker-2-gpu"
)  # fmt: skip


# No network but the machine itself: every client that honours the proxy variables (requests,
# httpx, botocore, git) gets a closed port for anything not on 127.0.0.1.
OFFLINE = {
    name: value
    for key, value in (
        ("http_proxy", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("no_proxy", "127.0.0.1,localhost"),
    )
    for name in (key, key.upper())
}


def pool_cli(*args: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "pool", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"pool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_", "RNN_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**base, **extra}


class Api:
    """The test's view of the Prefect server: flow runs, their logs, deployment runs."""

    def __init__(self, url: str, auth: str | None) -> None:
        self.url, self.auth = url, auth

    @contextmanager
    def settings(self):
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url, PREFECT_API_AUTH_STRING: self.auth}):
            yield

    @contextmanager
    def client(self):
        from prefect.client.orchestration import get_client

        with self.settings(), get_client(sync_client=True) as c:
            yield c

    def start(self, deployment: str, parameters: dict) -> str:
        from prefect.deployments import run_deployment

        with self.settings():
            return str(run_deployment(deployment, parameters=parameters, timeout=0).id)

    def status(self, path: str, auth: str | None) -> int:
        """The HTTP status of a plain POST to the API, with or without the credential."""
        import base64
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.url}{path}", data=b"{}", method="POST")
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    def all_runs(self) -> list:
        with self.client() as c:
            return c.read_flow_runs()

    def final_ppl(self, run_id: str) -> str | None:
        """The last epoch's training perplexity as logged (deterministic on CPU)."""
        found = [
            m.split("train ppl ")[1].split(",")[0] for m in self.logs(run_id) if "train ppl" in m
        ]
        return found[-1] if found else None

    def run(self, run_id: str):
        with self.client() as c:
            return c.read_flow_run(run_id)

    def wait_final(self, run_ids: list[str], timeout: float = RUN_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            runs = {i: self.run(i) for i in run_ids}
            if all(r.state and r.state.is_final() for r in runs.values()):
                return runs
            assert time.monotonic() < deadline, {i: r.state for i, r in runs.items()}
            time.sleep(2)

    def logs(self, run_id: str) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        query = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        found: list = []
        with self.client() as c:  # the API answers in pages (200 by default): read them all
            while page := c.read_logs(log_filter=query, offset=len(found)):
                found += page
        return [log.message for log in found]

    def train_runs(self) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        with self.client() as c:
            deployments = c.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["default"]))
            )
            ids = [d.id for d in deployments if d.entrypoint.startswith("flows/train.py")]
            return [r for r in c.read_flow_runs() if r.deployment_id in ids]

    def children(self, parent_id: str) -> list:
        prefix = f"{self.run(parent_id).name}-"
        return [r for r in self.train_runs() if r.name.startswith(prefix)]

    def epochs_done(self, run_id: str) -> int:
        done = [
            int(m.split(" epoch ")[1].split("/")[0])
            for m in self.logs(run_id)
            if " epoch " in m and ": train ppl" in m
        ]
        return max(done, default=0)

    def machine_of(self, run_id: str) -> str | None:
        for message in self.logs(run_id):
            if " on machine " in message:
                return message.split(" on machine ")[1].split()[0]
        return None


def experiment(origin: Path, run, where: Path) -> dict[str, str]:
    """dvc.lock's model hashes of a pipeline flow run's recorded experiment, read from origin."""
    return recorded(origin, f"{run.name}-{str(run.id)[:8]}", where)


def recorded(origin: Path, name: str, where: Path) -> dict[str, str]:
    """dvc.lock's model hashes, params.yaml and commit of experiment ``name`` on origin."""
    refs = git("ls-remote", str(origin), "refs/exps/*", cwd=where)
    sha = next(line.split()[0] for line in refs.splitlines() if line.endswith(f"/{name}"))
    lock = yaml.safe_load(git("--git-dir", str(origin), "show", f"{sha}:dvc.lock", cwd=where))
    params = yaml.safe_load(git("--git-dir", str(origin), "show", f"{sha}:params.yaml", cwd=where))
    hashes = {
        o["path"]: o["md5"]
        for s in lock["stages"].values()
        for o in s.get("outs", [])
        if o["path"].startswith("data/models/")
    }
    return {"hashes": hashes, "params": params, "sha": sha}


def dvc_repro_hashes(origin: Path, params: dict, stage: str, base: Path, env: dict) -> dict:
    """`dvc repro STAGE` (and what it needs) with ``params`` in a fresh clone of origin."""
    where = base / "uninterrupted"
    git("clone", "-q", str(origin), str(where), cwd=base)
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(
        ["dvc", "repro", "-q", stage], cwd=where, env=env, check=True, capture_output=True
    )
    return {k: v for k, v in model_hashes(where).items() if k.startswith("data/models/")}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def kill_machine(worker_pids: list[int]) -> list[psutil.Process]:
    """SIGKILL a machine's workers and every process under them, all at once, as it dies."""
    family = []
    for pid in worker_pids:
        root = psutil.Process(pid)
        family += [root, *root.children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(family, timeout=10)
    return alive


@dataclass
class Pool:
    """The stack under test and what its steps share."""

    home: Path
    origin: Path
    tmp: Path
    s3: dict[str, str]
    env: dict[str, str]  # the stack's: offline, with the S3 keys
    check_env: dict[str, str]  # the test's own DVC calls
    up: list[str]
    receiver: Receiver  # the alerts' webhook (`pool up --notify`)
    api: Api | None = None
    state: dict = field(default_factory=dict)
    stack_pids: list[int] = field(default_factory=list)
    base: dict = field(default_factory=lambda: {"params_file": "params.yaml", "fan_out": True})

    def reload(self) -> None:
        self.state = json.loads((self.home / "state.json").read_text())
        self.stack_pids = [self.state["server_pid"], *self.state["workers"].values()]


def new_pool(tmp_path: Path, s3_remote: dict[str, str]) -> Pool:
    home, port, receiver = tmp_path / "stack", free_port(), Receiver()
    up = ["up", "--home", str(home), "--workers", "2", "--slots", "1", "--port", str(port),
          "--heartbeat", str(HEARTBEAT_S), "--zombie-after", str(ZOMBIE_AFTER_S),
          "--origin", str(make_origin(tmp_path, tiny_params())),
          "--remote", s3_remote["RNN_DVC_REMOTE"],
          "--remote-endpoint", s3_remote["RNN_DVC_REMOTE_ENDPOINT"],
          "--gpu-workers", "1", "--gpus", "1", "--notify", receiver.url]  # fmt: skip
    env = clean_env({**{k: v for k, v in s3_remote.items() if k.startswith("AWS_")}, **OFFLINE})
    origin = Path(up[up.index("--origin") + 1])
    return Pool(home, origin, tmp_path, s3_remote, env, clean_env(s3_remote), up, receiver)


def step(what: str) -> None:
    print(f"{time.strftime('%X')} {what}", flush=True)


def stack_comes_up_once(pool: Pool) -> None:
    """`pool up` starts PostgreSQL, the server and four workers; run again, it leaves them be."""
    status = pool_cli(*pool.up, env=pool.env)
    assert status["db"] == "postgres" and status["postgres"] and status["server"]
    assert status["workers"] == {name: True for name in MACHINE_WORKERS}
    first = json.loads((pool.home / "state.json").read_text())["workers"]
    assert pool_cli(*pool.up, env=pool.env)["workers"] == status["workers"]  # idempotent:
    pool.reload()
    assert pool.state["workers"] == first  # the running workers were left alone
    pool.api = Api(status["api"], pool.state["auth_string"])
    assert pool.state["auth_string"]
    assert stat.S_IMODE((pool.home / "stack.env").stat().st_mode) == 0o600


def everything_started_is_stopped(pool: Pool) -> None:
    """`pool down --purge` stops the server, the workers and PostgreSQL, and removes the home."""
    pool.receiver.close()
    saved = pool.home / "state.json"
    pg = json.loads(saved.read_text()).get("pg") if saved.is_file() else None
    pg_dir = (pg or {}).get("data_dir", "/nonexistent-pg-dir")
    stopped = pool_cli("down", "--home", str(pool.home), "--purge", env=pool.env)
    gone = [
        pid
        for pid in pool.stack_pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not gone, f"left running: {gone}"
    postgres = [
        p for p in psutil.process_iter(["cmdline"]) if pg_dir in " ".join(p.info["cmdline"] or [])
    ]
    assert not postgres, f"postgres left running: {postgres}"
    assert not Path(pg_dir).exists() and not pool.home.exists()
    assert "postgres" in stopped["stopped"]
