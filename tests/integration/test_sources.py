"""The corpus as a DVC-tracked input (rnn/data/sources.py): `rnn corpus add` versions it under
data/raw/, `dvc repro` and the flow rerun ingest and training when it changes, and a checkout
without it gets the very same bytes back from the DVC remote, a verified copy or its URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rnn.data.sources import md5_of, set_ingest_keys
from rnn.errors import PipelineError
from tests.e2e.test_flows import run_flow, sh
from tests.support.httpserver import serve
from tests.support.workspace import ROOT, TIME_MACHINE, copy_project, tiny_params

BIN = Path(sys.executable).parent


def rnn(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args], cwd=ws, capture_output=True, text=True, env=env
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def corpus_text(ws: Path) -> str:
    return "".join(pq.read_table(ws / "data/corpus.parquet").column(0).to_pylist())


def project(tmp_path: Path, remote: Path) -> Path:
    """The project with one PyTorch run, and a DVC remote every clone of it shares."""
    params = tiny_params()
    params["train"].update(backends=["torch"], variants=["scratch"])
    repo = copy_project(tmp_path / "repo", params)
    sh("dvc", "remote", "add", "-f", "-d", "store", str(remote), cwd=repo)
    return repo


def commit(repo: Path, message: str) -> None:
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=repo)


def flow_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_an_edited_corpus_reruns_ingest_and_training_in_dvc_repro_and_the_flow(harness, tmp_path):
    repo = project(tmp_path, tmp_path / "remote")
    mine = tmp_path / "mine.txt"
    mine.write_text(TIME_MACHINE.read_text()[:20_000])
    added = ok(rnn(repo, "corpus", "add", str(mine)))
    assert '"tracked": true' in added and '"pushed": true' in added
    assert yaml.safe_load((repo / "params.yaml").read_text())["ingest"]["source"] == (
        "data/raw/mine.txt"
    )
    tracked = repo / "data/raw/mine.txt.dvc"
    assert yaml.safe_load(tracked.read_text())["outs"][0]["md5"] == md5_of(mine)
    commit(repo, "my corpus")
    assert {"ingest", "train@torch-scratch-rnn"} <= ran(sh("dvc", "repro", cwd=repo).stdout)

    with (repo / "data/raw/mine.txt").open("a") as handle:
        handle.write("\nthe xyzzy line\n")
    assert {"ingest", "vocab", "partition", "train@torch-scratch-rnn"} <= ran(
        sh("dvc", "repro", cwd=repo).stdout
    )
    assert "xyzzy" in corpus_text(repo)
    assert yaml.safe_load(tracked.read_text())["outs"][0]["md5"] == md5_of(
        repo / "data/raw/mine.txt"
    )
    trained_on = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][
        "train@torch-scratch-rnn"
    ]

    with (repo / "data/raw/mine.txt").open("a") as handle:
        handle.write("\nthe plugh line\n")
    assert flow_state(run_flow(repo, harness)) == "COMPLETED"
    assert "plugh" in corpus_text(repo)  # the flow ingested the new text...
    assert sh("dvc", "status", "--json", cwd=repo).stdout.strip() in ("{}", "")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train@torch-scratch-rnn"]
    assert lock["deps"] != trained_on["deps"]  # ...and trained on it
    assert lock["outs"] != trained_on["outs"]


@pytest.mark.slow
def test_a_fresh_clone_gets_the_same_bytes_from_the_remote_or_a_verified_copy(tmp_path):
    repo = project(tmp_path, tmp_path / "remote")
    ok(rnn(repo, "corpus", "add", str(TIME_MACHINE), "--name", "book.txt"))
    commit(repo, "book")
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data/raw/book.txt").exists()
    missing = rnn(clone, "ingest")
    assert missing.returncode == 2 and "tracked by DVC but not in this checkout" in missing.stderr
    ok(rnn(clone, "fetch"))  # from the DVC remote
    assert md5_of(clone / "data/raw/book.txt") == md5_of(TIME_MACHINE)

    # no remote to pull from: only a copy with the tracked hash is taken
    sh("dvc", "remote", "modify", "store", "url", str(tmp_path / "empty"), cwd=clone)
    sh("rm", "-rf", ".dvc/cache", "data/raw/book.txt", cwd=clone)
    other = tmp_path / "other.txt"
    other.write_text("not the book")
    wrong = rnn(clone, "fetch", "--from-file", str(other))
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "is not the text data/raw/book.txt.dvc tracks" in wrong.stderr
    assert not (clone / "data/raw/book.txt").exists()
    ok(rnn(clone, "fetch", "--from-file", str(TIME_MACHINE)))
    assert "Running stage 'ingest'" in sh("dvc", "repro", "ingest", cwd=clone).stdout


@pytest.mark.slow
def test_a_url_corpus_keeps_its_pin_and_is_downloaded_again_when_missing(tmp_path):
    repo = project(tmp_path, tmp_path / "remote")
    book = TIME_MACHINE.read_bytes()
    sha1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
    with serve({"/timemachine.txt": book}) as (url, hits):
        unpinned = rnn(repo, "corpus", "add", f"{url}/timemachine.txt")
        assert unpinned.returncode == 2 and "has no pinned checksum" in unpinned.stderr
        ok(rnn(repo, "corpus", "add", f"{url}/timemachine.txt", "--sha1", sha1))
        params = yaml.safe_load((repo / "params.yaml").read_text())["ingest"]
        assert params["source"] == "data/raw/timemachine.txt" and params["sha1"] == sha1
        meta = yaml.safe_load((repo / "data/raw/timemachine.txt.dvc").read_text())["meta"]
        assert meta == {"source": f"{url}/timemachine.txt", "sha1": sha1}
        sh("dvc", "remote", "modify", "store", "url", str(tmp_path / "empty"), cwd=repo)
        sh("rm", "-rf", ".dvc/cache", "data/cache", "data/raw/timemachine.txt", cwd=repo)
        ok(rnn(repo, "fetch"))  # neither here nor in the remote: from the URL, verified
        assert hits["/timemachine.txt"] == 2
    assert (repo / "data/raw/timemachine.txt").read_bytes() == book


def test_a_special_file_cannot_be_added(tmp_path):
    repo = copy_project(tmp_path / "repo", git=False)
    os.mkfifo(tmp_path / "pipe")
    result = rnn(repo, "corpus", "add", str(tmp_path / "pipe"))
    assert result.returncode == 2 and "is a named pipe (FIFO)" in result.stderr
    assert not (repo / "data/raw/pipe").exists()


def test_setting_ingest_keys_keeps_comments_and_refuses_what_does_not_validate(tmp_path):
    params = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    params.write_text(text)
    set_ingest_keys(params, {"source": "data/raw/mine.txt", "sha1": None})
    edited = params.read_text()
    assert edited.count("#") == text.count("#")  # every comment kept
    assert yaml.safe_load(edited)["ingest"]["source"] == "data/raw/mine.txt"
    assert yaml.safe_load(edited)["ingest"]["sha1"] is None
    with pytest.raises(PipelineError):
        set_ingest_keys(params, {"source": "http://example.org/x.txt", "sha1": None})
    assert params.read_text() == edited
