"""A run's identity: what decides its maths (parameters, data, library versions) and the
fingerprint over them, which keys checkpoints here and on the shared remote (a resume only
continues the same maths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnn.backends.engine import backend_module
from rnn.config import Params
from rnn.data.tokens import VOCAB_FILE
from rnn.registry import RunKey
from rnn.store.record import file_sha256, fingerprint, library_versions

# The ingest keys that decide the corpus's content (the rest: download and checksum settings).
DATA_INGEST_KEYS = ("source", "normalization", "strip_gutenberg", "encoding")


@dataclass(frozen=True)
class RunIdentity:
    """What decides a run's maths: its fingerprint keys checkpoints (a resume only continues
    the same maths) and the shared checkpoint store."""

    trained_with: dict
    data_hashes: dict
    versions: dict
    fingerprint: str


def run_identity(
    run: RunKey, params: Params, partition_dir: str | Path, vocab_dir: str | Path
) -> RunIdentity:
    tcfg = params.train
    trained_with = {
        "partition": params.partition.model_dump(),
        # threads changes only the speed (rnn/backends/engine.py resolve_threads); data parallelism runs
        # the same maths, rounded in another order (rnn/backends/world.py): neither is recorded here
        "train": tcfg.model_dump(
            exclude={
                "backends",
                "variants",
                "models",
                "threads",
                "data_parallel",
                "data_parallel_over",
            }
        ),
        "model": params.model(run.model).model_dump(),
    }
    data_hashes = {
        "vocab_sha256": file_sha256(Path(vocab_dir) / VOCAB_FILE),
        "train_sha256": file_sha256(Path(partition_dir) / "train.npy"),
        "valid_sha256": file_sha256(Path(partition_dir) / "valid.npy"),
    }
    versions = library_versions(run.backend, engine_version(run.backend))
    run_fp = fingerprint({"run": run.name, **trained_with, **data_hashes, "versions": versions})
    return RunIdentity(trained_with, data_hashes, versions, run_fp)


def engine_version(backend: str) -> str:
    return backend_module(backend).framework_version()
