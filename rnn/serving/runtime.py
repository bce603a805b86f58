"""An exported model (``rnn export``: rnn/export/bundle.py) run by onnxruntime: NumPy and
onnxruntime only, neither PyTorch nor TensorFlow imported, so a machine that only serves needs
neither.

Every byte is checked against ``export.json`` before it is used. Generation is the engines' own
(``rnn.backends.sampling.stream``: the same warm-up, the same greedy argmax, the same sampling from
the same seeded generator), so for the same prefix and seed the text is ``rnn generate``'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rnn.backends.sampling import stream
from rnn.data.tokens import Vocab, stream_text
from rnn.errors import PipelineError
from rnn.export.bundle import FORMAT, MANIFEST, MODEL_FILE, VOCAB_COPY
from rnn.serving.batching import StepBatcher


def _verified(directory: Path, name: str, files: dict[str, str]) -> bytes:
    path = directory / name
    if not path.is_file():
        raise PipelineError(f"{path} not found", "export the model again (`rnn export`)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != files.get(name):
        raise PipelineError(
            f"{path} does not match the checksum in {MANIFEST} (truncated or damaged)",
            "export the model again (`rnn export`), or fetch it again",
        )
    return data


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path} not found", "export the model first (`rnn export`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise PipelineError(
            f"{path} is format {manifest.get('format')!r}, not {FORMAT!r}",
            "export the model again with this version (`rnn export`)",
        )
    return manifest


class OnnxModel:
    """One exported model: ``step`` runs one token through it; ``stream`` and ``stream_text``
    generate as the engines do. A session is safe to call from several threads at once, each
    generation keeping its own state."""

    def __init__(self, directory: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        directory = Path(directory)
        self.manifest = read_manifest(directory)
        files = self.manifest["files"]
        model_bytes = _verified(directory, MODEL_FILE, files)
        self.vocab = Vocab.from_json(json.loads(_verified(directory, VOCAB_COPY, files)))
        options = ort.SessionOptions()
        # one token's products are too small to share out: threads only add hand-offs
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.states = self.manifest["inputs"][1:]
        self.outputs = self.manifest["outputs"]
        self._batches = StepBatcher(self.step_many)

    @property
    def name(self) -> str:
        return self.manifest["run"]

    def begin(self, batch: int = 1) -> list[np.ndarray]:
        shape = (self.manifest["num_layers"], batch, self.manifest["num_hiddens"])
        return [np.zeros(shape, dtype=np.float32) for _ in self.states]

    def step(self, token: int, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The logits after ``token`` (a 1-D array) and the next state."""
        feed = {
            "token": np.array([token], dtype=np.int64),
            **dict(zip(self.states, state, strict=True)),
        }
        logits, *new = self.session.run(self.outputs, feed)
        return logits[0], new

    def step_many(self, tokens: list[int], states: list[list[np.ndarray]]) -> list[tuple]:
        """``step`` for several streams in one call: their states side by side on the batch
        axis, each stream's rows taken back out: what each computes alone, within float rounding
        (the product's kernel can change with the batch; tests/unit/test_export.py)."""
        if len(tokens) == 1:
            return [self.step(tokens[0], states[0])]
        feed = {"token": np.array(tokens, dtype=np.int64)}
        for i, name in enumerate(self.states):
            feed[name] = np.concatenate([s[i] for s in states], axis=1)
        logits, *new = self.session.run(self.outputs, feed)
        return [(logits[b], [h[:, b : b + 1] for h in new]) for b in range(len(tokens))]

    def stream(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> Iterator[int]:
        """Generated ids one at a time; concurrent streams of this model step in batches
        (rnn/serving/batching.py)."""
        with self._batches.streaming():
            yield from stream(
                self._batches.step, self.begin, prefix_ids, num_preds, temperature, top_k, seed
            )

    def stream_text(
        self, prefix: str, num_preds: int, temperature: float = 0.0, top_k: int = 0, seed: int = 0
    ) -> Iterator[str]:
        return stream_text(self, self.vocab, prefix, num_preds, temperature, top_k, seed)
