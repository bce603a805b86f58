"""Shared helpers for the benchmark scripts: corpus paths and building the data stages once."""

from __future__ import annotations

import os
from pathlib import Path

from rnn.config import IngestConfig, PartitionConfig, VocabConfig
from rnn.corpus import ingest
from rnn.partition import partition
from rnn.vocab import build_vocab

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
