"""The pool's PostgreSQL database and Prefect server, and the Prefect objects the pool needs:
the work pool and its queues, the training concurrency limit, the zombie-run automation."""

from __future__ import annotations

import subprocess
import time
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

from pool import postgres
from pool.postgres import StackError
from pool.processes import alive, healthy, spawn
from pool.state import (
    BIN,
    PIPELINE_QUEUE,
    POOL,
    PROJECT,
    ZOMBIE_AUTOMATION,
    Settings,
    State,
    base_env,
)
from rnn.names import TRAINING_GPU_LIMIT, TRAINING_GPU_QUEUE, TRAINING_LIMIT, TRAINING_QUEUE
from rnn.ports import free_port


def ensure_database(state: State) -> str | None:
    """The server's database URL: a running private PostgreSQL cluster, or None for SQLite."""
    if state.settings.db == "sqlite":
        return None
    if state.pg:
        cluster = postgres.Cluster(
            Path(state.pg["data_dir"]), state.pg["port"], state.pg["password"], state.pg["os_user"]
        )
        cluster.start()
    else:
        cluster = postgres.create(free_port())
        state.pg = {
            "data_dir": str(cluster.data_dir),
            "port": cluster.port,
            "password": cluster.password,
            "os_user": cluster.os_user,
        }
    cluster.create_database(postgres.SWEEPS_DATABASE)  # also in a cluster made before sweeps
    return cluster.url


def ensure_server(home: Path, state: State, db_url: str | None) -> None:
    if alive(state.server_pid) and healthy(state.api_url):
        return
    env = base_env(state)
    env["PREFECT_HOME"] = str(home / "server-home")
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    if state.auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = state.auth_string
    log = home / "logs" / "server.log"
    state.server_pid = spawn(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(state.settings.port),
        ],
        home,
        env,
        log,
    )
    deadline = time.monotonic() + 120
    while not healthy(state.api_url):
        if not alive(state.server_pid) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-600:] if log.is_file() else ""
            raise StackError(
                f"prefect server did not become healthy on port "
                f"{state.settings.port} (see {log}): {tail.strip()[-300:]}"
            )
        time.sleep(0.5)


def prefect(state: State, *args: str, cwd: Path = PROJECT, check: bool = True):
    result = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=cwd,
        env=base_env(state),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise StackError(
            f"prefect {' '.join(args[:3])} failed: "
            f"{(result.stderr or result.stdout).strip()[-400:]}"
        )
    return result


def training_slots(settings: Settings) -> int:
    return settings.workers * settings.slots


def gpu_slots(settings: Settings) -> int:
    return min(settings.gpu_workers, settings.workers) * settings.gpus


def configure(state: State) -> None:
    """Pool, queues and their limits, the training-slot limit, variables, automation, deploys.
    Coordinating runs (pipelines, retraining) and trainings have queues and workers of their own
    (see machine_workers), so coordinators waiting on their trainings never hold a training slot."""
    s = state.settings
    if prefect(state, "work-pool", "inspect", POOL, check=False).returncode != 0:
        prefect(state, "work-pool", "create", POOL, "--type", "process")
    queues = (
        (PIPELINE_QUEUE, s.workers),
        (TRAINING_QUEUE, training_slots(s)),
        (TRAINING_GPU_QUEUE, max(1, gpu_slots(s))),  # served only where a machine has GPUs
    )
    for queue, limit in queues:
        if prefect(state, "work-queue", "inspect", queue, "-p", POOL, check=False).returncode:
            prefect(state, "work-queue", "create", queue, "-p", POOL)
        prefect(state, "work-queue", "set-concurrency-limit", queue, str(limit), "-p", POOL)
    # CPU and GPU trainings take slots of limits of their own: neither waits on the other's
    for limit, slots in ((TRAINING_LIMIT, training_slots(s)), (TRAINING_GPU_LIMIT, gpu_slots(s))):
        verb = (
            "update"
            if prefect(state, "gcl", "inspect", limit, check=False).returncode == 0
            else "create"
        )
        prefect(state, "gcl", verb, limit, "--limit", str(max(1, slots)))
    origin = s.origin or str(PROJECT)
    prefect(state, "variable", "set", "rnn_git_origin", origin, "--overwrite")
    prefect(state, "variable", "set", "rnn_git_ref", s.ref, "--overwrite")
    install_zombie_automation(state)
    prefect(state, "--no-prompt", "deploy", "--all")


def install_zombie_automation(state: State) -> None:
    """Prefect's documented zombie-flow automation: a flow run whose heartbeat stops for
    ``zombie_after_s`` is set Crashed. The window must exceed the heartbeat (3x here)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    s = state.settings
    with temporary_settings(
        {PREFECT_API_URL: state.api_url, PREFECT_API_AUTH_STRING: state.auth_string}
    ):
        with suppress(ValueError):
            Automation.read(name=ZOMBIE_AUTOMATION).delete()
        Automation(
            name=ZOMBIE_AUTOMATION,
            description=f"Crash flow runs silent for {s.zombie_after_s} s "
            f"(heartbeat every {s.heartbeat_s} s)",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=s.zombie_after_s),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"No heartbeat for {s.zombie_after_s} s: the worker or its machine "
                    "is gone",
                )
            ],
        ).create()
