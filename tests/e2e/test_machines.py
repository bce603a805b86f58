"""Runs that never share a workspace, on machines that meet only through a bare git origin and
the DVC remote (a local directory, and an S3 server on 127.0.0.1): each "machine" is a
directory and process tree of its own (tests/support/machines.py). Flows run in their own processes
against one Prefect API, as workers would run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.machines import Machine, make_origin, model_hashes
from tests.support.s3 import BUCKET, boto_keys
from tests.support.workspace import stop, tail, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(harness) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    return make_origin(tmp_path_factory.mktemp("origin"), tiny_params())


@pytest.fixture(scope="module")
def local_remote(tmp_path_factory) -> dict[str, str]:
    return {"RNN_DVC_REMOTE": str(tmp_path_factory.mktemp("dvc-remote"))}


@pytest.fixture
def machines(tmp_path, origin, api):
    """A factory of machines; every process they started is stopped and checked gone."""
    made: list[Machine] = []

    def make(name: str, remote_env: dict[str, str]) -> Machine:
        m = Machine(tmp_path / name, origin, api, remote_env)
        made.append(m)
        return m

    yield make
    procs = [p for m in made for p in m.started]
    for p in procs:
        stop(p)
    assert all(p.poll() is not None for p in procs)


def weights(checkout: Path, run: str) -> bytes:
    return (checkout / "data/models" / run / "model.safetensors").read_bytes()


def lr_of(checkout: Path, run: str) -> float:
    return json.loads((checkout / "data/models" / run / "run.json").read_text())["params"]["train"][
        "lr"
    ]


def test_concurrent_runs_get_their_own_workspaces_and_one_workspace_one_writer(
    machines, local_remote
):
    a, b = machines("a", local_remote), machines("b", local_remote)
    wa, wb = a.clone(), b.clone()
    slow = {"backend": "torch"}
    runs = {
        "a": a.start_flow(wa, "a", overrides={"train": {"lr": 0.5}}, **slow),
        "b": b.start_flow(wb, "b", overrides={"train": {"lr": 2.0}}, **slow),
    }
    # A second run on workspace A while A's run holds it: refused at once, naming that run.
    lock, deadline = wa / ".rnn-workspace.lock", time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()):
        assert time.monotonic() < deadline, tail(a.logs / "a.log")
        time.sleep(0.2)
    intruder = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "train", "-b", "torch", "-v", "scratch"],
        cwd=wa,
        env=a.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert intruder.returncode == 2
    assert intruder.stderr.count("\n") == 1 and "is in use by flow run" in intruder.stderr
    results = {name: m.finish_flow(runs[name], name) for name, m in (("a", a), ("b", b))}

    for name, checkout, lr in (("a", wa, 0.5), ("b", wb, 2.0)):
        assert results[name]["workspace"] == str(checkout)
        assert results[name]["code"] == str(checkout / "rnn")  # the clone's code, not installed
        for run in ("torch-scratch-rnn", "torch-concise-rnn"):
            assert lr_of(checkout, run) == lr
        table = json.loads((checkout / "reports/report.json").read_text())
        assert {r["run"] for r in table} == {"torch-scratch-rnn", "torch-concise-rnn"}
        assert results[name]["experiment"]
    assert weights(wa, "torch-scratch-rnn") != weights(wb, "torch-scratch-rnn")
    assert (wa / "reports/report.md").read_text() != (wb / "reports/report.md").read_text()
    ppl = {n: {r["run"]: r["train_perplexity"] for r in results[n]["report"]} for n in results}
    assert ppl["a"] != ppl["b"]


def test_machine_b_restores_every_stage_and_trains_nothing(machines, s3_remote, tiny_repro_hashes):
    """Over the S3 remote (the pool's kind; the other tests here share a local directory)."""
    a, b = machines("a", s3_remote), machines("b", s3_remote)
    wa = a.clone()
    first = a.flow(wa, "a", backend="torch")
    assert sorted(first["trained"]) == ["torch-concise-rnn", "torch-scratch-rnn"]
    wb = b.clone()
    second = b.flow(wb, "b", backend="torch")
    assert second["trained"] == []  # every training restored, none rerun
    assert {"ingest", "vocab", "partition"} <= set(second["restored"])
    assert all(f"train@{r}" in second["restored"] for r in first["trained"])
    same_runs = {k: v for k, v in tiny_repro_hashes.items() if "/tf-" not in k}
    assert model_hashes(wb) == model_hashes(wa) == same_runs
    assert b.run("dvc", "status", "--json", cwd=wb).stdout.strip() in ("{}", "")


def test_training_killed_in_one_workspace_resumes_in_another(machines, s3_remote, tmp_path):
    import boto3

    params = tiny_params()
    params["train"].update(epochs=96, checkpoint_every=4)
    runs = {"backend": "torch", "variant": "scratch"}
    overrides = {"train": params["train"]}
    a, b, c = (machines(n, s3_remote) for n in ("a", "b", "c"))
    wa = a.clone()
    flow_a = a.start_flow(wa, "a", overrides=overrides, **runs)
    s3 = boto3.client("s3", endpoint_url=s3_remote["RNN_DVC_REMOTE_ENDPOINT"], **boto_keys())
    deadline = time.monotonic() + 300
    while _pushed_epochs(s3) < 12:
        assert flow_a.poll() is None, tail(a.logs / "a.log")
        assert time.monotonic() < deadline, tail(a.logs / "a.log")
        time.sleep(0.2)
    os.killpg(flow_a.pid, signal.SIGKILL)
    flow_a.wait(30)
    assert not (wa / "data/models/torch-scratch-rnn").exists()  # killed before it finished

    wb = b.clone()
    resumed = b.flow(wb, "b", overrides=overrides, **runs)
    (summary,) = resumed["training"]
    assert summary["resumed_from_epoch"] >= 12 and summary["epochs"] == 96
    # Uninterrupted, with the CLI, in a third workspace that shares nothing.
    wc = c.clone()
    (wc / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("ingest", "vocab", "partition"):
        c.run(sys.executable, "-m", "rnn.cli", stage, cwd=wc)
    c.run(sys.executable, "-m", "rnn.cli", "train", "-b", "torch", "-v", "scratch", cwd=wc)
    assert weights(wb, "torch-scratch-rnn") == weights(wc, "torch-scratch-rnn")


def _pushed_epochs(s3) -> int:
    """The newest generation pushed (checkpoints/<fingerprint>/checkpoint-<epoch>.json)."""
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="store/checkpoints/")
    names = (obj["Key"].rsplit("/", 1)[-1] for obj in listing.get("Contents", []))
    return max((int(n[11:-5]) for n in names if n.endswith(".json")), default=0)


def test_recorded_runs_are_listed_compared_and_restored_elsewhere(machines, local_remote):
    a, d = machines("a", local_remote), machines("d", local_remote)
    wa = a.clone()
    slow = {"backend": "tf", "variant": "concise"}
    names = [
        a.flow(wa, f"lr{lr}", overrides={"train": {"lr": lr}}, **slow)["experiment"]
        for lr in (0.5, 1.5)
    ]
    kept = weights(wa, "tf-concise-rnn")  # the lr 1.5 run's model

    wd = d.clone()
    listed = d.run(sys.executable, "-m", "stores.recorded", "list", cwd=wd).stdout.split()
    assert set(names) <= set(listed)
    report = d.run(sys.executable, "-m", "stores.recorded", "compare", *names, cwd=wd).stdout
    for name in names:
        assert f"| {name}/tf-concise-rnn |" in report
    d.run("dvc", "exp", "pull", "origin", names[-1], cwd=wd)
    shown = json.loads(d.run("dvc", "exp", "show", "--json", cwd=wd).stdout)
    assert "1.5" in json.dumps(shown) and "perplexity" in json.dumps(shown)
    for key, value in (("user.name", "d"), ("user.email", "d@d")):  # a person's clone has these
        d.run("git", "config", key, value, cwd=wd)
    d.run("dvc", "exp", "apply", names[-1], cwd=wd)
    d.run("dvc", "pull", "--allow-missing", cwd=wd)  # a partial run: no other stages
    assert lr_of(wd, "tf-concise-rnn") == 1.5
    assert weights(wd, "tf-concise-rnn") == kept
