"""Checkpoints that cannot lie: a newest checkpoint damaged in every way we know (a flipped bit in
the tensor data or in the header, a truncated file, a wrong or unreadable checksum file, a
missing one, a damaged copy on the remote) is never loaded, is reported in one warning line
naming the file, and training resumes from the generation before it, ending with weights
byte-identical to an uninterrupted run. Model weights are loaded only once their checksum
matched run.json. The remote keeps two generations per run and forgets finished ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rnn.errors import PipelineError
from rnn.evaluation.evaluate import load_trained
from rnn.registry import RunKey
from rnn.store.record import file_sha256
from rnn.training.checkpoints import sidecar_name, weights_name
from rnn.training.identity import run_identity
from tests.integration.test_train_pipeline import run, tiny_params

NAME = "torch-scratch-rnn"
PARAMS = tiny_params(checkpoint_every=1)  # 4 epochs: a generation after every epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rnn.config import VocabConfig
    from rnn.data.corpus import ingest
    from rnn.data.partition import partition
    from rnn.data.vocab import build_vocab

    d = tmp_path_factory.mktemp("data")
    ingest(PARAMS.ingest, d / "corpus.parquet")
    build_vocab(d / "corpus.parquet", VocabConfig(), d / "vocab")
    partition(d / "vocab", PARAMS.partition, d / "partition")
    return d


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> str:
    ws = tmp_path_factory.mktemp("uninterrupted")
    run(data, ws, "torch", "scratch", PARAMS)
    return file_sha256(ws / "models" / NAME / "model.safetensors")


def stopped_at_3(data, ws: Path, **kw) -> Path:
    """A training stopped after epoch 3; its checkpoint directory (generations 2 and 3)."""
    assert run(data, ws, "torch", "scratch", PARAMS, epoch_budget=3, **kw).epochs == 3
    ckpt = ws / "ckpt" / NAME
    assert sorted(p.name for p in ckpt.iterdir()) == [
        sidecar_name(2),
        weights_name(2),
        sidecar_name(3),
        weights_name(3),
    ]
    return ckpt


def flip(path: Path, offset: int, bit: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def tensor_bit(ckpt: Path) -> str:
    flip(ckpt / weights_name(3), -7)  # inside the last tensor: the file still parses
    return weights_name(3)


def header_bit(ckpt: Path) -> str:
    flip(ckpt / weights_name(3), 40, 0x01)  # inside the JSON header
    return weights_name(3)


def truncated(ckpt: Path) -> str:
    path = ckpt / weights_name(3)
    path.write_bytes(path.read_bytes()[:-100])
    return weights_name(3)


def wrong_checksum(ckpt: Path) -> str:
    path = ckpt / sidecar_name(3)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "sha256": "0" * 64}))
    return weights_name(3)


def unreadable_checksum(ckpt: Path) -> str:
    (ckpt / sidecar_name(3)).write_text('{"fingerprint": ')
    return sidecar_name(3)


def missing_checksum(ckpt: Path) -> str:
    (ckpt / sidecar_name(3)).unlink()  # as a crash between the weights and their checksum
    return weights_name(3)


def warnings_from(caplog) -> list[str]:
    """The pipeline's own warning lines (libraries may log theirs)."""
    ours = ("rnn", "stores")
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(ours)
    ]


@pytest.mark.parametrize(
    "damage",
    [tensor_bit, header_bit, truncated, wrong_checksum, unreadable_checksum, missing_checksum],
)
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(
    data, tmp_path, uninterrupted, caplog, damage
):
    ckpt = stopped_at_3(data, tmp_path)
    named = damage(ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = run(data, tmp_path, "torch", "scratch", PARAMS)
    (line,) = warnings_from(caplog)
    assert named in line and line.endswith("; resuming from epoch 2"), line
    assert resumed.resumed_from_epoch == 2 and resumed.epochs == 4
    assert file_sha256(tmp_path / "models" / NAME / "model.safetensors") == uninterrupted
    # the damaged generation was rewritten; only the newest two are kept
    assert sorted(p.name for p in ckpt.iterdir()) == [
        sidecar_name(2),
        weights_name(2),
        sidecar_name(3),
        weights_name(3),
    ]


def test_every_generation_damaged_trains_from_the_start_saying_so(
    data, tmp_path, uninterrupted, caplog
):
    ckpt = stopped_at_3(data, tmp_path)
    for epoch in (2, 3):
        flip(ckpt / weights_name(epoch), -7)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = run(data, tmp_path, "torch", "scratch", PARAMS)
    lines = warnings_from(caplog)
    assert len(lines) == 2 and all(ln.endswith("; training from the start") for ln in lines)
    assert resumed.resumed_from_epoch == 0
    assert file_sha256(tmp_path / "models" / NAME / "model.safetensors") == uninterrupted


def test_damaged_model_weights_are_never_loaded(data, tmp_path):
    run(data, tmp_path, "torch", "scratch", tiny_params(epochs=1))
    model_dir = tmp_path / "models" / NAME
    load_trained("torch", "scratch", PARAMS, model_dir, data / "vocab")  # intact: loads
    flip(model_dir / "model.safetensors", -7)
    with pytest.raises(PipelineError, match=r"do not match the checksum in run\.json") as err:
        load_trained("torch", "scratch", PARAMS, model_dir, data / "vocab")
    assert "model.safetensors" in err.value.one_line() and "dvc pull" in err.value.fix
    record = json.loads((model_dir / "run.json").read_text())
    del record["weights_sha256"]
    (model_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="records no checksum"):
        load_trained("torch", "scratch", PARAMS, model_dir, data / "vocab")


# --- the shared remote ---------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path):
    """A DVC workspace whose default remote is a local folder; its RemoteCheckpoints."""
    from dvc.repo import Repo

    from stores.checkpoints import RemoteCheckpoints

    root, store = tmp_path / "dvc", tmp_path / "store"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    (root / ".dvc" / "config").write_text(
        f"[core]\n    no_scm = True\n    remote = store\n['remote \"store\"']\n    url = {store}\n"
    )
    return RemoteCheckpoints(root), store / "checkpoints"


def key(data) -> str:
    return run_identity(
        RunKey("torch", "scratch", "rnn"), PARAMS, data / "partition", data / "vocab"
    ).fingerprint


def pushed(folder: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["epoch"] for p in folder.glob("*.json"))


def test_a_damaged_remote_copy_resumes_from_the_one_before_it(
    data, tmp_path, uninterrupted, remote, caplog
):
    sync, store = remote
    stopped_at_3(data, tmp_path / "a", checkpoint_sync=sync)
    folder = store / key(data)
    assert pushed(folder) == [2, 3] and len(list(folder.glob("*.safetensors"))) == 2
    newest = json.loads((folder / sidecar_name(3)).read_text())["sha256"]
    flip(folder / f"{newest}.safetensors", -7)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # another workspace, with no checkpoint of its own
        resumed = run(data, tmp_path / "b", "torch", "scratch", PARAMS, checkpoint_sync=sync)
    (line,) = warnings_from(caplog)
    assert f"{newest}.safetensors" in line and "is damaged" in line, line
    assert resumed.resumed_from_epoch == 2
    assert file_sha256(tmp_path / "b" / "models" / NAME / "model.safetensors") == uninterrupted


def test_a_damaged_local_copy_is_replaced_by_the_remotes(
    data, tmp_path, uninterrupted, remote, caplog
):
    sync, _ = remote
    ckpt = stopped_at_3(data, tmp_path, checkpoint_sync=sync)
    truncated(ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = run(data, tmp_path, "torch", "scratch", PARAMS, checkpoint_sync=sync)
    (line,) = warnings_from(caplog)
    assert weights_name(3) in line and "remote's good copy replaces it" in line, line
    assert resumed.resumed_from_epoch == 3
    assert file_sha256(tmp_path / "models" / NAME / "model.safetensors") == uninterrupted


def test_the_remote_keeps_what_resuming_needs_and_collects_the_rest(data, tmp_path, remote):
    from stores.checkpoints import main

    sync, store = remote
    stopped_at_3(data, tmp_path, checkpoint_sync=sync)
    folder = store / key(data)
    assert sync.gc(older_than_s=3600) == [] and pushed(folder) == [2, 3]
    assert sync.gc(older_than_s=0, dry_run=True) == [key(data)] and folder.is_dir()
    sync.collect(key(data))  # what the flows do once the run's model is pushed
    assert not folder.exists()
    stopped_at_3(data, tmp_path / "again", checkpoint_sync=sync)
    assert main(["gc", "--workdir", str(tmp_path / "dvc"), "--older-than-days", "0"]) == 0
    assert not folder.exists()
