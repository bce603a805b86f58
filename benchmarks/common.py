"""Shared helpers for the benchmark scripts: corpus paths and building the data stages once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rnn.backends.engine import make_engine
from rnn.config import IngestConfig, PartitionConfig, VocabConfig
from rnn.data.corpus import ingest
from rnn.data.partition import epoch_minibatches, load_split, partition
from rnn.data.vocab import Vocab, build_vocab

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
TIME_MACHINE = SHARED / "corpora" / "timemachine.txt"
SEED_BASELINE = SHARED / "bench" / "seed_baseline.py"


def prepare_data(workdir: Path, partition_cfg: PartitionConfig) -> tuple[Path, Path]:
    """Run ingest -> vocab -> partition on the canonical text; returns (vocab_dir, partition_dir)."""
    ingest(IngestConfig(source=str(TIME_MACHINE)), workdir / "corpus.parquet")
    build_vocab(workdir / "corpus.parquet", VocabConfig(), workdir / "vocab")
    partition(workdir / "vocab", partition_cfg, workdir / "partition")
    return workdir / "vocab", workdir / "partition"


def canonical_training_data(workdir: Path) -> tuple[np.ndarray, int]:
    """The full canonical text's training ids (default partition) and the vocabulary size."""
    vocab_dir, part = prepare_data(workdir, PartitionConfig())
    return np.asarray(load_split(part, "train")), len(Vocab.load(vocab_dir))


def time_training(
    backend: str,
    variant: str,
    hiddens: int,
    ids: np.ndarray,
    vocab_size: int,
    *,
    device: str = "cpu",
    epochs: int = 2,
    threads: int | None = None,
    cell: str = "rnn",
    probe: Callable[[], dict] | None = None,
    chunk: int | None = None,
) -> dict:
    """Tokens/s of our engine at the book's settings (batch 32 x 35, sequential, lr 1, theta 1)
    over ``epochs`` whole epochs, after one warm-up epoch (tracing, compilation, allocation).
    Timed in stretches: whole epochs, or, with ``chunk``, about ``chunk`` minibatches each
    (the state starts afresh with each stretch; the same work). ``probe``, if given, runs
    before each stretch and after the last, outside the clock: a measurement to compare each
    stretch with under the same load (``probes``; ``stretch_tokens_per_s``)."""
    engine = make_engine(
        backend,
        variant,
        vocab_size,
        hiddens,
        cell=cell,
        lr=1.0,
        theta=1.0,
        device=device,
        seed=0,
        threads=threads,
    )
    xs, ys = epoch_minibatches(ids, 32, 35, "sequential", 0, 99)
    stretches = np.array_split(np.arange(len(xs)), max(1, round(len(xs) / chunk)) if chunk else 1)
    for size in {len(rows) for rows in stretches} | {len(xs)}:  # XLA compiles for each length
        engine.train_epoch(xs[:size], ys[:size], "sequential")
    seconds, tokens, per_stretch, probes = 0.0, 0, [], []
    for epoch in range(epochs):
        xs, ys = epoch_minibatches(ids, 32, 35, "sequential", 0, epoch)
        for rows in stretches:
            if probe:
                probes.append(probe())
            t0 = time.perf_counter()
            loss, count = engine.train_epoch(xs[rows], ys[rows], "sequential")
            elapsed = time.perf_counter() - t0
            seconds, tokens = seconds + elapsed, tokens + count
            per_stretch.append(count / elapsed)
    if probe:
        probes.append(probe())
    return {
        "device": str(engine.device),
        "tokens_per_s": tokens / seconds,
        "stretch_tokens_per_s": per_stretch,
        "probes": probes,
        "perplexity": float(np.exp(loss / count)),
    }


def last_json(cmd: list[str]) -> dict:
    """Run ``cmd`` and parse the last line it prints as JSON."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pair(first: list[str], second: list[str], flip: bool) -> tuple[dict, dict]:
    """(first's result, second's result), with second run first when ``flip``: alternating the
    order spreads a slow spell on a shared host over both sides."""
    if flip:
        b = last_json(second)
        return last_json(first), b
    a = last_json(first)
    return a, last_json(second)
