"""`python -m pool up|down|status`: the local worker-pool stack in one command each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from pool import stack
from pool.postgres import StackError
from pool.state import Settings
from pool.workers import machine_workers
from rnn.names import MACHINE_ENV, STACK_HOME_ENV, THREADS_ENV

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
HomeOpt = Annotated[
    Path, typer.Option("--home", help="the stack's state, logs and worker machines")
]
DEFAULT_HOME = Path(os.environ.get(STACK_HOME_ENV, ".stack"))


def fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(1)


@app.command()
def up(
    home: HomeOpt = DEFAULT_HOME,
    workers: Annotated[int, typer.Option(min=0, help="process workers to run")] = 2,
    slots: Annotated[
        int, typer.Option(min=1, help="trainings per worker at once (cores / train threads)")
    ] = 1,
    db: Annotated[
        str, typer.Option(help="postgres (several workers) | sqlite (one machine)")
    ] = "postgres",
    port: Annotated[int, typer.Option(help="the Prefect server's port on 127.0.0.1")] = 4200,
    heartbeat: Annotated[int, typer.Option(min=30, help="flow-run heartbeat, seconds")] = 30,
    zombie_after: Annotated[
        int, typer.Option(help="seconds without a heartbeat before a run is set Crashed")
    ] = 90,
    origin: Annotated[
        str | None, typer.Option(help="git URL flow runs clone (default: here)")
    ] = None,
    ref: Annotated[str, typer.Option(help="branch or tag flow runs clone")] = "main",
    remote: Annotated[
        str | None, typer.Option(help="shared DVC remote URL for the workers (RNN_DVC_REMOTE)")
    ] = None,
    remote_endpoint: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint URL for --remote")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="cores per training (default: cores / (workers x slots))"),
    ] = None,
    auth: Annotated[
        bool,
        typer.Option(
            help="require PREFECT_API_AUTH_STRING on the API (made once, kept in stack.env, "
            "mode 600; or set PREFECT_SERVER_API_AUTH_STRING)"
        ),
    ] = True,
    gpu_workers: Annotated[
        int, typer.Option(min=0, help="how many of the workers (the last) have GPUs")
    ] = 0,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs on each of those workers")] = 1,
    notify: Annotated[
        str | None,
        typer.Option(
            help="a webhook URL for alerts (failed or crashed runs, promotions); kept only in a "
            'Prefect block\'s secrets. Pass it from the environment: --notify "$RNN_NOTIFY_URL"'
        ),
    ] = None,
    notify_window: Annotated[
        int, typer.Option(min=1, help="seconds in which a deployment's failures are one alert")
    ] = 600,
) -> None:
    """Start (or complete) the stack: database, server, pool with its queues and limits, the
    zombie-run automation, variables, deployments, and N workers. Running it again starts only
    what is not running and applies changed settings."""
    if db not in ("postgres", "sqlite"):
        fail(ValueError(f"--db {db!r} is not postgres or sqlite"))
    if zombie_after < 2 * heartbeat:
        fail(
            ValueError(
                f"--zombie-after {zombie_after} must be at least twice --heartbeat "
                f"{heartbeat}, or healthy runs are crashed between two heartbeats"
            )
        )
    settings = Settings(
        workers,
        slots,
        db,
        port,
        heartbeat,
        zombie_after,
        origin,
        ref,
        remote,
        remote_endpoint,
        threads,
        auth,
        gpu_workers,
        gpus,
    )
    try:
        state = stack.up(home, settings, notify, notify_window)
    except StackError as err:
        fail(err)
    typer.echo(json.dumps(stack.status(home)))
    typer.echo(f"use it: source {home / 'stack.env'}  (PREFECT_API_URL={state.api_url})", err=True)


@app.command()
def down(
    home: HomeOpt = DEFAULT_HOME,
    purge: Annotated[bool, typer.Option(help="also delete the database and state")] = False,
) -> None:
    """Stop the workers, the server and the database (and with --purge delete their data).
    Nothing running is fine."""
    try:
        stopped = stack.down(home, purge)
    except StackError as err:
        fail(err)
    typer.echo(json.dumps({"stopped": stopped, "purged": purge}))


@app.command()
def worker(
    api: Annotated[str, typer.Option(help="the Prefect API URL, e.g. http://server:4200/api")],
    slots: Annotated[int, typer.Option(min=1, help="trainings this machine runs at once")] = 1,
    heartbeat: Annotated[int, typer.Option(min=30, help="flow-run heartbeat, seconds")] = 30,
    name: Annotated[
        str | None, typer.Option(help="the machine's name (default: host name)")
    ] = None,
    gpus: Annotated[
        int, typer.Option(min=0, help="this machine's GPUs: a trainer on training-gpu, one per")
    ] = 0,
) -> None:
    """Run this machine's workers of the pool in the foreground (for a service manager): a
    trainer taking --slots trainings at once, each given cores / slots threads, a coordinator
    taking one pipeline or retraining run, and with --gpus N a trainer taking the trainings with
    train.device cuda, N at once (raise the pool's `rnn-training-gpu` limit by N); heartbeats
    on. Set RNN_DVC_REMOTE (and
    AWS_* for S3) in its environment, and PREFECT_API_AUTH_STRING where the server requires
    it (the stack's is in its stack.env). Stops both on SIGTERM or when either exits."""
    import signal
    import socket
    import subprocess
    import time

    machine = name or socket.gethostname()
    cores = len(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat),
        MACHINE_ENV: machine,
        THREADS_ENV: str(max(1, cores // slots)),
    }
    settings = Settings(workers=1, slots=slots)
    workers = machine_workers(settings, machine, gpus).values()
    procs = [subprocess.Popen(cmd, env=env) for cmd in workers]
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    raise typer.Exit(max(p.returncode or 0 for p in procs))


@app.command()
def notify(
    api: Annotated[str, typer.Option(help="the Prefect API URL, e.g. http://server:4200/api")],
    window: Annotated[
        int, typer.Option(min=1, help="seconds in which a deployment's failures are one alert")
    ] = 600,
) -> None:
    """Install the alerts on a pool set up by hand: a message to the webhook in RNN_NOTIFY_URL
    (read from the environment, so it stays out of shell history and process lists) when a
    flow run fails or crashes, and when a model is promoted. PREFECT_API_AUTH_STRING in the
    environment where the server requires it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pool import alerts

    url = os.environ.get(alerts.URL_ENV)
    if not url:
        fail(ValueError(f"{alerts.URL_ENV} is not set: export the webhook's URL in it"))
    with temporary_settings({PREFECT_API_URL: api}):
        alerts.install(url, window)
    typer.echo(json.dumps({"alerts": [alerts.FAILURES, alerts.PROMOTIONS], "window_s": window}))


@app.command()
def status(home: HomeOpt = DEFAULT_HOME) -> None:
    """What is running, as JSON."""
    typer.echo(json.dumps(stack.status(home)))


if __name__ == "__main__":
    app()
