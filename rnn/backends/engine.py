"""A framework's training engine, picked by name: the ``Engine`` protocol that both satisfy
(rnn/backends/torch/engine.py, rnn/backends/tf/engine.py), and the factory that builds one from
a ``ModelSpec``."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from rnn.backends.spec import ModelSpec, OptimSpec, model_spec, optim_spec
from rnn.errors import PipelineError
from rnn.names import THREADS_ENV
from rnn.registry import BACKENDS


class Engine(Protocol):
    """What the training loop, the evaluation and generation ask of an engine."""

    spec: ModelSpec

    def train_epoch(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        sampling: str,
        lrs: np.ndarray | None = None,
        epoch: int = 0,
    ) -> tuple[float, int]:
        """One epoch's minibatches at ``lrs[i]`` each; returns the loss sum and token count."""
        ...

    def evaluate(self, xs: np.ndarray, ys: np.ndarray) -> tuple[float, int]: ...

    def stream(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> Iterator[int]: ...

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> list[int]: ...

    def num_params(self) -> int: ...

    def canonical_weights(self) -> dict[str, np.ndarray]: ...

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None: ...

    def save_checkpoint(
        self, path: Path, metadata: dict[str, str], extra: dict[str, np.ndarray]
    ) -> None: ...

    def load_checkpoint(self, data: bytes) -> dict[str, np.ndarray]:
        """Restore from checksum-verified bytes; returns the extra arrays saved with them."""
        ...


def backend_module(backend: str) -> ModuleType:
    if backend not in BACKENDS:
        raise PipelineError(f"unknown backend {backend!r}", f"choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"rnn.backends.{backend}.engine")
    except ImportError as err:
        extra = "torch" if backend == "torch" else "tf"
        raise PipelineError(
            f"backend {backend} is not installed ({err.name} missing)",
            f"pip install 'rnn-pipeline[{extra}]' (or run ./setup.sh)",
        ) from None


def resolve_threads(threads: int | None) -> int:
    """The cores a run uses: ``train.threads``, else $RNN_THREADS, else every core this process
    may run on. Only speed depends on it: PyTorch's CPU kernels give identical results at any
    thread count, and the TensorFlow engine spreads work over independent ops, not within one
    (rnn/backends/tf/engine.py set_threads)."""
    if threads:
        return threads
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise PipelineError(
                f"{THREADS_ENV}={env!r} is not a positive whole number",
                f"unset {THREADS_ENV} or set it to e.g. 2",
            )
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's dropout masks: a resumed run draws the masks an uninterrupted one
    would, without storing a generator's state."""
    return (seed * 1_000_003 + epoch) % (2**63)


def build_engine(spec: ModelSpec, optim: OptimSpec | None = None) -> Engine:
    """The engine of ``spec.backend`` for the model ``spec``, trained as ``optim`` says (default:
    the book's SGD at lr 1, clipping at 1)."""
    resolved = replace(spec, threads=resolve_threads(spec.threads))
    return backend_module(spec.backend).Engine(resolved, optim or OptimSpec())


def make_engine(backend: str, variant: str, vocab_size: int, num_hiddens: int, **options):
    """``build_engine`` from keywords: ``options`` are ``ModelSpec``'s fields and ``OptimSpec``'s
    (``optimizer``, ``lr``, ``theta``); for scripts and tests that build one engine by hand."""
    optim = {k: options.pop(k) for k in ("optimizer", "lr", "theta") if k in options}
    if optim.get("optimizer") is None:
        optim.pop("optimizer", None)
    if options.get("world") is None:
        options.pop("world", None)
    spec = ModelSpec(backend, variant, vocab_size, num_hiddens, **options)
    return build_engine(spec, OptimSpec(**optim))


def engine_for(params, backend: str, variant: str, model: str, vocab_size: int, world=None):
    """The engine a run of the grid trains: its model from ``params.models``, its optimiser,
    clipping, device, seed and threads from ``params.train``."""
    return build_engine(
        model_spec(params, backend, variant, model, vocab_size, world), optim_spec(params)
    )
