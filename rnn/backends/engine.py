"""Pick a framework's training engine by name; both expose the same ``Engine`` interface."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from rnn.errors import PipelineError
from rnn.names import THREADS_ENV
from rnn.registry import BACKENDS, CELLS, IMPLEMENTATIONS


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


def make_engine(
    backend: str,
    variant: str,
    vocab_size: int,
    num_hiddens: int,
    *,
    cell: str = "rnn",
    num_layers: int = 1,
    dropout: float = 0.0,
    init: str = "default",
    optimizer=None,
    lr: float = 1.0,
    theta: float | None = 1.0,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    world=None,
):
    """An engine of ``backend`` for one model; ``optimizer`` is an ``OptimizerConfig`` (default:
    the book's SGD) and ``lr`` the rate an epoch trains at when it is given no schedule; ``world``
    this process's place in a data-parallel run (rnn/backends/world.py; default: the only one)."""
    from rnn.backends.world import SINGLE

    if variant not in IMPLEMENTATIONS:
        raise PipelineError(
            f"unknown variant {variant!r}", f"choose one of {', '.join(IMPLEMENTATIONS)}"
        )
    if cell not in CELLS:
        raise PipelineError(f"unknown cell {cell!r}", f"choose one of {', '.join(CELLS)}")
    module = backend_module(backend)
    return module.Engine(
        variant,
        vocab_size,
        num_hiddens,
        cell=cell,
        num_layers=num_layers,
        dropout=dropout,
        init=init,
        optimizer=optimizer,
        lr=lr,
        theta=theta,
        device=device,
        seed=seed,
        threads=resolve_threads(threads),
        world=world or SINGLE,
    )


def engine_for(params, backend: str, variant: str, model: str, vocab_size: int, world=None):
    """The engine a run of the grid trains: its model from ``params.models``, its optimiser,
    clipping, device, seed and threads from ``params.train``."""
    arch, tcfg = params.model(model), params.train
    return make_engine(
        backend,
        variant,
        vocab_size,
        arch.hiddens(variant),
        cell=arch.cell,
        num_layers=arch.num_layers,
        dropout=arch.dropout,
        init=arch.init,
        optimizer=tcfg.optimizer,
        lr=tcfg.lr,
        theta=tcfg.theta,
        device=tcfg.device,
        seed=tcfg.seed,
        threads=tcfg.threads,
        world=world,
    )
