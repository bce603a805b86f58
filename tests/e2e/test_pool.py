"""The worker pool end to end, brought up by the project's own stack script (`python -m pool`):
PostgreSQL behind the Prefect server on 127.0.0.1, a bare git origin, moto's S3 server as the
DVC remote, and two process workers, each in a directory of its own standing for a machine.

1. Two pipeline runs of `rnn-pipeline/pool` (different `train.lr`, PyTorch's half of the grid) at
   once: each fans its grid out as `rnn-train` runs, both workers train, each pipeline ends with its own results, and the
   models hash as `dvc repro`'s with the same parameters.
2. A worker machine killed with SIGKILL while it trains: its flow run ends Crashed within
   CRASH_BOUND_S, the training runs again on the other worker from the pushed checkpoint and ends
   byte-identical to an uninterrupted run.
3. `pool up` again restarts the dead worker; the retrain deployment assigns prod in the model
   registry on one worker, a second retraining that does no better leaves prod as it is, and
   the other machine fetches the prod model (with its ONNX export) with no checkout.
4. The API refuses a client without the credential and serves one with it.
5. The server killed and brought back by `pool up`, then the database restarted, under a pipeline
   that trains: the run rides both out and completes; the workers are left running.
6. A soak of 4 tiny runs (twice the slots) queued at once over the two workers: all complete,
   twins agree; beside them a training with train.device cuda goes to the training-gpu queue,
   served by worker-2's GPU trainer, where it fails with the one-line "no CUDA" error.
7. The API credential, the S3 secret and the alerts' webhook URL are in no file the pipeline
   wrote and no git object.
8. A corpus of one's own added with `rnn corpus add` (pushed to the S3 remote, nowhere else a
   worker can read it): a pipeline run on it completes. The whole pool runs with every proxy
   pointing at a closed port, so nothing but 127.0.0.1 is reachable.
9. `pool up --notify`: a message reached the webhook for the crashed training, the failed CUDA
   pipeline and each promotion.
Everything started is stopped by `pool down --purge` and checked gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pool.postgres import Cluster
from tests.support.machines import git
from tests.support.pool import (
    CRASH_BOUND_S,
    MACHINE_WORKERS,
    RESTART_BOUND_S,
    Pool,
    dvc_repro_hashes,
    everything_started_is_stopped,
    experiment,
    kill_machine,
    new_pool,
    pool_cli,
    stack_comes_up_once,
    step,
    wait_until,
)
from tests.support.workspace import ROOT, TIME_MACHINE, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SLOW_EPOCHS = 80  # ~20 s for torch-scratch-rnn on one thread: killed at epoch 20, mid-way
# ~1 min alone (up to twice that beside other tests): outlasts a server restart (~30 s) and a
# database restart (seconds) that begin once it reaches epoch 10
SURVIVOR_EPOCHS = 240


def add_own_corpus(origin: Path, base: Path, s3_remote: dict, env: dict) -> str:
    """`rnn corpus add` of a text of one's own in a clone whose DVC remote is the pool's (it is
    pushed there and nowhere else), committed and pushed to origin's main."""
    work = base / "own-corpus"
    git("clone", "-q", str(origin), str(work), cwd=base)
    run = {"cwd": work, "env": env, "check": True, "capture_output": True, "text": True}
    subprocess.run(
        ["dvc", "remote", "add", "--local", "-d", "s3", s3_remote["RNN_DVC_REMOTE"]], **run
    )
    endpoint = s3_remote["RNN_DVC_REMOTE_ENDPOINT"]
    subprocess.run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], **run)
    text = base / "own.txt"
    text.write_text(TIME_MACHINE.read_text(encoding="utf-8")[20_000:30_000])
    added = subprocess.run([sys.executable, "-m", "rnn.cli", "corpus", "add", str(text)], **run)
    assert '"pushed": true' in added.stdout, added.stdout + added.stderr
    ident = ["-c", "user.email=t@t", "-c", "user.name=t"]
    git("add", "-A", cwd=work)
    git(*ident, "commit", "-qm", "own corpus", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return "data/raw/own.txt"


def secrets_in(home: Path, origin: Path, secrets: list[str], exclude: set[Path]) -> list[str]:
    """Files under the stack's home (logs, every machine's workspaces and DVC caches) and git
    objects of every ref on origin that contain one of ``secrets``."""
    found = []
    for path in home.rglob("*"):
        # Prefect's process worker keeps each job's environment (the API credential included)
        # in its own scratch directory on the worker's disk: not an output of the pipeline
        if any(part.startswith("prefect-workspace-attempt-") for part in path.parts):
            continue
        if path.is_file() and path not in exclude and not path.is_symlink():
            data = path.read_bytes()
            found += [str(path) for s in secrets if s.encode() in data]
    for secret in secrets:
        hits = subprocess.run(
            ["git", "--git-dir", str(origin), "log", "--all", "-p", "-S", secret, "--oneline"],
            capture_output=True,
            text=True,
        ).stdout
        found += [f"origin: {line}" for line in hits.splitlines()[:3]]
    return found


def two_pipelines_fan_out_over_both_workers(pool: Pool, tiny_repro_hashes: dict) -> None:
    """Each pipeline's grid trains on both workers; the models hash as `dvc repro`'s."""
    api, base = pool.api, pool.base
    # PyTorch's runs only: the flows do not depend on the framework, and TensorFlow start-ups
    # are what two cores have least of (TensorFlow on a deployed worker: tests/e2e/test_e2e.py)
    torch_only = {**base, "backend": "torch"}
    ids = {
        1.0: api.start("rnn-pipeline/pool", torch_only),
        2.0: api.start("rnn-pipeline/pool", {**torch_only, "overrides": {"train": {"lr": 2.0}}}),
    }
    runs = api.wait_final(list(ids.values()))
    for run in runs.values():
        assert run.state.is_completed(), (run.state, api.logs(str(run.id))[-20:])
    trains = api.train_runs()
    assert len(trains) == 4 and all(r.state.is_completed() for r in trains)
    assert {api.machine_of(str(r.id)) for r in trains} == {"worker-1", "worker-2"}
    step("two pipelines done")
    recorded = {lr: experiment(pool.origin, runs[i], pool.tmp) for lr, i in ids.items()}
    assert len(recorded[1.0]["hashes"]) == 2
    assert recorded[2.0]["params"]["train"]["lr"] == 2.0
    assert len(recorded[2.0]["hashes"]) == 2
    for path, digest in recorded[2.0]["hashes"].items():
        assert recorded[1.0]["hashes"][path] != digest  # another lr, other weights
    assert recorded[1.0]["hashes"] == {
        k: v for k, v in tiny_repro_hashes.items() if k.startswith("data/models/torch-")
    }


def training_on_a_dead_machine(pool: Pool, parent: str):
    """The first training of ``parent``'s that reaches epoch 20 on a worker other than the
    parent's own; returns (its run, its machine)."""
    api, deadline = pool.api, time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline, "no training reached epoch 20 on a worker"
        time.sleep(1)
        parent_machine = api.machine_of(parent)
        for r in api.children(parent) if parent_machine else []:
            machine = api.machine_of(str(r.id))
            if machine not in (None, parent_machine) and api.epochs_done(str(r.id)) >= 20:
                return r, machine


def a_dead_machines_training_resumes_on_the_other(pool: Pool) -> None:
    """A machine killed mid-training: its run ends Crashed within the bound, the training runs
    again on the other worker from the pushed checkpoint, byte-identical to an uninterrupted
    run."""
    api, state = pool.api, pool.state
    slow = {"train": {"epochs": SLOW_EPOCHS, "checkpoint_every": 10, "lr": 0.7}}
    parent = api.start("rnn-pipeline/pool", {**pool.base, "backend": "torch", "overrides": slow})
    dead_run, dead_machine = training_on_a_dead_machine(pool, parent)
    assert api.run(str(dead_run.id)).state.is_running()
    killed_at = time.monotonic()
    assert not kill_machine(
        [state["workers"][dead_machine], state["workers"][f"{dead_machine}-pipelines"]]
    )
    while not api.run(str(dead_run.id)).state.is_crashed():
        assert time.monotonic() - killed_at < CRASH_BOUND_S, api.run(str(dead_run.id)).state
        time.sleep(1)
    print(f"flow run on the killed machine Crashed after {time.monotonic() - killed_at:.0f} s")
    final = api.wait_final([parent])[parent]
    assert final.state.is_completed(), api.logs(parent)[-20:]
    reruns = [r for r in api.children(parent) if r.name == dead_run.name and r.id != dead_run.id]
    assert reruns and reruns[-1].state.is_completed()
    rerun_logs = api.logs(str(reruns[-1].id))
    assert api.machine_of(str(reruns[-1].id)) != dead_machine
    resumed = [
        int(m.split("resumed from epoch ")[1].split(",")[0])
        for m in rerun_logs
        if "resumed from epoch " in m
    ]
    assert resumed and resumed[0] >= 20, rerun_logs[-10:]
    killed = experiment(pool.origin, final, pool.tmp)
    run = dead_run.name.removeprefix(f"{api.run(parent).name}-")
    stage = f"train@{run}"
    uninterrupted = dvc_repro_hashes(pool.origin, killed["params"], stage, pool.tmp, pool.check_env)
    assert killed["hashes"][f"data/models/{run}"] == uninterrupted[f"data/models/{run}"]


def retraining_promotes_where_every_machine_sees_it(pool: Pool) -> None:
    """`pool up` brings the dead machine back; the retrain deployment registers both models and
    assigns them prod on one worker, and the other machine, with no checkout, fetches the prod
    model from origin and the remote (`dvc artifacts get`)."""
    api = pool.api
    assert pool_cli(*pool.up, env=pool.env)["workers"] == {n: True for n in MACHINE_WORKERS}
    pool.reload()
    retrain = api.start("rnn-retrain/weekly", {"backend": "torch", "fan_out": True})
    done = api.wait_final([retrain])[retrain]
    assert done.state.is_completed(), api.logs(retrain)[-20:]
    promoter = api.machine_of(retrain)
    tags = git("ls-remote", "--tags", "--refs", str(pool.origin), cwd=pool.tmp).split()
    prod = sorted(t.removeprefix("refs/tags/") for t in tags if "#prod#" in t)
    assert prod == ["torch-concise-rnn#prod#1", "torch-scratch-rnn#prod#1"]
    # a second retraining that does no better (nothing changed: every model restored) leaves
    # prod as it is
    again = api.start("rnn-retrain/weekly", {"backend": "torch", "fan_out": True})
    done = api.wait_final([again])[again]
    assert done.state.is_completed(), api.logs(again)[-20:]

    # (the decisions are its last log lines: they may reach the API just after its final state)
    def decisions() -> list[str]:
        return [m for m in api.logs(again) if ": kept current" in m or ": promoted" in m]

    wait_until(lambda: len(decisions()) == 2, 30, "the second retraining's decisions")
    assert all("kept current (prod holds this model)" in m for m in decisions()), decisions()
    tags = git("ls-remote", "--tags", "--refs", str(pool.origin), cwd=pool.tmp).split()
    assert sorted(t.removeprefix("refs/tags/") for t in tags if "#prod#" in t) == prod
    other = next(m for m in ("worker-1", "worker-2") if m != promoter)
    view = pool.home / "machines" / other / "view"
    view.mkdir()
    remote, endpoint = pool.s3["RNN_DVC_REMOTE"], pool.s3["RNN_DVC_REMOTE_ENDPOINT"]
    config = view.parent / "remote.conf"  # where the remote is; the keys are in the environment
    config.write_text(
        f"[core]\n    remote = s3\n['remote \"s3\"']\n    url = {remote}\n"
        f"    endpointurl = {endpoint}\n"
    )
    subprocess.run(
        ["dvc", "artifacts", "get", str(pool.origin), "torch-concise-rnn", "--stage", "prod",
         "-o", "model", "--config", str(config)],
        cwd=view, env=pool.check_env, check=True, capture_output=True,
    )  # fmt: skip
    record = json.loads((view / "model/run.json").read_text())
    assert record["variant"] == "concise"
    assert (view / "model/onnx/model.onnx").is_file()  # the export, versioned with the model
    evaluated = json.loads(
        git("--git-dir", str(pool.origin), "show",
            "refs/tags/torch-concise-rnn#prod#1:data/eval/torch-concise-rnn/eval.json",
            cwd=pool.tmp)
    )  # fmt: skip
    assert evaluated["run"] == "torch-concise-rnn"
    # `rnn generate --from` in an empty directory: the prod model's text, as evaluated
    empty = view / "generate"
    empty.mkdir()
    machine_remote = {**pool.check_env, "RNN_DVC_REMOTE": remote,
                      "RNN_DVC_REMOTE_ENDPOINT": endpoint}  # fmt: skip
    generated = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "generate", "--from", str(pool.origin),
         "--artifact", "torch-concise-rnn", "--stage", "prod", "--prefix", "time traveller",
         "--num-preds", str(len(evaluated["samples"]["time traveller"]) - len("time traveller"))],
        cwd=empty, env={**machine_remote, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip("\n") == evaluated["samples"]["time traveller"]
    assert not any(empty.iterdir())  # nothing left behind but the text


def the_api_wants_its_credential(pool: Pool) -> None:
    """Refused without the credential or with a wrong one, served with it."""
    api = pool.api
    assert api.status("/flow_runs/filter", None) == 401
    assert api.status("/flow_runs/filter", "rnn:not-the-secret") == 401
    assert api.status("/flow_runs/filter", pool.state["auth_string"]) == 200


def a_pipeline_rides_out_server_and_database_restarts(pool: Pool) -> str:
    """A pipeline training in its own flow run (long enough to outlast both restarts)
    completes after the server, then the database, restarted; `pool up` leaves the workers be.
    Returns the run's id."""
    api = pool.api
    slow_here = {"train": {"epochs": SURVIVOR_EPOCHS, "checkpoint_every": 20, "lr": 0.8}}
    survivor = api.start(
        "rnn-pipeline/pool",
        {"params_file": "params.yaml", "backend": "torch", "variant": "scratch",
         "fan_out": False, "overrides": slow_here},
    )  # fmt: skip
    wait_until(lambda: api.epochs_done(survivor) >= 10, 300, "training before the restarts")
    assert not kill_machine([pool.state["server_pid"]])  # the server and its children
    workers_before = pool.state["workers"]
    assert pool_cli(*pool.up, env=pool.env)["server"]  # `pool up` starts what is not running
    pool.reload()
    assert pool.state["workers"] == workers_before  # and leaves the workers (and their runs) be
    step("server restarted")
    pg = pool.state["pg"]
    cluster = Cluster(**{**pg, "data_dir": Path(pg["data_dir"])})
    cluster.stop()
    cluster.start()
    step("database restarted")
    # its process lives on the worker, its client retries while the server or the database is
    # away, and it completes within a bound
    outcome = api.wait_final([survivor], timeout=RESTART_BOUND_S)[survivor]
    assert outcome.state.is_completed(), (outcome.state, api.logs(survivor)[-20:])
    assert api.epochs_done(survivor) == SURVIVOR_EPOCHS  # its last epoch's line reached the API
    return survivor


def a_gpu_training_starts(pool: Pool) -> str:
    """A pipeline whose training asks for CUDA; returns its id (a_gpu_training_went_to_the_gpu
    checks where it went)."""
    cuda = {"train": {"device": "cuda"}}
    return pool.api.start(
        "rnn-pipeline/pool",
        {**pool.base, "backend": "torch", "variant": "scratch", "overrides": cuda},
    )


def a_gpu_training_went_to_the_gpu(pool: Pool, parent: str) -> None:
    """The CUDA training ran on the training-gpu queue, on the machine with a GPU (worker-2's
    GPU trainer), and failed there with the one-line "no CUDA" error (no GPU on this machine)."""
    api = pool.api
    final = api.wait_final([parent])[parent]
    assert final.state.is_failed(), final.state
    (child,) = api.children(parent)
    child = api.run(str(child.id))
    assert child.work_queue_name == "training-gpu" and child.state.is_failed(), child.state
    assert "PyTorch sees no CUDA device; fix: set train.device" in child.state.message
    assert api.machine_of(str(child.id)) == "worker-2"


def a_soak_of_trainings_completes(pool: Pool, alongside: str) -> list[str]:
    """Twice as many tiny trainings as the pool has slots, queued at once over the two workers,
    2 learning rates twice each, ``alongside`` a GPU training: every one completes, with its
    twin's result only (a twin that starts after the other finished restores it from the
    run-cache instead of training); the GPU training took none of their slots. Returns their
    run ids."""
    api = pool.api
    rates = [round(0.55 + 0.1 * i, 2) for i in range(2)] * 2  # none trained before
    soak: dict[float, list[str]] = {}
    for lr in rates:
        params = tiny_params(lr)
        soak.setdefault(lr, []).append(
            api.start(
                "rnn-train/default",
                {"backend": "torch", "variant": "scratch", "model": "rnn", "params": params},
            )
        )
    ids = [i for pair in soak.values() for i in pair]
    finals = api.wait_final(ids)
    assert all(r.state.is_completed() for r in finals.values()), {
        i: r.state for i, r in finals.items() if not r.state.is_completed()
    }
    results = {lr: {api.final_ppl(i) for i in pair} - {None} for lr, pair in soak.items()}
    assert all(len(ppl) == 1 for ppl in results.values()), results  # twins agree
    assert len({next(iter(ppl)) for ppl in results.values()}) == len(results)  # rates differ
    assert {api.machine_of(i) for i in ids} == {"worker-1", "worker-2"}
    a_gpu_training_went_to_the_gpu(pool, alongside)
    # none left running or pending (the weekly deployment's future runs are only scheduled)
    assert not [r for r in api.all_runs() if r.state.is_running() or r.state.is_pending()]
    return ids


def no_secret_in_any_output(pool: Pool, run_ids: list[str]) -> None:
    """The API credential and the S3 secret key are in no file, git object or run log."""
    webhook = pool.receiver.url.split("//", 1)[1]
    secrets_ = [pool.state["auth_string"], pool.s3["AWS_SECRET_ACCESS_KEY"], webhook]
    home = pool.home
    leaks = secrets_in(
        home, pool.origin, secrets_, exclude={home / "state.json", home / "stack.env"}
    )
    assert not leaks, leaks
    for run_id in run_ids:
        assert not [m for m in pool.api.logs(run_id) if any(x in m for x in secrets_)]


def own_corpus_from_the_remote_alone(pool: Pool) -> None:
    """A corpus of one's own, only in the DVC remote; the pool reaches nothing but 127.0.0.1."""
    own = add_own_corpus(pool.origin, pool.tmp, pool.s3, pool.check_env)
    offline = pool.api.start(
        "rnn-pipeline/pool", {**pool.base, "backend": "torch", "variant": "scratch"}
    )
    final = pool.api.wait_final([offline])[offline]
    assert final.state.is_completed(), pool.api.logs(offline)[-20:]
    assert experiment(pool.origin, final, pool.tmp)["params"]["ingest"]["source"] == own


def the_alerts_reached_the_webhook(pool: Pool) -> None:
    """`pool up --notify`: the killed machine's training (Crashed), the CUDA pipeline (Failed)
    and the first retraining's two promotions each sent a message; the second retraining none."""
    texts = pool.receiver.texts()
    assert any(" of rnn-train/default ended Crashed: " in t for t in texts), texts
    assert any(" of rnn-pipeline/pool ended Failed: " in t for t in texts), texts
    promoted = sorted(t.split(" ", 1)[0] for t in texts if " is now prod: " in t)
    assert promoted == ["torch-concise-rnn", "torch-scratch-rnn"], texts


def test_pool_fans_out_survives_a_dead_machine_and_promotes(tmp_path, s3_remote, tiny_repro_hashes):
    """The steps in order on one stack (each needs the state the one before left)."""
    pool = new_pool(tmp_path, s3_remote)
    try:
        stack_comes_up_once(pool)
        step("stack up")
        two_pipelines_fan_out_over_both_workers(pool, tiny_repro_hashes)
        step("repro compared")
        a_dead_machines_training_resumes_on_the_other(pool)
        step("resumed run compared")
        retraining_promotes_where_every_machine_sees_it(pool)
        the_api_wants_its_credential(pool)
        step("auth checked")
        survivor = a_pipeline_rides_out_server_and_database_restarts(pool)
        step("the pipeline completed across the restarts")
        gpu = a_gpu_training_starts(pool)
        soak = a_soak_of_trainings_completes(pool, alongside=gpu)
        step(f"soak of {len(soak)} runs done")
        no_secret_in_any_output(pool, [survivor, *soak[:2]])
        own_corpus_from_the_remote_alone(pool)
        step("own corpus from the remote alone done")
        the_alerts_reached_the_webhook(pool)
    finally:
        everything_started_is_stopped(pool)
