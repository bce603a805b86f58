"""The pool stack's settings and its state on disk (``state.json``, mode 600: ports, the
database password, process ids), and the fixed names of its Prefect objects."""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rnn.names import WORK_POOL

POOL = WORK_POOL


PIPELINE_QUEUE = "pipelines"


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
    gpu_workers: int = 0  # the last this many machines have GPUs: a trainer on training-gpu each
    gpus: int = 1  # GPUs on each of those machines (its GPU trainer's slots)


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
