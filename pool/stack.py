"""Bring the local pool stack up and down, idempotently.

State lives in one directory (``--home``, default ``.stack/``): ``state.json`` (mode 600: ports,
the database password, process ids), ``stack.env`` (what a shell needs to use the stack:
``PREFECT_API_URL``), ``logs/``, and ``machines/worker-<i>/``, each worker's own home and
temporary directory, standing for a machine of its own. On real machines run the same pieces
separately: the database and server once, `python -m pool worker` on every machine.
"""

from __future__ import annotations

from pathlib import Path

from pool import postgres
from pool.postgres import StackError
from pool.processes import alive, healthy, stop_tree
from pool.server import configure, ensure_database, ensure_server, gpu_slots, training_slots
from pool.state import Settings, State, ensure_auth, load_state, save_state
from pool.workers import ensure_workers


def up(home: Path, settings: Settings, notify: str | None = None, window_s: int = 600) -> State:
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
        if notify:
            install_alerts(state, notify, window_s)
        ensure_workers(home, state)
    finally:
        save_state(home, state)
    return state


def install_alerts(state: State, webhook_url: str, window_s: int) -> None:
    """The alerts (pool/alerts.py) on this stack's server; the URL goes into its block only."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from pool import alerts

    with temporary_settings(
        {PREFECT_API_URL: state.api_url, PREFECT_API_AUTH_STRING: state.auth_string}
    ):
        alerts.install(webhook_url, window_s)


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
        "gpu_slots": gpu_slots(state.settings),
    }
