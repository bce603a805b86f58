"""Bring the local pool stack up and down, idempotently.

State lives in one directory (``--home``, default ``.stack/``): ``state.json`` (mode 600: ports,
the database password, process ids), ``stack.env`` (what a shell needs to use the stack:
``PREFECT_API_URL``), ``logs/``, and ``machines/worker-<i>/``, each worker's own home and
temporary directory, standing for a machine of its own. On real machines run the same pieces
separately: the database and server once, `python -m pool worker` on every machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from pool import postgres
from pool.postgres import StackError
from rnn.names import DVC_REMOTE_ENDPOINT_ENV, DVC_REMOTE_ENV, TRAINING_LIMIT, WORK_POOL
from rnn.ports import free_port

POOL = WORK_POOL
PIPELINE_QUEUE, TRAINING_QUEUE = "pipelines", "training"
ZOMBIE_AUTOMATION = "rnn-crash-zombie-flow-runs"
PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Settings:
    workers: int = 2
    slots: int = 1  # trainings per worker at once
    db: str = "postgres"
    port: int = 4200
    heartbeat_s: int = 30
    zombie_after_s: int = 90
    origin: str | None = None
    ref: str = "main"
    remote: str | None = None
    remote_endpoint: str | None = None
    threads: int | None = None  # per training; None: this machine's cores / its slots
    auth: bool = True  # the API requires PREFECT_API_AUTH_STRING (generated, kept in state.json)


@dataclass
class State:
    settings: Settings
    pg: dict | None = None
    server_pid: int | None = None
    workers: dict[str, int] = field(default_factory=dict)
    worker_settings: str = ""  # what the running workers were started with
    auth_string: str | None = None  # user:secret for the server's basic auth; never logged

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}/api"


def _state_file(home: Path) -> Path:
    return home / "state.json"


def load_state(home: Path) -> State | None:
    path = _state_file(home)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return State(
        Settings(**raw["settings"]),
        raw.get("pg"),
        raw.get("server_pid"),
        raw.get("workers", {}),
        raw.get("worker_settings", ""),  # without it every `up` restarted the running workers
        auth_string=raw.get("auth_string"),
    )


def save_state(home: Path, state: State) -> None:
    path = _state_file(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)
    lines = [f"export PREFECT_API_URL={state.api_url}"]
    if state.auth_string:
        lines.append(f"export PREFECT_API_AUTH_STRING={state.auth_string}")
    env_file = home / "stack.env"
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)  # it holds the API's credential: this user only, like state.json
    env_file.write_text("\n".join(lines) + "\n")


def ensure_auth(state: State) -> None:
    """With ``settings.auth``, the API credential: PREFECT_SERVER_API_AUTH_STRING when the
    caller sets one, else a random one made once and kept in state.json (mode 600)."""
    if not state.settings.auth:
        state.auth_string = None
    elif os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        state.auth_string = os.environ["PREFECT_SERVER_API_AUTH_STRING"]
    elif not state.auth_string:
        state.auth_string = f"rnn:{secrets.token_urlsafe(24)}"


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


def base_env(state: State) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PREFECT_API_URL=state.api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_CLI_PROMPT="false",
    )
    # the API credential travels to every client in its environment, never in a command line
    if state.auth_string:
        env["PREFECT_API_AUTH_STRING"] = state.auth_string
    return env


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


# -- database and server ---------------------------------------------------------------------


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
    return cluster.url


def healthy(url: str) -> bool:
    with suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
        return r.status == 200
    return False


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


# -- pool, limits, automation, deployments ---------------------------------------------------


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


def configure(state: State) -> None:
    """Pool, queues and their limits, the training-slot limit, variables, automation, deploys.
    Coordinating runs (pipelines, retraining) and trainings have queues and workers of their own
    (see machine_workers), so coordinators waiting on their trainings never hold a training slot."""
    s = state.settings
    if prefect(state, "work-pool", "inspect", POOL, check=False).returncode != 0:
        prefect(state, "work-pool", "create", POOL, "--type", "process")
    for queue, limit in ((PIPELINE_QUEUE, s.workers), (TRAINING_QUEUE, training_slots(s))):
        if prefect(state, "work-queue", "inspect", queue, "-p", POOL, check=False).returncode:
            prefect(state, "work-queue", "create", queue, "-p", POOL)
        prefect(state, "work-queue", "set-concurrency-limit", queue, str(limit), "-p", POOL)
    if prefect(state, "gcl", "inspect", TRAINING_LIMIT, check=False).returncode == 0:
        prefect(state, "gcl", "update", TRAINING_LIMIT, "--limit", str(training_slots(s)))
    else:
        prefect(state, "gcl", "create", TRAINING_LIMIT, "--limit", str(training_slots(s)))
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


# -- workers ---------------------------------------------------------------------------------


def machine_workers(settings: Settings, machine: str) -> dict[str, list[str]]:
    """The two workers of one machine, by name: a trainer on the training queue taking
    ``slots`` runs at once (so a machine never trains more than it has slots for), and a
    coordinator on the pipelines queue taking one pipeline or retraining run at a time."""
    start = [str(BIN / "prefect"), "worker", "start", "--pool", POOL]
    return {
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
    if s.remote:
        env[DVC_REMOTE_ENV] = s.remote
    if s.remote_endpoint:
        env[DVC_REMOTE_ENDPOINT_ENV] = s.remote_endpoint
    return env


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
        for name, cmd in machine_workers(s, machine.name).items():
            wanted_names.add(name)
            if not alive(state.workers.get(name)):
                state.workers[name] = spawn(
                    cmd, machine, worker_env(state, machine), home / "logs" / f"{name}.log"
                )
    for name in [n for n in state.workers if n not in wanted_names]:
        stop_tree(state.workers.pop(name))


# -- up / down -------------------------------------------------------------------------------


def up(home: Path, settings: Settings) -> State:
    home.mkdir(parents=True, exist_ok=True)
    state = load_state(home) or State(settings)
    if state.settings.db != settings.db and (state.pg or alive(state.server_pid)):
        raise StackError(
            f"the stack in {home} runs on {state.settings.db}; "
            f"run `python -m pool down --purge` first to switch to {settings.db}"
        )
    state.settings = settings
    ensure_auth(state)
    try:
        db_url = ensure_database(state)
        save_state(home, state)
        ensure_server(home, state, db_url)
        save_state(home, state)
        configure(state)
        ensure_workers(home, state)
    finally:
        save_state(home, state)
    return state


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


def down(home: Path, purge: bool = False) -> list[str]:
    """Stop workers, server and database; returns what was stopped. ``purge`` deletes the state,
    the database and the machines' directories too."""
    state = load_state(home)
    stopped: list[str] = []
    if state is None:
        return stopped
    for name, pid in list(state.workers.items()):
        if alive(pid):
            stopped.append(name)
        stop_tree(pid)
    state.workers = {}
    if alive(state.server_pid):
        stopped.append("server")
    stop_tree(state.server_pid)
    state.server_pid = None
    if state.pg:
        cluster = postgres.Cluster(
            Path(state.pg["data_dir"]), state.pg["port"], state.pg["password"], state.pg["os_user"]
        )
        if cluster.running():
            stopped.append("postgres")
        if purge:
            cluster.remove()
            import shutil

            shutil.rmtree(Path(state.pg["data_dir"]).parent, ignore_errors=True)
            state.pg = None
        else:
            cluster.stop()
    if purge:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    else:
        save_state(home, state)
    return stopped


def status(home: Path) -> dict:
    state = load_state(home)
    if state is None:
        return {"home": str(home), "up": False}
    pg_up = False
    if state.pg:
        pg_up = postgres.Cluster(
            Path(state.pg["data_dir"]), state.pg["port"], state.pg["password"], state.pg["os_user"]
        ).running()
    return {
        "home": str(home),
        "api": state.api_url,
        "db": state.settings.db,
        "postgres": pg_up if state.settings.db == "postgres" else None,
        "server": alive(state.server_pid) and healthy(state.api_url),
        "workers": {n: alive(p) for n, p in state.workers.items()},
        "training_slots": training_slots(state.settings),
    }
