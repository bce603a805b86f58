"""`rnn-sweep/pool` on the two-worker pool (PostgreSQL behind the Prefect server, moto's S3 as the
DVC remote, a bare git origin), one search of four trials, with the study in the pool's database:

1. The sweep's first points: the book's rate keeping the best epoch, the same rate keeping the
   last (the two train identically epoch by epoch, so neither's pruner verdict depends on which
   ends first), and a deliberately bad rate that learns nothing in an epoch; then one drawn by
   TPE. Two train at once, one per worker (the pool's two training slots).
2. The sweep flow killed (SIGKILL) while its first two trials train, and started again: it
   re-attaches to those trainings instead of starting them twice.
3. A worker's trainer killed mid-trial: the training ends Crashed, runs again on the other worker
   from its pushed checkpoint, and the study records one result for it.
4. The bad trial pruned after its first reported epoch, its training run in a state of its own
   (Pruned), not failed.
5. The study consistent: four trials, each ended once; one training run per trial (the killed
   one's retry aside); every complete trial a DVC experiment on origin; the best trial's recorded
   parameters reproduce its weights through `dvc exp apply` + `dvc repro` in a fresh clone; the
   trials as a Prefect table.
"""

from __future__ import annotations

import json
import subprocess
import time

import psutil
import pytest
import yaml

from pool.postgres import Cluster
from tests.support.machines import git, model_hashes
from tests.support.pool import (
    CRASH_BOUND_S,
    Pool,
    everything_started_is_stopped,
    kill_machine,
    new_pool,
    recorded,
    stack_comes_up_once,
    step,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STUDY, EPOCHS = "pool-tiny", 80  # ~20 s a trial alone: killed at epoch 20, mid-way
GOOD = {"train.lr": 1.0, "train.keep_best": True}
TWIN = {"train.lr": 1.0, "train.keep_best": False}
BAD = {"train.lr": 0.0005, "train.keep_best": True}
SWEEP = {
    "study": STUDY,
    "run": {"backend": "torch", "variant": "scratch", "model": "rnn"},
    "trials": 4,
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "median", "startup_trials": 1},
    "fixed": {"train.epochs": EPOCHS, "train.checkpoint_every": 10},
    "space": {
        "train.lr": {"float": [0.0005, 2.0], "log": True},
        "train.keep_best": {"choice": [True, False]},
    },
    "first": [GOOD, TWIN, BAD],
}


def push_sweep(pool: Pool) -> None:
    """The sweep file committed to origin's main, where the flow runs' clones find it."""
    work = pool.tmp / "sweep-author"
    git("clone", "-q", str(pool.origin), str(work), cwd=pool.tmp)
    (work / "sweep.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    git("add", "sweep.yaml", cwd=work)
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "a sweep", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)


def trainings(pool: Pool) -> dict[str, object]:
    """The sweep's training flow runs, by name (``<study>-<trial>[-retry<n>]``)."""
    runs = [r for r in pool.api.train_runs() if r.name.startswith(f"{STUDY}-")]
    names = [r.name for r in runs]
    assert len(names) == len(set(names)), f"a training started twice: {sorted(names)}"
    return {r.name: r for r in runs}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return found


def flow_run_process(flow_run_id: str) -> psutil.Process | None:
    """The process running flow run ``flow_run_id`` (a process worker's child)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def study(pool: Pool):
    import optuna

    pg = pool.state["pg"]
    url = Cluster(pg["data_dir"], pg["port"], pg["password"], pg["os_user"]).sweeps_url
    return optuna.load_study(study_name=STUDY, storage=url)


def the_sweep_flow_killed_and_started_again(pool: Pool) -> tuple[str, str]:
    """Killed while trials 0 and 1 train; the rerun finds them. Returns the rerun's id and the
    name of the training that the next step kills."""
    api = pool.api
    first = api.start("rnn-sweep/pool", {})
    first_two = (f"{STUDY}-0", f"{STUDY}-1")

    def training_both() -> dict | None:
        runs = trainings(pool)
        if set(first_two) <= set(runs) and all(
            api.epochs_done(str(runs[n].id)) >= 2 for n in first_two
        ):
            return runs
        return None

    both = wait_for(training_both, 300, "the first two trials training")
    proc = flow_run_process(first)
    assert proc is not None, "the sweep flow's process"
    proc.kill()
    proc.wait(30)
    wait_for(lambda: api.run(first).state.is_final(), 60, "the killed sweep run's end")
    step(f"sweep flow killed: {api.run(first).state.name}")
    rerun = api.start("rnn-sweep/pool", {})
    assert all(api.run(str(r.id)).state.is_running() for r in both.values())
    return rerun, f"{STUDY}-1"


def a_training_killed_mid_trial(pool: Pool, name: str) -> str:
    """The trainer training ``name`` killed at epoch 20 or later; its run ends Crashed."""
    api = pool.api
    run = trainings(pool)[name]
    wait_for(lambda: api.epochs_done(str(run.id)) >= 20, 300, f"{name} at epoch 20")
    machine = api.machine_of(str(run.id))
    assert not kill_machine([pool.state["workers"][machine]])  # the trainer; not its coordinator
    killed_at = time.monotonic()
    wait_for(
        lambda: api.run(str(run.id)).state.is_crashed(), CRASH_BOUND_S, f"{name} to end Crashed"
    )
    step(f"{name} on {machine} Crashed after {time.monotonic() - killed_at:.0f} s")
    return machine


def the_study_is_consistent(pool: Pool, rerun: str, killed: str, dead_machine: str) -> None:
    api = pool.api
    final = api.wait_final([rerun])[rerun]
    assert final.state.is_completed(), api.logs(rerun)[-20:]
    trials = study(pool).trials
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    states = [t.state.name for t in trials]
    assert states[:3] == ["COMPLETE", "COMPLETE", "PRUNED"], states
    assert max(trials[2].intermediate_values) == 1  # the bad rate: pruned after its first epoch
    assert "FAIL" not in states, [t.user_attrs for t in trials]

    runs = trainings(pool)
    assert set(runs) == {f"{STUDY}-{n}" for n in range(4)} | {f"{killed}-retry1"}
    assert runs[killed].state.is_crashed()
    retry = str(runs[f"{killed}-retry1"].id)
    assert runs[f"{killed}-retry1"].state.is_completed()
    assert api.machine_of(retry) != dead_machine
    resumed = [m for m in api.logs(retry) if "resumed from epoch " in m]
    assert resumed and int(resumed[0].split("resumed from epoch ")[1].split(",")[0]) >= 20
    assert runs[f"{STUDY}-2"].state.name == "Pruned"
    assert runs[f"{STUDY}-2"].state.is_completed()

    complete = [t for t in trials if t.state.name == "COMPLETE"]
    refs = git("ls-remote", str(pool.origin), "refs/exps/*", cwd=pool.tmp)
    for t in complete:
        assert refs.count(f"/{STUDY}-{t.number}\n") == 1, refs
    assert f"/{STUDY}-2\n" not in refs  # a pruned trial published nothing

    best = min(complete, key=lambda t: t.value)
    name = f"{STUDY}-{best.number}"
    exp = recorded(pool.origin, name, pool.tmp)
    assert exp["params"]["train"]["lr"] == best.params["train.lr"]
    assert byte_identical_again(pool, name) == exp["hashes"]["data/models/torch-scratch-rnn"]

    with api.client() as client:
        tables = [a for a in client.read_artifacts() if a.key == "rnn-sweep-trials"]
    assert tables, "the sweep's table artifact"
    data = tables[-1].data
    shown = data if isinstance(data, list) else json.loads(data)
    assert len(shown) == 4 and shown[0]["trial"] == best.number  # the best first


def byte_identical_again(pool: Pool, name: str) -> str:
    """Experiment ``name`` applied in a fresh clone of origin (`dvc exp pull` + `dvc exp apply`)
    and its model trained again (`dvc repro --force`, the run-cache ignored); its hash."""
    where = pool.tmp / "reproduce"
    git("clone", "-q", str(pool.origin), str(where), cwd=pool.tmp)
    env, remote = pool.check_env, pool.s3
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        git("config", key, value, cwd=where)  # `dvc exp apply` commits

    def dvc(*args: str) -> str:
        done = subprocess.run(["dvc", *args], cwd=where, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    dvc("remote", "add", "--local", "-d", "s3", remote["RNN_DVC_REMOTE"])
    dvc("remote", "modify", "--local", "s3", "endpointurl", remote["RNN_DVC_REMOTE_ENDPOINT"])
    dvc("exp", "pull", "origin", name)
    dvc("exp", "apply", name)
    dvc("repro", "-q", "--force", "--no-run-cache", "train@torch-scratch-rnn")
    return model_hashes(where)["data/models/torch-scratch-rnn"]


def test_a_sweep_on_the_pool(tmp_path, s3_remote):
    pool = new_pool(tmp_path, s3_remote)
    try:
        stack_comes_up_once(pool)
        push_sweep(pool)
        step("stack up, sweep pushed")
        rerun, killed = the_sweep_flow_killed_and_started_again(pool)
        dead_machine = a_training_killed_mid_trial(pool, killed)
        the_study_is_consistent(pool, rerun, killed, dead_machine)
        step("study consistent, best trial reproduced")
    finally:
        everything_started_is_stopped(pool)
