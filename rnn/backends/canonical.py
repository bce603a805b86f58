"""Canonical weight names: the book's, per layer, the same in both frameworks for every cell.

A model file holds ``W_x<g>_l<k>``, ``W_h<g>_l<k>`` and ``b_<g>_l<k>`` for every gate ``g`` of the
cell (``rnn.registry.CELLS``: h for the RNN; z, r, h for the GRU; i, f, o, c for the LSTM) and
layer ``k``, plus the output layer's ``W_hq`` and ``b_q``. The concise GRU (PyTorch's and cuDNN's
form) adds ``b_hh_l<k>``, its recurrent candidate bias, which the reset gate multiplies.

The scratch models keep each layer's gates side by side in three fused arrays (``W_x``: inputs x
gates*hidden, ``W_h``: hidden x gates*hidden, ``b``: gates*hidden, gate blocks in the registry's
order); ``split_gates`` and ``join_gates`` convert. They work on NumPy arrays and on framework
tensors alike (slicing only; joining concatenates NumPy arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnn.registry import CELLS

OUTPUT_WEIGHTS = ("W_hq", "b_q")
GRU_RECURRENT_BIAS = "b_hh"


def gate_names(cell: str, layer: int) -> list[tuple[str, str, str]]:
    """(input weight, recurrent weight, bias) names of each gate of ``cell`` in ``layer``."""
    return [(f"W_x{g}_l{layer}", f"W_h{g}_l{layer}", f"b_{g}_l{layer}") for g in CELLS[cell].gates]


def split_gates(cell: str, layer: int, W_x: Any, W_h: Any, b: Any) -> dict[str, Any]:
    """Fused arrays -> one canonical entry per gate (column blocks, in the registry's order)."""
    hidden = W_h.shape[0]
    out = {}
    for k, (x_name, h_name, b_name) in enumerate(gate_names(cell, layer)):
        cols = slice(k * hidden, (k + 1) * hidden)
        out[x_name], out[h_name], out[b_name] = W_x[:, cols], W_h[:, cols], b[cols]
    return out


def join_gates(
    cell: str, layer: int, weights: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical entries of one layer -> the fused (W_x, W_h, b) as NumPy arrays."""
    names = gate_names(cell, layer)
    return tuple(  # type: ignore[return-value]
        np.concatenate([np.asarray(weights[n[i]]) for n in names], axis=-1) for i in range(3)
    )


def expected_names(cell: str, num_layers: int, recurrent_bias: bool = False) -> set[str]:
    """Every name a model file of this architecture holds."""
    names = set(OUTPUT_WEIGHTS)
    for layer in range(num_layers):
        names.update(n for gate in gate_names(cell, layer) for n in gate)
        if recurrent_bias:
            names.add(f"{GRU_RECURRENT_BIAS}_l{layer}")
    return names
