"""One hyperparameter search on tinyshakespeare (raw text, 90/5/5 contiguous split) on the local
pool with 2 workers, run twice with the same seed and space: without a pruner, then with one.
Prints for each the best validation loss found (nats per character), the sweep's wall time (its
`rnn-sweep/pool` run, created -> Completed) and the epochs its trials trained, then the pruned
search's wall time as a share of the unpruned one's and the gap between the two bests.

The space holds good and bad regions: a one-layer GRU (the 2-minute configuration of
`params-shakespeare.yaml`) with AdamW rates from 1e-3 (too slow to learn in a few epochs) to 0.3
(unstable: the loss stalls high or the run diverges, which the training stops as failed) and 16
to 384 hidden units (16 are too few). The search starts from the documented 2-minute configuration
(384 units at 0.015; ``--no-first`` leaves it out), as a user who has one would; TPE then draws
``--startup`` points at random and models the space after them. Each worker stands for a one-core machine (one thread per training); each search runs on a
stack and DVC remote of its own, so neither restores the other's trainings.

    .venv/bin/python benchmarks/sweep.py [--trials 12] [--epochs 4] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, SHARED
from benchmarks.pool_grid import api_settings, make_origin, pool

CORPUS = SHARED / "corpora" / "tinyshakespeare.txt"


def shakespeare_params() -> dict:
    """params-shakespeare.yaml as its 2-minute one-layer version, on the shared corpus."""
    params = yaml.safe_load((ROOT / "params-shakespeare.yaml").read_text())
    params["ingest"].update(source=str(CORPUS), sha1=None, sha256=None)
    gru = params["models"]["gru"]
    gru.update(num_layers=1, dropout=0.0)
    params["train"]["schedule"]["warmup_steps"] = 50
    params["train"].update(checkpoint_every=1, data_parallel=1)
    return params


# params-shakespeare.yaml's documented 2-minute configuration (docs/benchmarks/heldout.md: 1.467
# nats after 4 epochs): the point a user who has one starts the search from
DOCUMENTED = {"train.lr": 0.015, "models.gru.num_hiddens": 384}


def sweep(study: str, trials: int, epochs: int, startup: int, pruner: dict, first: bool) -> dict:
    return {
        "study": study,
        "run": {"backend": "torch", "variant": "scratch", "model": "gru"},
        "trials": trials,
        "sampler": {"name": "tpe", "seed": 0, "startup_trials": startup},
        "pruner": pruner,
        "fixed": {"train.epochs": epochs},
        "space": {
            "train.lr": {"float": [0.001, 0.3], "log": True},
            "models.gru.num_hiddens": {"int": [16, 384], "log": True},
        },
        "first": [DOCUMENTED] if first else [],
    }


def push_sweeps(origin: Path, base: Path, sweeps: dict[str, dict]) -> None:
    work = base / "sweep-author"
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True)
    for name, body in sweeps.items():
        (work / name).write_text(yaml.safe_dump(body, sort_keys=False))
    ident = ["-c", "user.email=b@b", "-c", "user.name=bench"]
    subprocess.run(["git", "add", *sweeps], cwd=work, check=True)
    subprocess.run(["git", *ident, "commit", "-qm", "sweeps"], cwd=work, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:main"], cwd=work, check=True)


def run_sweep(home: Path, sweep_file: str) -> float:
    from prefect.deployments import run_deployment
    from prefect.settings import temporary_settings

    with temporary_settings(api_settings(home)):
        started = time.monotonic()
        run = run_deployment(
            "rnn-sweep/pool", parameters={"sweep_file": sweep_file}, timeout=None, poll_interval=2
        )
        wall = time.monotonic() - started
    if not run.state.is_completed():
        raise SystemExit(f"sweep run ended {run.state.name}: {run.state.message}")
    return wall


def summarise(storage: str, study_name: str, wall: float) -> dict:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value) if complete else None
    per_epoch = [
        (t.datetime_complete - t.datetime_start).total_seconds() / max(t.intermediate_values)
        for t in trials
        if t.intermediate_values and t.params.get("models.gru.num_hiddens", 0) >= 256
    ]
    return {
        "wall_s": round(wall, 1),
        "best_valid_loss": None if best is None else round(best.value, 4),
        "best_params": None if best is None else best.params,
        "epochs_trained": sum(max(t.intermediate_values, default=0) for t in trials),
        "states": {
            s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")
        },
        "trial_s_per_epoch_256_units_up": sorted(round(s, 1) for s in per_epoch),
        "trials": [
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "epochs": max(t.intermediate_values, default=0),
                **t.params,
            }
            for t in trials
        ],
    }


def search_on_a_fresh_pool(base: Path, origin: Path, sweep_file: str, study: str) -> dict:
    """One search on a stack and DVC remote of its own: the other search's trainings are in
    neither its study nor its run-cache (the same seed draws the same first points, which a
    shared run-cache would restore instead of training)."""
    from pool.postgres import Cluster

    home = base / "stack"
    try:
        pool(
            "up", "--home", str(home), "--workers", "2", "--slots", "1", "--threads", "1",
            "--origin", str(origin), "--remote", str(base / "dvc-remote"),
        )  # fmt: skip
        pg = json.loads((home / "state.json").read_text())["pg"]
        storage = Cluster(pg["data_dir"], pg["port"], pg["password"], pg["os_user"]).sweeps_url
        load = os.getloadavg()[0]
        wall = run_sweep(home, sweep_file)
        return {**summarise(storage, study, wall), "load_before": round(load, 2)}
    finally:
        pool("down", "--home", str(home), "--purge")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--startup", type=int, default=5, help="TPE's random points before it models")
    ap.add_argument(
        "--no-first",
        dest="first",
        action="store_false",
        help="leave out the documented configuration as the search's first point",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not CORPUS.is_file():
        raise SystemExit(f"{CORPUS} not found: set RNN_SHARED to the shared directory")
    stamp = time.strftime("%H%M%S")
    pruner = {"name": "successive_halving", "min_epochs": 1, "reduction_factor": 3}
    sweeps = {
        "sweep-unpruned.yaml": sweep(
            f"bench-unpruned-{stamp}",
            args.trials,
            args.epochs,
            args.startup,
            {"name": "none"},
            args.first,
        ),
        "sweep-pruned.yaml": sweep(
            f"bench-pruned-{stamp}", args.trials, args.epochs, args.startup, pruner, args.first
        ),
    }
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rnn-sweepbench-") as tmp:
        base = Path(tmp)
        origin = make_origin(base, shakespeare_params())
        push_sweeps(origin, base, sweeps)
        for name, body in sweeps.items():
            mode = name.removeprefix("sweep-").removesuffix(".yaml")
            results[mode] = search_on_a_fresh_pool(base / mode, origin, name, body["study"])
            print(f"{name}: {results[mode]['wall_s']} s", flush=True)
    unpruned, pruned = results["unpruned"], results["pruned"]
    summary = {
        "cores": len(os.sched_getaffinity(0)),
        "trials": args.trials,
        "epochs": args.epochs,
        "first": [DOCUMENTED] if args.first else [],
        "unpruned": unpruned,
        "pruned": pruned,
        "pruned_wall_share": round(pruned["wall_s"] / unpruned["wall_s"], 3),
        "best_gap_nats": None
        if None in (pruned["best_valid_loss"], unpruned["best_valid_loss"])
        else round(pruned["best_valid_loss"] - unpruned["best_valid_loss"], 4),
        "median_s_per_epoch": {
            k: statistics.median(v["trial_s_per_epoch_256_units_up"] or [0.0])
            for k, v in results.items()
        },
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
