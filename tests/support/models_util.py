"""Shared helpers for the model tests: engines with identical weights in both frameworks."""

from __future__ import annotations

import numpy as np

from rnn.backends.canonical import expected_names
from rnn.backends.engine import make_engine

V, H, B, T = 28, 16, 4, 7


def engine(backend: str, variant: str, seed: int = 0, hiddens: int = H, **kw):
    kw = {"lr": 1.0, "theta": 1.0, "device": "cpu", "seed": seed, **kw}
    return make_engine(backend, variant, V, hiddens, **kw)


def random_weights(
    seed: int = 0,
    hiddens: int = H,
    cell: str = "rnn",
    num_layers: int = 1,
    recurrent_bias: bool = False,
) -> dict[str, np.ndarray]:
    """Canonical weights of an architecture, drawn large enough that every gate matters."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(expected_names(cell, num_layers, recurrent_bias)):
        if name.startswith("b"):
            shape: tuple[int, ...] = (V,) if name == "b_q" else (hiddens,)
            out[name] = rng.normal(0, 0.1, shape)
        elif name == "W_hq":
            out[name] = rng.normal(0, 0.5, (hiddens, V))
        elif name.startswith("W_x") and name.endswith("_l0"):
            out[name] = rng.normal(0, 0.5, (V, hiddens))
        else:
            out[name] = rng.normal(0, 0.3, (hiddens, hiddens))
    return {k: v.astype(np.float32) for k, v in out.items()}


def tokens(seed: int = 0, batch: int = B, steps: int = T) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (batch, steps + 1))
    return x[:, :-1], x[:, 1:]
