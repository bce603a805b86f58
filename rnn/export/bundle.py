"""A trained run as a directory that runs anywhere onnxruntime does: its ONNX bundle.

Training writes the bundle into the run's model directory (``data/models/<run>/onnx/``), so it is
versioned with the weights (dvc.lock, the registry's artifact, ``dvc artifacts get``); ``rnn
export`` writes one elsewhere. A bundle holds ``model.onnx`` (one step of the model:
``rnn/export/graph.py``), ``vocab.json`` (the vocabulary it was trained with) and ``export.json``,
which says what the model is (cell, sizes, vocabulary), which run it came from (the weights' and
vocabulary's checksums, its perplexities) and the sha256 of the two other files, so a loader
verifies every byte it uses (``rnn/serving/runtime.py``). ``run.json`` records the sha256 of
``export.json`` in turn (``EXPORT_SHA_KEY``), so the chain from the record to every byte served
is checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from rnn.errors import PipelineError
from rnn.export.graph import LOGITS, OPSET, TOKEN, state_names, step_graph
from rnn.store.atomic import atomic_dir
from rnn.store.record import WEIGHTS_FILE, read_record, verified_weights, weights_from_bytes

FORMAT = "rnn-onnx/1"
MODEL_FILE, VOCAB_COPY, MANIFEST = "model.onnx", "vocab.json", "export.json"
BUNDLE_DIR = "onnx"  # inside a model directory
EXPORT_SHA_KEY = "export_sha256"  # run.json's checksum of the bundle's export.json


@dataclass(frozen=True)
class ExportSummary:
    run: str
    path: str
    cell: str
    num_layers: int
    num_hiddens: int
    vocab_size: int
    onnx_sha256: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_of(model_dir: Path) -> Path:
    """Where a model directory keeps its ONNX bundle."""
    return Path(model_dir) / BUNDLE_DIR


def write_bundle(
    out_dir: Path, run: str, record: dict, weights_bytes: bytes, vocab_bytes: bytes
) -> ExportSummary:
    """Write the bundle of the run whose record is ``record`` (weights already verified) into
    ``out_dir`` (an empty or new directory: its caller writes it whole)."""
    if record.get("vocab_sha256") not in (None, sha256(vocab_bytes)):
        raise PipelineError(
            f"{run} was trained with another vocabulary than the one given",
            "export from the workspace the model was trained in",
        )
    args = record["model_args"]
    cell, layers, vocab_size = (
        args.get("cell", "rnn"),
        args.get("num_layers", 1),
        args["vocab_size"],
    )
    weights = weights_from_bytes(weights_bytes)
    model_bytes = step_graph(weights, cell, layers, vocab_size, run).SerializeToString()
    manifest = {
        "format": FORMAT,
        "run": run,
        "backend": record.get("backend"),
        "variant": record.get("variant"),
        "model": record.get("model"),
        "cell": cell,
        "num_layers": layers,
        "num_hiddens": args["num_hiddens"],
        "vocab_size": vocab_size,
        "token_type": record.get("token_type", "char"),
        "opset": OPSET,
        "inputs": [TOKEN, *state_names(cell)],
        "outputs": [LOGITS, *(f"{s}_next" for s in state_names(cell))],
        "perplexity": {
            split: record.get(f"{split}_perplexity")
            for split in ("train", "valid")
            if record.get(f"{split}_perplexity") is not None
        },
        "source": {
            "weights_sha256": sha256(weights_bytes),
            "vocab_sha256": sha256(vocab_bytes),
            "epoch": record.get("weights_epoch"),
        },
        "files": {MODEL_FILE: sha256(model_bytes), VOCAB_COPY: sha256(vocab_bytes)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(model_bytes)
    (out_dir / VOCAB_COPY).write_bytes(vocab_bytes)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ExportSummary(
        run, str(out_dir), cell, layers, args["num_hiddens"], vocab_size, sha256(model_bytes)
    )


def export_run(run: str, model_dir: Path, vocab_file: Path, out_dir: Path) -> ExportSummary:
    """Export the trained run in ``model_dir`` (its weights verified against its record first)
    to ``out_dir``, replaced whole."""
    record = read_record(model_dir)
    if not vocab_file.is_file():
        raise PipelineError(f"vocabulary {vocab_file} not found", "run `rnn vocab` first")
    weights = verified_weights(record, Path(model_dir) / WEIGHTS_FILE)
    with atomic_dir(out_dir) as tmp:
        summary = write_bundle(tmp, run, record, weights, vocab_file.read_bytes())
    return replace(summary, path=str(out_dir))


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: where it is, its export.json and that file's sha256."""

    path: Path
    manifest: dict
    sha256: str


def verified_bundle(model_dir: Path) -> Bundle:
    """The model directory's bundle, once its export.json matched run.json's checksum and its
    weights' checksum matched the record's (the loader checks the other files against it)."""
    record, bundle = read_record(model_dir), bundle_of(model_dir)
    manifest = bundle / MANIFEST
    if not manifest.is_file() or not record.get(EXPORT_SHA_KEY):
        raise PipelineError(
            f"{model_dir} has no ONNX export (trained by a version before exports)",
            "retrain it (`dvc repro`), or write one with `rnn export`",
        )
    data = manifest.read_bytes()
    parsed, checksum = json.loads(data), sha256(data)
    weights = parsed.get("source", {}).get("weights_sha256")
    if checksum != record[EXPORT_SHA_KEY] or weights != record.get("weights_sha256"):
        raise PipelineError(
            f"{manifest} does not match {model_dir}'s record (damaged or from another run)",
            "restore the model (`dvc checkout`, or `dvc pull`) or retrain it (`dvc repro`)",
        )
    return Bundle(bundle, parsed, checksum)
