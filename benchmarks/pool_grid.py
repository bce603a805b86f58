"""The four-variant grid on the worker pool: wall time with 1 worker and with 2, side by side in
one invocation, and the per-run overhead of the pool (clone + DVC pull + push + scheduling).

Set-up: the project's stack (`python -m pool up`: PostgreSQL, Prefect server, process workers
in directories of their own) on this machine, a bare git origin holding this checkout's HEAD
(commit first) with a grid configuration where each training takes tens of seconds on one
thread (the book's 10,000 characters, 256/128 hidden units, ``--epochs``), a local directory as
the DVC remote, one thread per training (each worker stands for a one-core machine). Each
measurement is one `rnn-pipeline/pool` run with a seed of its own, so nothing is restored from
an earlier one; the worker counts alternate over ``--repeats``.

Reported per measurement: the pipeline run's wall time (created -> Completed), and for each of its
`rnn-train` runs the time it waited to start (scheduling), its duration, the training's own wall
time (from its log) and the difference (clone, pull steps, DVC restore and push, evaluation: the
pool's overhead per run).

    .venv/bin/python benchmarks/pool_grid.py [--epochs 60] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))


def grid_params(epochs: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source=str(SHARED / "corpora" / "timemachine.txt"), sha1=None)
    params["train"].update(epochs=epochs, checkpoint_every=0)
    params["models"]["rnn"]["num_hiddens"] = {"scratch": 256, "concise": 128}
    return params


def make_origin(base: Path, params: dict) -> Path:
    work, origin = base / "origin-work", base / "origin.git"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ident = ["-c", "user.email=b@b", "-c", "user.name=bench"]
    subprocess.run(["git", *ident, "commit", "-qam", "grid params"], cwd=work, check=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "push", "-q", str(origin), "HEAD:main"], cwd=work, check=True)
    return origin


def pool(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "pool", *args], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"pool {args[0]} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def api_settings(home: Path) -> dict:
    """Prefect settings for the stack in ``home``: its API and the credential it wants."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from pool.state import load_state

    state = load_state(home)
    return {PREFECT_API_URL: state.api_url, PREFECT_API_AUTH_STRING: state.auth_string}


def training_line(client, child, log_filter, wait_s: float = 60.0) -> str:
    """The run's "trained: ..." log line; logs reach the server in batches, so it may arrive
    after the run is Completed."""
    deadline = time.monotonic() + wait_s
    while True:
        from prefect.client.schemas.sorting import LogSort

        # newest first: a run logs a line per epoch, more than one page
        logs = client.read_logs(log_filter=log_filter, limit=50, sort=LogSort.TIMESTAMP_DESC)
        found = [m.message for m in logs if " trained: resumed" in m.message]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            lines = " | ".join(m.message for m in logs[:5])
            raise SystemExit(f"{child.name}: no 'trained' log line; last lines: {lines}")
        time.sleep(2)


def measure(home: Path, seed: int) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import temporary_settings

    with temporary_settings(api_settings(home)), get_client(sync_client=True) as c:
        started = time.monotonic()
        run = run_deployment(
            "rnn-pipeline/pool",
            parameters={"fan_out": True, "overrides": {"train": {"seed": seed}}},
            timeout=None,
            poll_interval=1,
        )
        wall = time.monotonic() - started
        if not run.state.is_completed():
            raise SystemExit(f"pipeline run ended {run.state.name}: {run.state.message}")
        children = [r for r in c.read_flow_runs() if r.name.startswith(f"{run.name}-")]
        per_run = []
        for child in children:
            trained = training_line(
                c, child, LogFilter(flow_run_id=LogFilterFlowRunId(any_=[child.id]))
            )
            train_s = float(trained.rsplit(" in ", 1)[1].split()[0])
            duration = (child.end_time - child.start_time).total_seconds()
            per_run.append(
                {
                    "run": child.name.removeprefix(f"{run.name}-"),
                    "waited_s": round((child.start_time - child.created).total_seconds(), 1),
                    "duration_s": round(duration, 1),
                    "training_s": round(train_s, 1),
                    "overhead_s": round(duration - train_s, 1),
                }
            )
    return {"wall_s": round(wall, 1), "runs": per_run}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="rnn-poolbench-") as tmp:
        base = Path(tmp)
        origin = make_origin(base, grid_params(args.epochs))
        home = base / "stack"
        common = [
            "--home",
            str(home),
            "--threads",
            "1",
            "--origin",
            str(origin),
            "--remote",
            str(base / "dvc-remote"),
        ]
        try:
            seed = 1
            for i in range(args.repeats):
                for workers in (1, 2) if i % 2 == 0 else (2, 1):
                    pool("up", "--workers", str(workers), *common)
                    time.sleep(3)  # a removed worker's runs are gone; new ones poll
                    results[workers].append(measure(home, seed))
                    seed += 1
                    print(f"{workers} worker(s): {results[workers][-1]['wall_s']} s", flush=True)
        finally:
            pool("down", "--home", str(home), "--purge")
    one, two = (statistics.median(r["wall_s"] for r in results[w]) for w in (1, 2))
    overheads = [r["overhead_s"] for w in (1, 2) for m in results[w] for r in m["runs"]]
    waits = [r["waited_s"] for m in results[2] for r in m["runs"]]
    summary = {
        "cores": cores,
        "epochs": args.epochs,
        "grid_wall_s": {"1 worker": one, "2 workers": two},
        "speedup_2_over_1": round(one / two, 3),
        "overhead_per_run_s": {"median": statistics.median(overheads), "max": max(overheads)},
        "wait_to_start_s_2_workers": {"median": statistics.median(waits), "max": max(waits)},
        "measurements": results,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
