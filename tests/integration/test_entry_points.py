"""Every way the command can fail, through both of its entry points: the installed ``rnn``
script and ``python -m rnn.cli`` (what dvc.yaml runs) are one ``main``, so each failure a user can
cause or meet is one stderr line with a documented exit status (rnn/exits.py), never a traceback.
"""

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

from tests.support.workspace import ROOT, copy_project, tiny_params

SCRIPT = str(Path(sys.executable).parent / "rnn")
ENTRY_POINTS = {"script": [SCRIPT], "module": [sys.executable, "-m", "rnn.cli"]}
RUN = ["--backend", "torch", "--variant", "scratch", "--model", "rnn"]


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry(request) -> list[str]:
    if request.param == "script" and not Path(SCRIPT).is_file():
        pytest.fail(f"the rnn script is not installed beside {sys.executable}: run ./setup.sh")
    return ENTRY_POINTS[request.param]


def rnn(entry: list[str], ws: Path, *args: str, env: dict | None = None, **kwargs):
    return subprocess.run(
        [*entry, *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        **kwargs,
    )


def workspace(ws: Path, **changes) -> Path:
    params = tiny_params()
    for section, values in changes.items():
        params[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def prepared(entry: list[str], ws: Path, **changes) -> Path:
    workspace(ws, **changes)
    for stage in ("ingest", "vocab", "partition"):
        result = rnn(entry, ws, stage)
        assert result.returncode == 0, result.stderr
    return ws


def only_line(result: subprocess.CompletedProcess, status: int, says: str) -> str:
    """Exactly one line on stderr, the given status, no traceback."""
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "; fix: " in result.stderr
    assert says in result.stderr, result.stderr
    return result.stderr.strip()


def last_line(result: subprocess.CompletedProcess, status: int, says: str) -> str:
    """Training logs progress on stderr; the error is its one last line."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], result.stderr
    assert "Traceback" not in result.stderr and says in lines[-1], result.stderr
    return lines[-1]


def test_a_usage_error_names_the_rnn_commands_help(entry, tmp_path):
    line = only_line(rnn(entry, tmp_path, "train", "--backend", "torch"), 2, "--variant")
    assert line.endswith("fix: see `rnn train --help`")


def test_bad_parameters(entry, tmp_path):
    workspace(tmp_path, train={"lr": 0})
    only_line(rnn(entry, tmp_path, "ingest"), 2, "train.lr: Input should be greater than 0")


def test_a_special_file_as_the_source_is_named_as_one(entry, tmp_path):
    os.mkfifo(tmp_path / "stream")
    workspace(tmp_path, ingest={"source": "stream"})
    only_line(rnn(entry, tmp_path, "ingest", timeout=60), 2, "stream is a named pipe (FIFO)")
    assert not (tmp_path / "data").exists()


def test_a_full_disk(entry, tmp_path):
    workspace(tmp_path)
    limited = ["bash", "-c", 'ulimit -f 16 && exec "$@"', "rnn", *entry]  # 16 KiB
    result = rnn(limited, tmp_path, "ingest")
    only_line(result, 2, "File too large")
    assert not (tmp_path / "data/corpus.parquet").exists()


def test_a_model_too_large_is_refused_before_it_is_built(entry, tmp_path):
    prepared(entry, tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["models"]["rnn"]["num_hiddens"] = 400_000  # 1.3 TB of recurrent weights alone
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    started = time.monotonic()
    result = rnn(entry, tmp_path, "train", *RUN)
    line = last_line(result, 2, "needs about")
    assert "GiB" in line and ("available memory is" in line or "limit" in line), line
    assert "num_hiddens" in line
    assert time.monotonic() - started < 60  # refused, not attempted
    assert not (tmp_path / "data/models").exists() and not (tmp_path / "data/checkpoints").exists()


def test_an_unexpected_exception_is_one_line_and_a_traceback_file(entry, tmp_path):
    prepared(entry, tmp_path)
    result = rnn(entry, tmp_path, "train", *RUN, env={"RNN_KILL_AT": "train:epoch:raise"})
    line = last_line(result, 70, "a bug in rnn-pipeline")
    path = Path(line.split("traceback in ")[1].split(" ")[0])
    try:
        assert (
            "Traceback" in path.read_text() and "fault injected at train:epoch" in path.read_text()
        )
    finally:
        path.unlink()
    verbose = rnn(
        entry, tmp_path, "--verbose", "train", *RUN, env={"RNN_KILL_AT": "train:epoch:raise"}
    )
    assert verbose.returncode == 70 and "Traceback" in verbose.stderr


def weights_sha(ws: Path) -> str:
    return hashlib.sha256(
        (ws / "data/models/torch-scratch-rnn/model.safetensors").read_bytes()
    ).hexdigest()


def test_ctrl_c_during_training_exits_130_and_the_rerun_resumes(entry, tmp_path):
    changes = {"train": {"epochs": 6, "checkpoint_every": 1}}
    whole, ws = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), ws.mkdir()
    prepared(entry, whole, **changes), prepared(entry, ws, **changes)
    assert rnn(entry, whole, "train", *RUN).returncode == 0
    proc = subprocess.Popen(
        [*entry, "train", *RUN],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    checkpoint = ws / "data/checkpoints/torch-scratch-rnn/checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the interrupt arrived")
    last_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 130, "interrupted")
    resumed = rnn(entry, ws, "train", *RUN)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from_epoch"] >= 1
    assert weights_sha(ws) == weights_sha(whole)


def test_generation_streams_and_stops_cleanly_on_ctrl_c(entry, tmp_path):
    ws = prepared(entry, tmp_path)
    assert rnn(entry, ws, "train", *RUN).returncode == 0
    proc = subprocess.Popen(
        [*entry, "generate", *RUN, "--prefix", "time", "--num-preds", "10000000"],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    first = proc.stdout.read(200)  # ten million tokens take minutes; the first come at once
    assert first.startswith(b"time") and len(first) == 200
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err.decode())
    only_line(result, 130, "interrupted")


def test_a_remote_without_the_corpus(entry, tmp_path):
    repo = copy_project(tmp_path / "repo")
    text = tmp_path / "mine.txt"
    text.write_text("a text of my own\n" * 200)
    assert rnn(entry, repo, "corpus", "add", str(text)).returncode == 0
    subprocess.run(
        ["rm", "-rf", ".dvc/cache", ".dvc-remote", "data/raw/mine.txt"], cwd=repo, check=True
    )
    only_line(rnn(entry, repo, "fetch"), 2, "is in neither this checkout nor the DVC remote")
