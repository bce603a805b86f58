"""Shared helpers for the model tests: engines with identical weights in both frameworks."""

from __future__ import annotations

import numpy as np

from rnn.engine import make_engine

V, H, B, T = 28, 16, 4, 7


def engine(backend: str, variant: str, seed: int = 0, hiddens: int = H, **kw):
    kw = {"lr": 1.0, "theta": 1.0, "device": "cpu", "seed": seed, **kw}
    return make_engine(backend, variant, V, hiddens, **kw)


def random_weights(seed: int = 0, hiddens: int = H) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_xh": rng.normal(0, 0.5, (V, hiddens)).astype(np.float32),
        "W_hh": rng.normal(0, 0.3, (hiddens, hiddens)).astype(np.float32),
        "b_h": rng.normal(0, 0.1, hiddens).astype(np.float32),
        "W_hq": rng.normal(0, 0.5, (hiddens, V)).astype(np.float32),
        "b_q": rng.normal(0, 0.1, V).astype(np.float32),
    }


def tokens(seed: int = 0, batch: int = B, steps: int = T) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (batch, steps + 1))
    return x[:, :-1], x[:, 1:]
