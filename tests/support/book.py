"""The chapter's own data code, as written, for checking the vectorised stages against it."""

from __future__ import annotations

import collections
import re


def read_time_machine(path) -> list[str]:
    with open(path) as f:
        lines = f.readlines()
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]


def book_char_vocab(lines: list[str]) -> list[str]:
    tokens = [ch for line in lines for ch in line]
    counter = collections.Counter(tokens)
    freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
    return ["<unk>"] + [t for t, _ in freqs]


def seq_data_iter_random(corpus, batch_size, num_steps, offset, order):
    """The book's random sampler with its two random draws passed in (offset, shuffled order)."""
    corpus = corpus[offset:]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    initial_indices = [initial_indices[i] for i in order]
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        batch = initial_indices[i : i + batch_size]
        yield (
            [corpus[j : j + num_steps] for j in batch],
            [corpus[j + 1 : j + 1 + num_steps] for j in batch],
        )


def seq_data_iter_sequential(corpus, batch_size, num_steps, offset):
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    xs = corpus[offset : offset + num_tokens]
    ys = corpus[offset + 1 : offset + 1 + num_tokens]
    per_row = num_tokens // batch_size
    xs = [xs[i * per_row : (i + 1) * per_row] for i in range(batch_size)]
    ys = [ys[i * per_row : (i + 1) * per_row] for i in range(batch_size)]
    for i in range(0, (per_row // num_steps) * num_steps, num_steps):
        yield [r[i : i + num_steps] for r in xs], [r[i : i + num_steps] for r in ys]
