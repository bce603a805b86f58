"""The workspace seam: every command works on --workdir, not on the process's directory, and a
workspace has one writer at a time."""

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

from rnn.errors import PipelineError
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace
from tests.support.workspace import ROOT, TIME_MACHINE

HOLDER = """
import sys, time
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace
with workspace_lock(Workspace(sys.argv[1]), "holder run"):
    print("held", flush=True)
    time.sleep(600)
"""


def rnn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def tiny(ws: Path) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    params = {
        "ingest": {"source": str(TIME_MACHINE), "sha1": None},
        "partition": {"max_tokens": 2000, "batch_size": 4, "num_steps": 10},
        "train": {"epochs": 3, "checkpoint_every": 0, "models": ["rnn"]},
        "models": {"rnn": {"num_hiddens": 8}},
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def test_every_command_works_on_its_workdir_not_the_current_directory(tmp_path):
    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    tiny(ws)
    elsewhere.mkdir()
    for stage in ("ingest", "vocab", "partition"):
        assert rnn(stage, "--workdir", str(ws), cwd=elsewhere).returncode == 0
    trained = rnn("train", "-b", "torch", "-v", "scratch", "-w", str(ws), cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["model_dir"] == str(ws / "data/models/torch-scratch-rnn")
    # Not a terminal: one plain progress line per epoch on stderr.
    lines = [x for x in trained.stderr.splitlines() if x.startswith("torch-scratch-rnn epoch ")]
    assert [x.split()[2] for x in lines] == ["1/3:", "2/3:", "3/3:"]
    assert (
        rnn("evaluate", "-b", "torch", "-v", "scratch", "-w", str(ws), cwd=elsewhere).returncode
        == 0
    )
    assert (ws / "data/eval/torch-scratch-rnn/eval.json").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_relative_source_is_relative_to_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    tiny(ws)
    (ws / "texts").mkdir()
    (ws / "texts" / "a.txt").write_text("the time machine " * 50)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["ingest"]["source"] = "texts/*.txt"
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    result = rnn("ingest", "-w", str(ws), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from rnn.data.corpus import read_provenance

    assert read_provenance(ws / "data/corpus.parquet")["files"][0]["path"] == "texts/a.txt"


def test_a_missing_workdir_is_one_clear_line(tmp_path):
    result = rnn("ingest", "--workdir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "nope" in result.stderr and "fix:" in result.stderr


def test_a_second_writer_fails_fast_naming_the_first_and_the_lock_dies_with_it(tmp_path):
    ws = tmp_path / "ws"
    tiny(ws)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        refused = rnn("ingest", "-w", str(ws), cwd=tmp_path)
        assert time.monotonic() - started < 30  # fails fast, does not wait
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert f"workspace {ws} is in use by holder run (pid {holder.pid}" in refused.stderr
        assert not (ws / "data").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # Killed with SIGKILL: the kernel released the lock, the next writer goes ahead.
    assert rnn("ingest", "-w", str(ws), cwd=tmp_path).returncode == 0


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    ws = Workspace(tmp_path)
    with workspace_lock(ws, "outer"), workspace_lock(ws, "inner"):
        assert "outer" in ws.lock_file.read_text()
    assert ws.lock_file.read_text() == ""  # released
    with workspace_lock(ws, "again"):
        pass
    with workspace_lock(ws, "one"):
        child = subprocess.run(
            [sys.executable, "-c", HOLDER.replace("time.sleep(600)", "pass"), str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert child.returncode != 0 and "is in use by one" in child.stderr


def test_a_held_workspace_raises_a_pipeline_error_in_another_process_only(tmp_path):
    with pytest.raises(PipelineError, match="in use by holder run"):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            with workspace_lock(Workspace(tmp_path), "me"):
                pass
        finally:
            holder.kill()
            holder.wait()


def test_dvc_stages_run_the_checkouts_own_code():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all(s["cmd"].startswith("python -m rnn.cli ") for s in stages.values())
