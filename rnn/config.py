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
from rnn.registry import BACKENDS, VARIANTS, Backend, CellName, Variant

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
        scheme = self.source.split("://", 1)[0] if "://" in self.source else None
        if scheme is not None and not self.is_url:
            raise ValueError(
                f"{scheme}:// sources are not fetched (only http:// and https://, with a pinned "
                "checksum); download it yourself and point ingest.source at the file"
            )
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


ModelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class ModelConfig(StrictModel):
    """A named architecture (a ``models`` entry); the grid trains it in every variant."""

    cell: CellName = "rnn"
    # One size for every variant, or one per variant (the book's table gives the
    # scratch RNN 512 units and the concise one 256).
    num_hiddens: PositiveInt | dict[Variant, PositiveInt] = 256
    num_layers: PositiveInt = 1
    # Dropout on each layer's output (between stacked layers and before the output layer) while
    # training; 0 = none (the book's).
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # How weights start: ``default`` is each variant's own (scratch: the book's N(0, 0.01)
    # and zero biases; concise: the framework's, uniform +-1/sqrt(H) in PyTorch, Glorot and
    # orthogonal in Keras); ``uniform`` draws every weight and bias from PyTorch's
    # U(-1/sqrt(H), 1/sqrt(H)) in every variant, so the frameworks start alike.
    init: Literal["default", "uniform"] = "default"

    def hiddens(self, variant: str) -> int:
        if isinstance(self.num_hiddens, int):
            return self.num_hiddens
        if variant not in self.num_hiddens:
            raise PipelineError(
                f"this model gives num_hiddens for {', '.join(self.num_hiddens)} but not {variant}",
                f"add {variant}: N under its num_hiddens, or give one number for all",
            )
        return self.num_hiddens[variant]


def _book_models() -> dict[str, ModelConfig]:
    return {"rnn": ModelConfig(cell="rnn", num_hiddens={"scratch": 512, "concise": 256})}


class OptimizerConfig(StrictModel):
    """``sgd`` is the book's; ``adam``/``adamw`` are PyTorch's update rules (TensorFlow runs the
    same formulas). ``weight_decay`` decays the weight matrices only (not biases): added to the
    gradient for sgd and adam (L2), decoupled for adamw."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0.0)] = 1e-8


class ScheduleConfig(StrictModel):
    """The learning rate per step: ``constant`` (the book's); ``cosine``: linear warm-up over
    ``warmup_steps``, then cosine decay to ``min_lr`` at the last step (nanoGPT's); ``plateau``:
    multiply by ``factor`` whenever validation perplexity has not improved for ``patience``
    epochs (word_language_model's). A warm-up applies to every schedule."""

    name: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    min_lr: Annotated[float, Field(ge=0.0)] = 0.0
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    patience: Annotated[int, Field(ge=0)] = 0


class TrainConfig(StrictModel):
    backends: list[Backend] = Field(default_factory=lambda: list(BACKENDS))
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS))
    models: list[ModelName] = Field(default_factory=lambda: ["rnn"])  # names from ``models``
    epochs: PositiveInt = 500
    lr: Annotated[float, Field(gt=0)] = 1.0
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    theta: Annotated[float, Field(gt=0)] | None = 1.0  # global-norm clipping; null = none
    keep_best: bool = False  # the model is the epoch with the best validation perplexity
    early_stop_patience: Annotated[int, Field(ge=0)] = 0  # epochs without improvement; 0 = off
    seed: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda", "mps", "gpu"] = "cpu"
    checkpoint_every: Annotated[int, Field(ge=0)] = 50
    # Cores per training run; a pure speed setting (the weights do not depend on it, see
    # rnn/backends/engine.py resolve_threads), so it is in neither the run's fingerprint nor dvc.yaml.
    # null: every core this process may use, or RNN_THREADS where the pool sets a slot's share.
    threads: Annotated[int, Field(ge=1)] | None = None
    # Processes that train one model data-parallel, each on its block of every minibatch's rows
    # (rnn/backends/world.py): torchrun for PyTorch, tf.distribute for TensorFlow; 1 = one process.
    # The maths is the global batch's, but sums round in another order, so dvc.yaml lists it.
    data_parallel: PositiveInt = 1
    # TensorFlow only: ``processes`` (MultiWorkerMirroredStrategy, one process per replica) or
    # ``devices`` (MirroredStrategy in one process, one replica per GPU or per logical CPU device).
    # PyTorch always runs a process per replica (torchrun).
    data_parallel_over: Literal["processes", "devices"] = "processes"

    @property
    def uses_validation(self) -> bool:
        return self.keep_best or self.early_stop_patience > 0 or self.schedule.name == "plateau"


class EvaluateConfig(StrictModel):
    prefixes: list[str] = Field(default_factory=lambda: ["time traveller", "traveller"])
    num_preds: PositiveInt = 50
    temperature: Annotated[float, Field(ge=0)] = 0.0  # 0 = the book's greedy argmax
    top_k: Annotated[int, Field(ge=0)] = 0
    # A second text per prefix, drawn at this temperature among the top_k likeliest tokens:
    # greedy text loops once a model is good enough to have favourite phrases. 0 = none.
    sample_temperature: Annotated[float, Field(ge=0)] = 0.8
    sample_top_k: Annotated[int, Field(ge=0)] = 10
    seed: Annotated[int, Field(ge=0)] = 0


class Params(StrictModel):
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: dict[ModelName, ModelConfig] = Field(default_factory=_book_models)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @model_validator(mode="after")
    def _grid_is_defined(self) -> Params:
        unknown = [m for m in self.train.models if m not in self.models]
        if unknown:
            raise ValueError(
                f"train.models names {', '.join(unknown)}, which the models section does not "
                f"define (it has {', '.join(self.models) or 'none'})"
            )
        if self.partition.batch_size % self.train.data_parallel:
            raise ValueError(
                f"partition.batch_size={self.partition.batch_size} does not split into "
                f"train.data_parallel={self.train.data_parallel} equal blocks of rows: make it "
                "a multiple"
            )
        if self.train.uses_validation and self.partition.valid == 0:
            raise ValueError(
                "train.keep_best, early_stop_patience and the plateau schedule judge by "
                "validation perplexity: set partition.valid above 0"
            )
        return self

    def model(self, name: str) -> ModelConfig:
        if name not in self.models:
            raise PipelineError(
                f"unknown model {name!r}",
                f"choose one of {', '.join(self.models)} (the models section of params.yaml)",
            )
        return self.models[name]


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
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise PipelineError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})",
            "save the parameter file as UTF-8",
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path} is not valid YAML{where}", "fix the YAML syntax") from None
    if raw is None:  # an empty file would silently mean every default (the book's corpus)
        raise PipelineError(
            f"{path} is empty", "write the parameters into it (the repository's params.yaml)"
        )
    if not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping of sections", "see params.yaml")
    return validate_params(raw, str(path))
