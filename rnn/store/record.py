"""Self-describing run records: what a model is, what it was trained on, with which libraries."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from rnn.errors import PipelineError

RECORD_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions(framework: str, framework_version: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), framework: framework_version}
    for dist in ("numpy", "rnn-pipeline"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def fingerprint(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def weights_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """safetensors keeps header metadata in a hash map whose order changes from call to call, so
    several keys make identical weights hash differently; one key with sorted JSON does not."""
    return {"rnn": json.dumps(metadata, sort_keys=True)} if metadata else None


def write_weights(path: str | Path, weights: dict, metadata: dict[str, str] | None = None) -> None:
    """A weights file: named float arrays as safetensors (never a pickle)."""
    from safetensors.numpy import save_file

    # np.require keeps 0-d arrays 0-d (ascontiguousarray makes them 1-d)
    arrays = {k: np.require(v, requirements="C") for k, v in weights.items()}
    save_file(arrays, str(path), metadata=weights_metadata(metadata))


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata ``write_weights`` stored in the file's header ({} if there is none)."""
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        header = f.metadata() or {}
    return json.loads(header["rnn"]) if "rnn" in header else {}


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """A weights file's arrays, unverified: for inspection and tests. The pipeline loads only
    bytes whose checksum matched (``read_verified`` and ``weights_from_bytes``)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def weights_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


def read_verified(path: str | Path, sha256: str) -> bytes | None:
    """The file's bytes if their sha256 is ``sha256``, else None: read once, so the bytes used
    are the bytes checked (a file replaced between a check and a second read cannot slip in)."""
    data = Path(path).read_bytes()
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def read_record(model_dir: str | Path) -> dict:
    path = Path(model_dir) / RECORD_FILE
    if not path.is_file():
        raise PipelineError(f"model record {path} not found", "run `rnn train` for this variant")
    return json.loads(path.read_text(encoding="utf-8"))


def check_vocabulary(record: dict, model_dir: Path, vocab_file: Path) -> None:
    """The vocabulary file is the one the model was trained with (run.json's checksum)."""
    trained_with = record.get("vocab_sha256")
    if trained_with and file_sha256(vocab_file) != trained_with:
        raise PipelineError(
            f"{model_dir} was trained with another vocabulary than {vocab_file}",
            "use the workspace the model was trained in, or retrain it (`dvc repro`) with this "
            "vocabulary",
        )


def verified_weights(record: dict, weights: Path) -> bytes:
    """The weights file's bytes, once they matched run.json's checksum (never unchecked ones)."""
    restore = (
        "restore them (`dvc checkout`, or `dvc pull` from the remote) or retrain (`dvc repro`)"
    )
    expected = record.get("weights_sha256")
    if not weights.is_file():
        raise PipelineError(f"weights {weights} not found", "run `rnn train` for this variant")
    if not expected:
        raise PipelineError(
            f"{weights.parent / RECORD_FILE} records no checksum for {weights.name}, so the "
            "weights cannot be verified",
            "retrain (`rnn train`, or `dvc repro`) to write a complete record",
        )
    data = read_verified(weights, expected)
    if data is None:
        raise PipelineError(
            f"weights {weights} do not match the checksum in run.json (truncated or damaged)",
            restore,
        )
    return data
