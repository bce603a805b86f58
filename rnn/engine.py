"""Pick a framework's training engine by name; both expose the same ``Engine`` interface."""

from __future__ import annotations

import importlib
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
        threads=threads,
    )
