"""`rnn export`: a trained run as a directory that runs anywhere onnxruntime does.

``data/export/<run>/`` holds ``model.onnx`` (one step of the model: ``rnn/export/graph.py``),
``vocab.json`` (the vocabulary it was trained with) and ``export.json``, which says what the model
is (cell, sizes, vocabulary), which run it came from (the weights' and vocabulary's checksums, its
perplexities) and the sha256 of the two other files, so a loader verifies every byte it uses
(``rnn/serving/runtime.py``). Written whole or not at all (``atomic_dir``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rnn.errors import PipelineError
from rnn.export.graph import LOGITS, OPSET, TOKEN, state_names, step_graph
from rnn.store.atomic import atomic_dir
from rnn.store.record import WEIGHTS_FILE, read_record, verified_weights, weights_from_bytes

FORMAT = "rnn-onnx/1"
MODEL_FILE, VOCAB_COPY, MANIFEST = "model.onnx", "vocab.json", "export.json"


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


def export_run(run: str, model_dir: Path, vocab_file: Path, out_dir: Path) -> ExportSummary:
    """Export the trained run in ``model_dir`` (its weights and vocabulary verified against its
    record first) to ``out_dir``."""
    record = read_record(model_dir)
    vocab_bytes = vocab_file.read_bytes() if vocab_file.is_file() else None
    if vocab_bytes is None:
        raise PipelineError(f"vocabulary {vocab_file} not found", "run `rnn vocab` first")
    if record.get("vocab_sha256") not in (None, sha256(vocab_bytes)):
        raise PipelineError(
            f"{model_dir} was trained with another vocabulary than {vocab_file}",
            "export from the workspace the model was trained in",
        )
    weights = weights_from_bytes(verified_weights(record, Path(model_dir) / WEIGHTS_FILE))
    args = record["model_args"]
    cell, layers, vocab_size = (
        args.get("cell", "rnn"),
        args.get("num_layers", 1),
        args["vocab_size"],
    )
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
            "weights_sha256": record.get("weights_sha256"),
            "vocab_sha256": sha256(vocab_bytes),
            "epoch": record.get("weights_epoch"),
        },
        "files": {MODEL_FILE: sha256(model_bytes), VOCAB_COPY: sha256(vocab_bytes)},
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / MODEL_FILE).write_bytes(model_bytes)
        (tmp / VOCAB_COPY).write_bytes(vocab_bytes)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return ExportSummary(
        run, str(out_dir), cell, layers, args["num_hiddens"], vocab_size, sha256(model_bytes)
    )


def is_current(model_dir: Path, out_dir: Path) -> bool:
    """``out_dir`` holds an export of the weights ``model_dir`` holds now."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        exported = manifest["source"]["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return exported is not None and exported == read_record(model_dir).get("weights_sha256")
