"""`rnn sweep` on one machine, in a git + DVC copy of the project: a good trial completes, a
deliberately bad one is pruned after its first epoch, one too large for memory fails with its one
line; each completed trial is a DVC experiment whose recorded parameters reproduce its weights
byte for byte; Ctrl-C leaves the study consistent and the rerun continues it, one result per
point; a bad sweep file is one line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.workspace import copy_project, tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODEL = "data/models/torch-scratch-rnn/model.safetensors"
SWEEP = {
    "study": "tiny",
    "run": {"backend": "torch", "variant": "scratch", "model": "rnn"},
    "trials": 3,
    "sampler": {"name": "random", "seed": 1},
    "pruner": {"name": "median", "startup_trials": 1},
    "fixed": {"train.epochs": 3},
    "space": {
        "train.lr": {"float": [0.0005, 2.0], "log": True},
        "models.rnn.num_hiddens": {"choice": [16, 40_000_000]},
    },
}
GOOD, BAD, HUGE = (
    {"train.lr": 1.0, "models.rnn.num_hiddens": 16},
    {"train.lr": 0.0005, "models.rnn.num_hiddens": 16},  # learns nothing in an epoch
    {"train.lr": 1.0, "models.rnn.num_hiddens": 40_000_000},  # refused by the memory check
)


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def sh(*cmd: str, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rnn_sweep(repo: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rnn.cli", "sweep", *args]
    return subprocess.run(cmd, cwd=repo, env=env(), capture_output=True, text=True, timeout=900)


def study(repo: Path):
    import optuna

    from rnn.search.study import storage_for

    journal = str(repo / "sweeps" / "tiny" / "journal.log")
    return optuna.load_study(study_name="tiny", storage=storage_for(journal))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path) -> Path:
    params = tiny_params()
    params["partition"].update(train=0.8, valid=0.1, test=0.1)
    repo = copy_project(tmp_path / "repo", params)
    (repo / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    return repo


def test_a_sweep_on_one_machine(repo):
    from rnn.search.local import journal_path
    from rnn.search.space import SweepConfig
    from rnn.search.study import open_study, storage_for

    # The points to try, in order (the sampler draws after them): the study is the sweep's own.
    planned = open_study(
        SweepConfig.model_validate(SWEEP), storage_for(journal_path(repo, "tiny")), 3
    )
    for point in (GOOD, BAD, HUGE):
        planned.enqueue_trial(point)
    done = rnn_sweep(repo)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["trials"] == {"complete": 1, "pruned": 1, "fail": 1}
    assert summary["best"]["experiment"] == "tiny-0"
    trials = study(repo).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert max(trials[1].intermediate_values) == 1  # pruned after its first epoch
    assert "needs about" in trials[2].user_attrs["reason"]  # its one line, kept with the trial
    report = (repo / "sweeps/tiny/report/sweep.md").read_text()
    assert "tiny-0" in report and "pruned" in report and "time traveller" in report
    assert all(
        (repo / "sweeps/tiny/report" / p).stat().st_size > 1000
        for p in ("history.png", "params.png")
    )

    # Every completed trial is a DVC experiment; its recorded parameters reproduce its weights.
    shown = sh("dvc", "exp", "show", "--json", cwd=repo)
    assert "tiny-0" in shown and "tiny-1" not in shown
    sh("dvc", "exp", "apply", "tiny-0", cwd=repo)
    recorded = sha(repo / MODEL)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 1.0
    sh("dvc", "repro", "--force", "--no-run-cache", "train@torch-scratch-rnn", cwd=repo)
    assert sha(repo / MODEL) == recorded
    sh("git", "checkout", "--", "params.yaml", cwd=repo)

    # Ctrl-C mid-trial: exit 130; the study marks that trial interrupted and the rerun trains its
    # point first, so each point ends with one result and the budget counts it once.
    planned.enqueue_trial({"train.lr": 0.5, "models.rnn.num_hiddens": 16})
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnn.cli", "sweep", "--trials", "4"],
        cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not [t for t in study(repo).trials if t.state.name == "RUNNING"]:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    again = rnn_sweep(repo, "--trials", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study(repo).trials
    interrupted = [t for t in trials if t.user_attrs.get("reason") == "interrupted"]
    assert len(interrupted) == 1 and len(trials) == 5
    retried = [t for t in trials if t.params == interrupted[0].params and t is not interrupted[0]]
    assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED")  # one result


def test_a_bad_sweep_file_is_one_line_and_nothing_runs(repo):
    (repo / "sweep.yaml").write_text(
        yaml.safe_dump({**SWEEP, "space": {"train.lrr": {"float": [0.1, 1]}}})
    )
    result = rnn_sweep(repo)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "'train.lrr' is not a key of params.yaml" in result.stderr
    assert not (repo / "sweeps").exists()
