"""The data-parallel equivalence cases, trained the same way in one process (the test) and by
each rank of a torchrun world (tests/support/dp_worker.py): every cell and implementation, both sampling
schemes, stacked layers with dropout, Adam with a schedule; clipping at a small theta, so that
it bites at every step (where it does not, clipping before the reduce would go unnoticed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnn.backends.engine import make_engine
from rnn.backends.world import SINGLE, World
from rnn.config import OptimizerConfig
from rnn.data.partition import epoch_minibatches

VOCAB, BATCH, STEPS, EPOCHS, THETA = 12, 4, 6, 3, 0.05


@dataclass(frozen=True)
class Case:
    variant: str
    cell: str
    sampling: str = "sequential"
    num_layers: int = 1
    dropout: float = 0.0
    optimizer: str = "sgd"

    @property
    def name(self) -> str:
        return (
            f"{self.variant}-{self.cell}-{self.sampling}-l{self.num_layers}"
            f"-d{self.dropout:g}-{self.optimizer}"
        )


CASES = [
    *(
        Case(variant, cell, sampling)
        for variant in ("scratch", "concise")
        for cell in ("rnn", "gru", "lstm")
        for sampling in ("sequential", "random")
    ),
    *(Case(variant, "lstm", num_layers=2, dropout=0.3) for variant in ("scratch", "concise")),
    Case("scratch", "gru", num_layers=2, dropout=0.2, optimizer="adamw"),
]


def corpus() -> np.ndarray:
    return np.random.default_rng(7).integers(0, VOCAB, 500).astype(np.int32)


def train_case(
    case: Case, backend: str = "torch", world: World = SINGLE, epochs: int = EPOCHS
) -> dict[str, np.ndarray]:
    """The canonical weights after ``epochs`` epochs of ``case``."""
    # Adam turns rounding-sized gradient differences into lr-sized steps: a modest rate
    lr = 0.002 if case.optimizer != "sgd" else 1.0
    engine = make_engine(
        backend,
        case.variant,
        VOCAB,
        8,
        cell=case.cell,
        num_layers=case.num_layers,
        dropout=case.dropout,
        optimizer=OptimizerConfig(name=case.optimizer, weight_decay=0.01),
        lr=lr,
        theta=THETA,
        seed=3,
        threads=1,
        world=world,
    )
    ids = corpus()
    for epoch in range(epochs):
        xs, ys = epoch_minibatches(ids, BATCH, STEPS, case.sampling, 5, epoch)
        lrs = np.linspace(lr, lr / 2, len(xs))  # a schedule: the step's rate reaches every rank
        engine.train_epoch(xs, ys, case.sampling, lrs, epoch)
    return engine.canonical_weights()
