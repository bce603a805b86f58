"""Typed, validated parameters: ``params.yaml`` is the single source, one section per stage.

Every model forbids unknown keys, so a typo in ``params.yaml`` fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rnn.errors import PipelineError

TIME_MACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(StrictModel):
    """Where the text comes from and how it is cleaned."""

    source: str = Field(
        TIME_MACHINE_URL,
        description="http(s) URL, a local file, a directory of text files, or a glob pattern",
    )
    sha1: str | None = Field(TIME_MACHINE_SHA1, pattern=r"^[0-9a-f]{40}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    normalization: Literal["d2l", "raw"] = "d2l"
    strip_gutenberg: bool = True
    encoding: str = "utf-8"
    cache_dir: str = "data/cache"
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    @model_validator(mode="after")
    def _url_needs_checksum(self) -> IngestConfig:
        if self.is_url and not (self.sha1 or self.sha256):
            raise ValueError(
                "a URL source needs a pinned checksum: set ingest.sha1 or ingest.sha256"
            )
        return self


class VocabConfig(StrictModel):
    token: Literal["char", "word"] = "char"
    min_freq: Annotated[int, Field(ge=0)] = 0
    reserved_tokens: list[str] = Field(default_factory=list)
    max_size: PositiveInt | None = None

    @model_validator(mode="after")
    def _reserved_are_distinct(self) -> VocabConfig:
        tokens = ["<unk>", *self.reserved_tokens]
        if len(set(tokens)) != len(tokens):
            raise ValueError("reserved_tokens must be distinct and must not repeat '<unk>'")
        if self.max_size is not None and self.max_size <= len(tokens):
            raise ValueError(
                f"max_size must exceed the {len(tokens)} reserved tokens (incl. <unk>)"
            )
        return self


class PartitionConfig(StrictModel):
    """Contiguous splits plus the chapter's minibatch scheme (used by training)."""

    max_tokens: PositiveInt | None = None
    train: Fraction = 1.0
    valid: Fraction = 0.0
    test: Fraction = 0.0
    batch_size: PositiveInt = 32
    num_steps: PositiveInt = 35
    sampling: Literal["sequential", "random"] = "sequential"

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> PartitionConfig:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + valid + test must be 1, got {total:g}")
        if self.train == 0:
            raise ValueError("train fraction must be positive")
        return self


class ModelConfig(StrictModel):
    num_hiddens: PositiveInt


def _book_models() -> dict[str, ModelConfig]:
    return {"scratch": ModelConfig(num_hiddens=512), "concise": ModelConfig(num_hiddens=256)}


class TrainConfig(StrictModel):
    backends: list[Literal["torch", "tf"]] = Field(default_factory=lambda: ["torch", "tf"])
    variants: list[Literal["scratch", "concise"]] = Field(
        default_factory=lambda: ["scratch", "concise"]
    )
    models: dict[Literal["scratch", "concise"], ModelConfig] = Field(default_factory=_book_models)
    epochs: PositiveInt = 500
    lr: Annotated[float, Field(gt=0)] = 1.0
    theta: Annotated[float, Field(gt=0)] = 1.0
    seed: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda", "mps", "gpu"] = "cpu"
    checkpoint_every: Annotated[int, Field(ge=0)] = 50
    # Cores per training run; a pure speed setting (the weights do not depend on it, see
    # rnn/engine.py resolve_threads), so it is in neither the run's fingerprint nor dvc.yaml.
    # null: every core this process may use, or RNN_THREADS where the pool sets a slot's share.
    threads: Annotated[int, Field(ge=1)] | None = None


class EvaluateConfig(StrictModel):
    prefixes: list[str] = Field(default_factory=lambda: ["time traveller", "traveller"])
    num_preds: PositiveInt = 50
    temperature: Annotated[float, Field(ge=0)] = 0.0
    top_k: Annotated[int, Field(ge=0)] = 0
    seed: Annotated[int, Field(ge=0)] = 0


class Params(StrictModel):
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


def describe_validation_error(err: ValidationError, where: str) -> str:
    """Summarise pydantic's multi-line report as one line naming each bad key."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{key}: {msg}")
    return f"invalid parameters in {where}: " + "; ".join(parts)


def validate_params(raw: dict[str, Any], where: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise PipelineError(
            describe_validation_error(err, where),
            f"correct those keys in {where} (`rnn params` prints every key with its default)",
        ) from None


def load_params(path: str | os.PathLike[str]) -> Params:
    """Read and validate a params file; every failure is a one-line ``PipelineError``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"parameter file {path} not found",
            "run in the project (or pass --workdir DIR, the directory with params.yaml) or pass --params PATH",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path} is not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping of sections", "see params.yaml")
    return validate_params(raw, str(path))
