"""The pool's workers: each a machine of its own (its own home and temporary directory under
``machines/``), started with the environment a worker needs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from pool.postgres import Cluster
from pool.processes import alive, spawn, stop_tree
from pool.state import BIN, PIPELINE_QUEUE, POOL, Settings, State, base_env
from rnn.names import (
    DVC_REMOTE_ENDPOINT_ENV,
    DVC_REMOTE_ENV,
    SWEEP_STORAGE_ENV,
    TRAINING_GPU_QUEUE,
    TRAINING_QUEUE,
)


def machine_workers(settings: Settings, machine: str, gpus: int = 0) -> dict[str, list[str]]:
    """The workers of one machine, by name: a trainer on the training queue taking ``slots``
    runs at once (so a machine never trains more than it has slots for), a coordinator on the
    pipelines queue taking one pipeline or retraining run at a time, and on a machine with
    ``gpus`` GPUs a trainer on the training-gpu queue taking one run per GPU."""
    start = [str(BIN / "prefect"), "worker", "start", "--pool", POOL]
    gpu = f"{machine}-gpu"
    on_gpus = {gpu: [*start, "--name", gpu, "-q", TRAINING_GPU_QUEUE, "--limit", str(gpus)]}
    return {
        **(on_gpus if gpus else {}),
        machine: [*start, "--name", machine, "-q", TRAINING_QUEUE, "--limit", str(settings.slots)],
        f"{machine}-pipelines": [
            *start,
            "--name",
            f"{machine}-pipelines",
            "-q",
            PIPELINE_QUEUE,
            "--limit",
            "1",
        ],
    }


def machine_dir(home: Path, name: str) -> Path:
    """A worker machine's directory, this user's only: Prefect's process worker keeps each job's
    environment (the API credential included) in its scratch directory under ``tmp/``."""
    machine = home / "machines" / name
    for sub in ("home", "tmp"):
        (machine / sub).mkdir(parents=True, exist_ok=True)
    for path in (machine, machine / "home", machine / "tmp"):
        path.chmod(0o700)
    return machine


def worker_env(state: State, machine: Path) -> dict[str, str]:
    s = state.settings
    env = base_env(state)
    cores = len(os.sched_getaffinity(0))
    env.update(
        HOME=str(machine / "home"),
        TMPDIR=str(machine / "tmp"),  # flow-run workspaces: this machine's disk
        PREFECT_HOME=str(machine / "home" / "prefect"),
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(s.heartbeat_s),
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        # ride out a database restart: the server answers 500 while it reconnects, and a
        # state report or log write that gives up fails a healthy run
        PREFECT_CLIENT_RETRY_EXTRA_CODES="500",
        RNN_MACHINE=machine.name,  # named in the train runs' results and logs
        # the local workers share this machine's cores; on a machine of its own, a worker's
        # trainings share that machine's: cores / slots
        RNN_THREADS=str(s.threads or max(1, cores // (s.slots * max(1, s.workers)))),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(machine / "home" / "dvc-site-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(machine / "home" / "dvc-config"),
    )
    # the sweeps' study storage: holds the database password, so workers alone have it
    env[SWEEP_STORAGE_ENV] = sweeps_storage(state, machine.parent.parent)
    if s.remote:
        env[DVC_REMOTE_ENV] = s.remote
    if s.remote_endpoint:
        env[DVC_REMOTE_ENDPOINT_ENV] = s.remote_endpoint
    return env


def sweeps_storage(state: State, home: Path) -> str:
    """Where the pool's sweeps keep their studies: its PostgreSQL, or beside a SQLite stack."""
    if state.pg:
        pg = state.pg
        return Cluster(Path(pg["data_dir"]), pg["port"], pg["password"], pg["os_user"]).sweeps_url
    return f"sqlite:///{home / 'sweeps.sqlite'}"


def ensure_workers(home: Path, state: State) -> None:
    """N workers with the current settings: missing or dead ones started, extra ones stopped,
    and all restarted when a setting they run with changed."""
    s = state.settings
    wanted = json.dumps({k: v for k, v in asdict(s).items() if k != "workers"}, sort_keys=True)
    if wanted != state.worker_settings:
        for name in list(state.workers):
            stop_tree(state.workers.pop(name))
        state.worker_settings = wanted
    wanted_names = set()
    for i in range(1, s.workers + 1):
        machine = machine_dir(home, f"worker-{i}")
        gpus = s.gpus if i > s.workers - s.gpu_workers else 0  # the last gpu_workers machines
        for name, cmd in machine_workers(s, machine.name, gpus).items():
            wanted_names.add(name)
            if not alive(state.workers.get(name)):
                state.workers[name] = spawn(
                    cmd, machine, worker_env(state, machine), home / "logs" / f"{name}.log"
                )
    for name in [n for n in state.workers if n not in wanted_names]:
        stop_tree(state.workers.pop(name))
