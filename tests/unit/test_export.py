"""`rnn export`: every cell x variant x backend as ONNX, run by onnxruntime, gives the framework's
logits (within 1e-5), its greedy text and its sampled text for the same seed; a damaged export is
refused; the onnxruntime generator imports neither PyTorch nor TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnn.data.tokens import Vocab
from rnn.errors import PipelineError
from rnn.export.bundle import MODEL_FILE, export_run
from rnn.registry import BACKENDS, CELLS, VARIANTS
from rnn.store.record import file_sha256
from tests.support.models_util import V, engine, random_weights

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 2
PREFIX = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]


def trained_run(tmp: Path, backend: str, variant: str, cell: str) -> tuple[object, Path, Path]:
    """An engine with large random weights, saved as a run of the pipeline would be (weights,
    run.json with their checksum, the vocabulary)."""
    e = engine(backend, variant, cell=cell, num_layers=LAYERS)
    gru_after = cell == "gru" and variant == "concise"
    e.load_canonical_weights(random_weights(7, cell=cell, num_layers=LAYERS,
                                            recurrent_bias=gru_after))  # fmt: skip
    model_dir, vocab_file = tmp / "model", tmp / "vocab.json"
    model_dir.mkdir()
    e.save(model_dir / "model.safetensors")
    tokens = [chr(ord("a") + i) for i in range(V)]
    vocab_file.write_text(json.dumps(Vocab(tuple(tokens), (1,) * V, "char").to_json()))
    record = {
        "backend": backend,
        "variant": variant,
        "model": cell,
        "token_type": "char",
        "model_args": {"cell": cell, "num_layers": LAYERS, "num_hiddens": 16, "vocab_size": V},
        "weights_sha256": file_sha256(model_dir / "model.safetensors"),
        "vocab_sha256": file_sha256(vocab_file),
        "train_perplexity": 3.5,
    }
    (model_dir / "run.json").write_text(json.dumps(record))
    return e, model_dir, vocab_file


def framework_logits(e, backend: str, ids: list[int]) -> np.ndarray:
    """The framework's logits after each token of ``ids`` (one sequence, time-major rows)."""
    if backend == "torch":
        import torch

        with torch.no_grad():
            logits, _ = e.model(torch.tensor([ids]), e.model.begin_state(1))
        return logits.numpy()
    import tensorflow as tf

    logits, _ = e.model(tf.constant([ids], tf.int32), list(e.model.begin_state(1)))
    return logits.numpy()


def onnx_logits(model, ids: list[int]) -> np.ndarray:
    state, rows = model.begin(), []
    for token in ids:
        logits, state = model.step(token, state)
        rows.append(logits)
    return np.stack(rows)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_export_matches_the_framework(tmp_path, backend, variant, cell):
    from rnn.serving.runtime import OnnxModel

    e, model_dir, vocab_file = trained_run(tmp_path, backend, variant, cell)
    summary = export_run("r", model_dir, vocab_file, tmp_path / "export")
    assert (summary.cell, summary.num_layers, summary.vocab_size) == (cell, LAYERS, V)
    model = OnnxModel(tmp_path / "export")
    expected = framework_logits(e, backend, PREFIX)
    assert np.abs(expected).max() > 0.5  # large enough weights that a wrong gate would show
    np.testing.assert_allclose(onnx_logits(model, PREFIX), expected, rtol=0, atol=1e-5)
    assert model.manifest["perplexity"] == {"train": 3.5}
    for temperature, top_k in ((0.0, 0), (1.0, 0), (0.8, 5)):
        framework = e.generate(PREFIX, 60, temperature, top_k, seed=11)
        exported = [*PREFIX, *model.stream(PREFIX, 60, temperature, top_k, seed=11)]
        assert exported == framework, (temperature, top_k)


def test_a_damaged_export_is_refused_and_a_bad_model_is_not_exported(tmp_path):
    from rnn.serving.runtime import OnnxModel

    _, model_dir, vocab_file = trained_run(tmp_path, "torch", "scratch", "rnn")
    out = tmp_path / "export"
    first = export_run("r", model_dir, vocab_file, out)
    data = bytearray((out / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (out / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(PipelineError, match="does not match the checksum"):
        OnnxModel(out)
    # damaged weights: refused, and the earlier export is left as it was
    export_run("r", model_dir, vocab_file, out)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(PipelineError, match=r"do not match the checksum in run\.json"):
        export_run("r", model_dir, vocab_file, out)
    assert OnnxModel(out).manifest["files"][MODEL_FILE] == first.onnx_sha256


def test_the_generator_imports_neither_framework(tmp_path):
    _, model_dir, vocab_file = trained_run(tmp_path, "tf", "concise", "lstm")
    export_run("r", model_dir, vocab_file, tmp_path / "export")
    script = (
        "import sys\n"
        "from rnn.serving.runtime import OnnxModel\n"
        f"m = OnnxModel({str(tmp_path / 'export')!r})\n"
        "text = ''.join(m.stream_text('abc', 40, temperature=0.9, seed=2))\n"
        "assert len(text) == 43, text\n"
        "print(sorted(k for k in ('torch', 'tensorflow', 'keras') if k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_concurrent_streams_step_in_batches_and_write_what_each_writes_alone(tmp_path, cell):
    """Eight streams at once (threads, as the server runs them) step through one batched call
    (rnn/serving/batching.py) and each writes the text it writes alone, greedy and sampled."""
    import threading

    from rnn.serving.runtime import OnnxModel

    _, model_dir, vocab_file = trained_run(tmp_path, "torch", "scratch", cell)
    export_run("r", model_dir, vocab_file, tmp_path / "export")
    model = OnnxModel(tmp_path / "export")
    settings = [(0.0, 0, 0), *((1.0, k, seed) for k, seed in ((0, 1), (5, 2), (3, 3)))] * 2
    alone = [list(model.stream(PREFIX[: 5 + i], 300, *s)) for i, s in enumerate(settings)]
    calls: list[int] = []
    step_many = model.step_many

    def counted(tokens, states):
        calls.append(len(tokens))
        return step_many(tokens, states)

    model._batches.step_many = counted
    together: list[list[int] | None] = [None] * len(settings)
    start = threading.Barrier(len(settings))

    def one(i: int) -> None:
        start.wait()
        together[i] = list(model.stream(PREFIX[: 5 + i], 300, *settings[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone
    assert max(calls) > 1  # they did share calls
    logits, _ = model.step(PREFIX[0], model.begin())
    rows = model.step_many([PREFIX[0], PREFIX[1]], [model.begin(), model.begin()])
    np.testing.assert_allclose(rows[0][0], logits, rtol=0, atol=1e-6)
