"""Next-token choice for generation, shared by both frameworks so they sample identically."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def choose_next(
    logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator
) -> int:
    """Greedy argmax when temperature is 0 (the book's), else softmax(logits / T) over the top k."""
    logits = np.asarray(logits, dtype=np.float64).ravel()
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if 0 < top_k < scaled.size:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def stream(
    step,
    begin,
    prefix_ids: list[int],
    num_preds: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> Iterator[int]:
    """The chapter's ``predict`` as a stream: warm the state up on the prefix, then yield
    ``num_preds`` ids one at a time, each as soon as it is chosen.

    ``step(token_id, state) -> (logits as NumPy, state)``; ``begin()`` returns a fresh state.
    """
    if not prefix_ids:
        raise ValueError("the prefix must hold at least one token")
    rng = np.random.default_rng(seed)
    state = begin()
    for token in prefix_ids[:-1]:  # warm-up: feed the prefix, ignore the predictions
        _, state = step(token, state)
    last = prefix_ids[-1]
    for _ in range(num_preds):
        logits, state = step(last, state)
        last = choose_next(logits, temperature, top_k, rng)
        yield last


def generate(
    step,
    begin,
    prefix_ids: list[int],
    num_preds: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> list[int]:
    """The prefix followed by ``num_preds`` generated ids (``stream``, collected)."""
    return [
        *prefix_ids,
        *stream(step, begin, prefix_ids, num_preds, temperature, top_k, seed),
    ]
