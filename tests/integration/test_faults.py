"""Killed anywhere: SIGKILL at named points of every stage (rnn/faults.py), through the same CLI
that `dvc.yaml` runs, and `dvc repro` killed mid-training. After each kill nothing that looks
complete is left half-written, the earlier good outputs stay, and rerunning the same command
resumes or redoes only what was incomplete, ending byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rnn.faults import KILL_ENV
from rnn.store.dvc_cli import dvc_command
from tests.support.workspace import ROOT, copy_project, tiny_params

pytestmark = pytest.mark.slow

# The kill points are in the framework-free store and training code (atomic writes, checkpoint
# generations, the publish); resuming each framework's engine from a checkpoint is
# tests/integration/test_train_pipeline.py's. TensorFlow's start-up here would double the test.
TRAINS = {"torch": "scratch"}
EPOCHS = 4


def params() -> dict:
    p = tiny_params()
    p["train"].update(
        epochs=EPOCHS, checkpoint_every=1, backends=list(TRAINS), variants=["scratch"]
    )
    return p


def rnn(ws: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)],
        capture_output=True,
        text=True,
        env=env,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def summary(result: subprocess.CompletedProcess) -> dict:
    return json.loads(ok(result).strip().splitlines()[-1])


def killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])


def train_args(backend: str) -> list[str]:
    return ["train", "--backend", backend, "--variant", TRAINS[backend], "--model", "rnn"]


def evaluate_args(backend: str) -> list[str]:
    return ["evaluate", "--backend", backend, "--variant", TRAINS[backend], "--model", "rnn"]


def outputs(ws: Path) -> dict[str, str]:
    """sha256 of every deterministic output (metrics and the report hold timings)."""
    data = ws / "data"
    files = [data / "corpus.parquet", *sorted((data / "vocab").iterdir())]
    files += sorted((data / "partition").iterdir())
    for backend, variant in TRAINS.items():
        run = f"{backend}-{variant}-rnn"
        files += [data / "models" / run / "model.safetensors", data / "models" / run / "run.json"]
        files.append(data / "eval" / run / "eval.json")
    return {str(f.relative_to(ws)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def no_temporaries(ws: Path) -> None:
    """A killed writer leaves only hidden temporaries, and the next command in the workspace
    sweeps them."""
    left = list(ws.rglob(".*.tmp"))
    assert not left, left


def checkpoint_epochs(ws: Path, run: str) -> int:
    """The newest generation whose checksum file was written (its weights are complete)."""
    ckpt = ws / "data" / "checkpoints" / run
    return max((json.loads(p.read_text())["epoch"] for p in ckpt.glob("*.json")), default=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, str]:
    ws = tmp_path_factory.mktemp("uninterrupted")
    (ws / "params.yaml").write_text(yaml.safe_dump(params()))
    for args in (["ingest"], ["vocab"], ["partition"]):
        ok(rnn(ws, *args))
    for backend in TRAINS:
        ok(rnn(ws, *train_args(backend)))
        ok(rnn(ws, *evaluate_args(backend)))
    return outputs(ws)


def test_killed_at_every_point_of_every_stage_resumes_byte_identical(tmp_path, uninterrupted):
    ws = tmp_path
    (ws / "params.yaml").write_text(yaml.safe_dump(params()))
    data = ws / "data"

    # ingest: mid-write (rows on disk, file unfinished), and just before the rename
    for point in ("ingest:row", "write:corpus.parquet"):
        killed(rnn(ws, "ingest", kill_at=point))
        assert not (data / "corpus.parquet").exists()
    ok(rnn(ws, "ingest"))
    good_corpus = (data / "corpus.parquet").read_bytes()
    killed(rnn(ws, "ingest", kill_at="write:corpus.parquet"))  # a rewrite: the old file stays
    assert (data / "corpus.parquet").read_bytes() == good_corpus

    # vocab and partition: the directory is replaced as a whole or not at all
    killed(rnn(ws, "vocab", kill_at="write:vocab"))
    assert not (data / "vocab").exists()
    ok(rnn(ws, "vocab"))
    killed(rnn(ws, "vocab", kill_at="swap:vocab"))  # between moving the old one aside and in
    assert not (data / "vocab").exists() and (data / ".vocab.old").is_dir()
    ok(rnn(ws, "vocab"))  # the old copy is put back, then replaced
    assert not (data / ".vocab.old").exists()
    killed(rnn(ws, "partition", kill_at="write:partition"))
    assert not (data / "partition").exists()
    ok(rnn(ws, "partition"))

    for backend, variant in TRAINS.items():
        run = f"{backend}-{variant}-rnn"
        model = data / "models" / run
        # mid-training: the epoch computed but not recorded; epochs 1-2 are checkpointed
        killed(rnn(ws, *train_args(backend), kill_at="train:epoch@3"))
        assert not model.exists() and checkpoint_epochs(ws, run) == 2
        # while writing the checkpoint of epoch 3 (before its rename): epoch 2's stays
        killed(rnn(ws, *train_args(backend), kill_at="write:checkpoint-000003.safetensors"))
        assert checkpoint_epochs(ws, run) == 2
        # between the checkpoint's weights and its checksum: weights that cannot be verified
        # are never loaded, so the next run resumes from epoch 2 and says so
        killed(rnn(ws, *train_args(backend), kill_at="write:checkpoint-000003.json"))
        assert checkpoint_epochs(ws, run) == 2  # the checksum is missing; the weights are at 3
        # writing the final weights and record
        killed(rnn(ws, *train_args(backend), kill_at=f"write:{run}"))
        assert not model.exists()
        resumed = summary(rnn(ws, *train_args(backend)))
        assert resumed["resumed_from_epoch"] == 3 and resumed["epochs"] == EPOCHS
        ckpt = data / "checkpoints" / run / "checkpoint-000003.safetensors"
        assert stat.S_IMODE(ckpt.stat().st_mode) == stat.S_IMODE(
            (model / "model.safetensors").stat().st_mode
        )
        killed(rnn(ws, *evaluate_args(backend), kill_at="write:eval.json"))
        assert not (data / "eval" / run / "eval.json").exists()
        ok(rnn(ws, *evaluate_args(backend)))

    killed(rnn(ws, "report", kill_at="write:reports"))
    assert not (ws / "reports").exists()
    ok(rnn(ws, "report"))
    assert (ws / "reports" / "report.md").is_file()
    assert outputs(ws) == uninterrupted
    no_temporaries(ws)


def test_dvc_repro_killed_mid_training_reruns_only_what_was_incomplete_and_holds_the_workspace(
    tmp_path, tiny_repro_hashes
):
    """`dvc repro` killed in its first training; then `rnn repro` (dvc repro holding the
    workspace) reruns only the trainings on, while a second `rnn repro` and a stage command in
    the same workspace fail at once, naming it."""
    from tests.integration.test_bad_input import one_clear_line
    from tests.support.machines import model_hashes

    torch_only = tiny_params()  # the subject is DVC's and the lock's: one framework's runs
    torch_only["train"]["backends"] = ["torch"]
    ws = copy_project(tmp_path / "checkout", torch_only)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, KILL_ENV: "train:epoch@2"}
    first = subprocess.run(
        [*dvc_command(), "repro"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert first.returncode != 0 and "train@" in first.stderr, first.stdout + first.stderr
    assert (ws / "data" / "partition" / "train.npy").is_file()  # the data stages finished
    env.pop(KILL_ENV)
    rnn_repro = [sys.executable, "-m", "rnn.cli", "repro"]
    again = subprocess.Popen(
        rnn_repro, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lock = ws / ".rnn-workspace.lock"
        deadline = time.monotonic() + 60
        while "rnn repro" not in (lock.read_text() if lock.is_file() else ""):
            assert again.poll() is None and time.monotonic() < deadline, again.communicate()
            time.sleep(0.2)
        started = time.monotonic()
        second = subprocess.run(rnn_repro, cwd=ws, env=env, capture_output=True, text=True)
        one_clear_line(second, "is in use by `rnn repro`")
        one_clear_line(rnn(ws, "vocab"), "is in use by `rnn repro`")
        assert time.monotonic() - started < 30  # at once, not after the first run
        out, err = again.communicate(timeout=600)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 0, err[-2000:]
    for stage in ("ingest", "vocab", "partition"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    hashes = model_hashes(ws)
    assert "data/models/torch-concise-rnn" in hashes
    assert hashes == {k: v for k, v in tiny_repro_hashes.items() if "/tf-" not in k}
