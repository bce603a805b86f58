"""The one table of what can be trained: backends, variants and cells.

The parameter models validate against it (``rnn/config.py``), the engines dispatch on it
(``rnn/backends/engine.py``), ``dvc.yaml``'s matrix and the flows' fan-out expand the grid it defines
(``grid``), and the report names its runs with ``RunKey.name``. Adding a cell is one ``CELLS``
entry plus its model code in ``rnn/backends/torch`` and ``rnn/backends/tf`` (a recurrence for ``scratch``, the
framework's layer for ``concise``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BACKENDS = ("torch", "tf")
VARIANTS = ("scratch", "concise")  # the chapter's two ways of writing a model

Backend = Literal["torch", "tf"]
Variant = Literal["scratch", "concise"]
CellName = Literal["rnn", "gru", "lstm"]


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: how many gate blocks its products have, and its state tensors."""

    name: str
    gates: tuple[str, ...]  # the book's suffix of each block of W_x*, W_h*, b_* (in that order)
    states: tuple[str, ...]  # what the state tuple holds per layer: H, or H and C

    @property
    def num_gates(self) -> int:
        return len(self.gates)


# Gate blocks in the order the fused weights lay them out (the book's names: W_xz, W_hz, b_z ...).
CELLS: dict[str, Cell] = {
    "rnn": Cell("rnn", gates=("h",), states=("H",)),
    "gru": Cell("gru", gates=("z", "r", "h"), states=("H",)),
    "lstm": Cell("lstm", gates=("i", "f", "o", "c"), states=("H", "C")),
}


@dataclass(frozen=True, order=True)
class RunKey:
    """One cell of the grid: a backend, an variant and a named model (``params.models``)."""

    backend: str
    variant: str
    model: str

    @property
    def name(self) -> str:
        """``torch-scratch-rnn``: also the DVC stage suffix (``train@torch-scratch-rnn``)."""
        return f"{self.backend}-{self.variant}-{self.model}"


def grid(backends: list[str], variants: list[str], models: list[str]) -> list[RunKey]:
    """Every backend x variant x model, in the order of dvc.yaml's matrix."""
    return [RunKey(b, v, m) for b in backends for v in variants for m in models]
