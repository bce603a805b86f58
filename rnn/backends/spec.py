"""One model as the engines build it, and how it is trained: built once (from the params for a
run of the grid, from the run's record for evaluation) and passed whole, so no constructor repeats
a list of keywords."""

from __future__ import annotations

from dataclasses import dataclass, field

from rnn.backends.world import SINGLE, World
from rnn.config import OptimizerConfig, Params
from rnn.errors import PipelineError
from rnn.registry import BACKENDS, CELLS, VARIANTS


@dataclass(frozen=True)
class ModelSpec:
    """A model of ``backend``'s ``variant`` (scratch or concise): its cell and sizes, how its
    weights are drawn (``init``, ``seed``), and where it runs (``device``, ``threads``, and
    ``world``, its place in a data-parallel run)."""

    backend: str
    variant: str
    vocab_size: int
    num_hiddens: int
    cell: str = "rnn"
    num_layers: int = 1
    dropout: float = 0.0
    init: str = "default"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    world: World = SINGLE

    def __post_init__(self) -> None:
        for what, value, known in (
            ("backend", self.backend, BACKENDS),
            ("variant", self.variant, VARIANTS),
            ("cell", self.cell, CELLS),
        ):
            if value not in known:
                raise PipelineError(
                    f"unknown {what} {value!r}", f"choose one of {', '.join(known)}"
                )


@dataclass(frozen=True)
class OptimSpec:
    """How the engine updates the model: the optimiser (default: the book's SGD), the learning
    rate an epoch trains at when given no schedule, and the gradient-clipping norm."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr: float = 1.0
    theta: float | None = 1.0


def model_spec(
    params: Params, backend: str, variant: str, model: str, vocab_size: int, world=None
) -> ModelSpec:
    """The model a run of the grid trains: ``params.models[model]``, on ``params.train``'s device,
    seed and threads."""
    arch, tcfg = params.model(model), params.train
    return ModelSpec(
        backend,
        variant,
        vocab_size,
        arch.hiddens(variant),
        cell=arch.cell,
        num_layers=arch.num_layers,
        dropout=arch.dropout,
        init=arch.init,
        device=tcfg.device,
        seed=tcfg.seed,
        threads=tcfg.threads,
        world=world or SINGLE,
    )


def optim_spec(params: Params) -> OptimSpec:
    tcfg = params.train
    return OptimSpec(tcfg.optimizer, tcfg.lr, tcfg.theta)
