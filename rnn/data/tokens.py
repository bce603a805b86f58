"""The vocabulary as a model uses it: token <-> id, and text in and out of a model that streams
ids. NumPy-free and framework-free, so a served model (rnn/serving/) loads it without the data
stages' Arrow kernels (rnn/data/vocab.py builds it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rnn.errors import PipelineError

UNK = "<unk>"
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class Vocab:
    """Token <-> id mapping; ``counts[i]`` is how often token i occurs in the encoded corpus."""

    tokens: tuple[str, ...]
    counts: tuple[int, ...]
    token_type: str

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, text: str) -> list[int]:
        index = self.index
        pieces = list(text) if self.token_type == "char" else text.split()
        return [index.get(p, 0) for p in pieces]

    def decode(self, ids) -> str:
        sep = "" if self.token_type == "char" else " "
        return sep.join(self.tokens[int(i)] for i in ids)

    def to_json(self, **extra) -> dict:
        return {
            "token_type": self.token_type,
            "tokens": list(self.tokens),
            "counts": list(self.counts),
            **extra,
        }

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        if not path.is_file():
            raise PipelineError(f"vocabulary {path} not found", "run `rnn vocab` first")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_json(cls, raw: dict) -> Vocab:
        return cls(tuple(raw["tokens"]), tuple(raw["counts"]), raw["token_type"])


def stream_text(
    model,
    vocab: Vocab,
    prefix: str,
    num_preds: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> Iterator[str]:
    """The prefix as the model reads it, then each generated token's text as soon as it is
    chosen; joined, the pieces are ``vocab.decode`` of the whole sequence. ``model`` is an
    engine of either framework or an exported model (``rnn.serving.runtime``): anything with
    ``stream(prefix_ids, num_preds, temperature, top_k, seed)``."""
    ids = prefix_ids(vocab, prefix)
    sep = "" if vocab.token_type == "char" else " "
    yield vocab.decode(ids)
    for token in model.stream(ids, num_preds, temperature, top_k, seed):
        yield sep + vocab.decode([token])


def prefix_ids(vocab: Vocab, prefix: str) -> list[int]:
    """The prefix's ids, once it is known to be something the model can read."""
    check_prefix(vocab, prefix)
    ids = vocab.encode(prefix)
    if not ids:
        raise PipelineError(f"prefix {prefix!r} has no tokens", "use a non-empty prefix")
    return ids


def check_prefix(vocab: Vocab, prefix: str) -> None:
    """A character the model never saw would silently become <unk>; say so instead."""
    if vocab.token_type != "char":
        return  # an unknown word is what <unk> stands for in a word model
    unknown = sorted(set(prefix) - set(vocab.index))
    if unknown:
        shown = "".join(unknown[:20])
        raise PipelineError(
            f"prefix {prefix!r} has characters outside the model's vocabulary: {shown!r}",
            f"use only characters of the training text ({len(vocab) - 1} known; see "
            "data/vocab/vocab.json)",
        )
