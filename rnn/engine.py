"""Pick a framework's training engine by name; both expose the same ``Engine`` interface."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from rnn.errors import PipelineError

BACKENDS = ("torch", "tf")
VARIANTS = ("scratch", "concise")


def backend_module(backend: str) -> ModuleType:
    if backend not in BACKENDS:
        raise PipelineError(f"unknown backend {backend!r}", f"choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(f"rnn.{backend}.train")
    except ImportError as err:
        extra = "torch" if backend == "torch" else "tf"
        raise PipelineError(
            f"backend {backend} is not installed ({err.name} missing)",
            f"pip install 'rnn-pipeline[{extra}]' (or run ./setup.sh)",
        ) from None


THREADS_ENV = "RNN_THREADS"  # a worker's share of its machine, set by the pool (flows/pool)


def resolve_threads(threads: int | None) -> int:
    """The cores a run uses: ``train.threads``, else $RNN_THREADS, else every core this process
    may run on. Only speed depends on it: PyTorch's CPU kernels give identical results at any
    thread count, and the TensorFlow engine spreads work over independent ops, not within one
    (rnn/tf/train.py set_threads)."""
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


def make_engine(
    backend: str,
    variant: str,
    vocab_size: int,
    num_hiddens: int,
    *,
    lr: float,
    theta: float,
    device: str,
    seed: int,
    threads: int | None = None,
):
    if variant not in VARIANTS:
        raise PipelineError(f"unknown variant {variant!r}", f"choose one of {', '.join(VARIANTS)}")
    module = backend_module(backend)
    return module.Engine(
        variant,
        vocab_size,
        num_hiddens,
        lr=lr,
        theta=theta,
        device=device,
        seed=seed,
        threads=resolve_threads(threads),
    )
