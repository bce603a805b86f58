"""Default locations of every stage's outputs; ``dvc.yaml`` spells out the same paths."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
CORPUS = DATA / "corpus.parquet"
VOCAB_DIR = DATA / "vocab"
PARTITION_DIR = DATA / "partition"
MODELS_DIR = DATA / "models"
EVAL_DIR = DATA / "eval"
REPORT_DIR = Path("reports")


def run_name(backend: str, variant: str) -> str:
    return f"{backend}-{variant}"


def model_dir(backend: str, variant: str, root: Path = MODELS_DIR) -> Path:
    return root / run_name(backend, variant)


def eval_dir(backend: str, variant: str, root: Path = EVAL_DIR) -> Path:
    return root / run_name(backend, variant)
