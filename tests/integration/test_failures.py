"""What goes wrong besides a kill: a diverging training, a write that fails midway (a file-size
limit, as a full disk would), and a DVC remote that cannot be reached while a flow pushes. Each
gives one clear error, keeps every earlier result and the local work, and the next run
completes once the fault is gone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_bad_input import RUN, one_clear_line
from tests.support.workspace import ROOT, SHAKESPEARE, copy_project, free_port, tiny_params

pytestmark = pytest.mark.slow


def rnn(ws: Path, *args: str, limit_kb: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)]
    if limit_kb is not None:  # bash's ulimit -f counts 1024-byte blocks
        cmd = ["bash", "-c", f'ulimit -f {limit_kb} && exec "$@"', "rnn", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def snapshot(ws: Path) -> dict[str, str]:
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.rglob("*"))
        if p.is_file() and p.name != ".rnn-workspace.lock" and not p.name.endswith(".yaml")
    }


def write_params(ws: Path, params: dict, name: str = "params.yaml") -> str:
    (ws / name).write_text(yaml.safe_dump(params))
    return str(ws / name)


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_a_diverging_training_stops_at_its_epoch_and_keeps_everything_earlier(tmp_path, backend):
    ws = tmp_path
    params = tiny_params()
    params["train"].update(epochs=4, checkpoint_every=1)
    write_params(ws, params)
    run = [*RUN]
    run[1] = backend
    for args in (["ingest"], ["vocab"], ["partition"], ["train", *run], ["evaluate", *run]):
        assert rnn(ws, *args).returncode == 0
    before = snapshot(ws)
    # the learning rate warms up towards 1e4 without clipping (60 steps an epoch, +3 each epoch):
    # finite for the first epoch or two, then it blows up (at epoch 3 on both backends here)
    params["train"].update(lr=1e4, theta=None, schedule={"warmup_steps": 200_000}, epochs=8)
    diverging = write_params(ws, params, "diverging.yaml")
    result = rnn(ws, "train", *run, "--params", diverging)
    one_clear_line(result, "training diverged at epoch ")
    epoch = int(result.stderr.split("diverged at epoch ")[1].split(":")[0])
    assert epoch >= 2 and "lower train.lr" in result.stderr
    assert f"its checkpoint at epoch {epoch - 1} is kept" in result.stderr
    after = snapshot(ws)

    def results(files: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in files.items() if "/checkpoints/" not in k}

    # the good run's model, evaluation and metrics are untouched; only the diverging run's own
    # checkpoints (another fingerprint) replaced the good run's generations
    assert results(after) == results(before)
    again = rnn(ws, "train", *run, "--params", diverging)  # resumes, and diverges again
    one_clear_line(again, f"training diverged at epoch {epoch}:")


def test_a_write_that_fails_midway_keeps_the_earlier_result_and_leaves_nothing(tmp_path):
    ws = tmp_path
    params = tiny_params()
    write_params(ws, params)
    assert rnn(ws, "ingest").returncode == 0
    before = snapshot(ws)
    params["ingest"]["source"] = str(SHAKESPEARE)  # 1.1 MB of text: past a 256 KiB limit
    bigger = write_params(ws, params, "bigger.yaml")
    result = rnn(ws, "ingest", "--params", bigger, limit_kb=256)
    one_clear_line(result, "File too large")
    assert "ulimit -f" in result.stderr
    assert snapshot(ws) == before
    assert not list(ws.rglob("*.tmp"))
    assert rnn(ws, "ingest", "--params", bigger).returncode == 0  # the fault gone, it completes


def test_an_unreachable_remote_fails_the_push_clearly_and_a_rerun_only_pushes(
    harness, tmp_path, s3_remote, monkeypatch
):
    from flows.pipeline import pipeline
    from stores.dvc_sync import PUSH_ATTEMPTS

    repo = copy_project(tmp_path / "repo")
    monkeypatch.chdir(repo)
    for key, value in s3_remote.items():
        monkeypatch.setenv(key, value)
    live = s3_remote["RNN_DVC_REMOTE_ENDPOINT"]
    monkeypatch.setenv("RNN_DVC_REMOTE_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody
    monkeypatch.setattr("stores.dvc_sync.PUSH_BACKOFF_S", 0.1)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries, per object
    state = pipeline(backend="torch", variant="scratch", return_state=True)
    assert state.is_failed()
    message = state.message or ""
    with pytest.raises(Exception) as failure:
        state.result()
    assert f"dvc push to the remote failed {PUSH_ATTEMPTS} times" in str(failure.value), message
    assert "rerun once the remote is reachable" in str(failure.value)
    model = repo / "data/models/torch-scratch-rnn/model.safetensors"
    kept = model.stat().st_mtime_ns  # the local work is kept
    monkeypatch.setenv("RNN_DVC_REMOTE_ENDPOINT", live)
    pipeline(backend="torch", variant="scratch")
    assert model.stat().st_mtime_ns == kept  # nothing recomputed: only the push was missing
    pushed = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "status", "--cloud"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert pushed.returncode == 0 and "in sync" in pushed.stdout, pushed.stdout
