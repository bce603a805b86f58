"""A hyperparameter search, declared in ``sweep.yaml`` beside ``params.yaml``: which run of the
grid to search for, the space (any key of ``params.yaml`` as a float, an integer or a choice), the
budget, the sampler and the pruner. Validated like the params: every bound of the space is tried
against ``params.yaml``'s own validation, so a point the search may pick can never be an invalid
configuration, and a bad space is one line before anything runs.

    study: lr-and-size          # rerunning `rnn sweep` continues this study
    run: {backend: torch, variant: scratch, model: rnn}
    trials: 24
    timeout_s: 2400             # the wall-time budget; null: none
    sampler: {name: tpe, seed: 0}
    pruner: {name: hyperband, min_epochs: 1}
    space:
      train.lr: {float: [0.05, 50], log: true}
      models.rnn.num_hiddens: {int: [8, 256], log: true}
      models.rnn.num_layers: {choice: [1, 2]}
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from rnn.config import Params, StrictModel, describe_validation_error, validate_params
from rnn.errors import PipelineError
from rnn.registry import Backend, Variant

SWEEP_FILE = "sweep.yaml"
Scalar = bool | int | float | str


class FloatRange(StrictModel):
    float_: tuple[float, float] = Field(alias="float")
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        low, high = self.float_
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"float range [{low:g}, {high:g}] must be finite with low < high")
        if self.log and low <= 0:
            raise ValueError(f"a log range needs low > 0, got {low:g}")
        return self

    @property
    def bounds(self) -> list[Any]:
        return list(self.float_)


class IntRange(StrictModel):
    int_: tuple[int, int] = Field(alias="int")
    log: bool = False
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        low, high = self.int_
        if low >= high:
            raise ValueError(f"int range [{low}, {high}] must have low < high")
        if self.log and (low <= 0 or self.step != 1):
            raise ValueError("a log int range needs low > 0 and step 1")
        return self

    @property
    def bounds(self) -> list[Any]:
        return list(self.int_)

    @property
    def values(self) -> list[int]:
        return list(range(self.int_[0], self.int_[1] + 1, self.step))


class Choice(StrictModel):
    choice: Annotated[list[Scalar], Field(min_length=1)]

    @property
    def bounds(self) -> list[Any]:
        return list(self.choice)


Dimension = FloatRange | IntRange | Choice


class RunConfig(StrictModel):
    """The run of the grid every trial trains (one backend x variant x model)."""

    backend: Backend = "torch"
    variant: Variant = "scratch"
    model: str = "rnn"


class SamplerConfig(StrictModel):
    """``tpe`` (Optuna's default, Bayesian), ``random``, or ``grid`` (every combination of the
    space's choices and integer ranges, in a seeded order)."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: Annotated[int, Field(ge=0)] = 0
    # TPE draws this many points at random before it models the space (Optuna's default: 10);
    # fewer for a small budget
    startup_trials: Annotated[int, Field(ge=1)] = 10


class PrunerConfig(StrictModel):
    """Stops a trial at the end of an epoch whose validation loss the pruner judges hopeless.
    ``hyperband`` and ``successive_halving`` promote the best ``1/reduction_factor`` of the
    trials at each rung (``min_epochs``, ``min_epochs * reduction_factor``, ...); ``median`` stops a
    trial worse than the median of earlier trials at the same epoch, after ``warmup_epochs``
    epochs and once ``startup_trials`` trials have finished; ``none`` never stops one."""

    name: Literal["hyperband", "successive_halving", "median", "none"] = "hyperband"
    min_epochs: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    startup_trials: Annotated[int, Field(ge=0)] = 2


class SweepConfig(StrictModel):
    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    run: RunConfig = Field(default_factory=RunConfig)
    trials: Annotated[int, Field(ge=1, le=10_000)] = 20
    # the validation loss in nats (the log of the perplexity) of the epoch the run keeps
    # (train.keep_best's best, else the last); lower wins. The one objective, named for the reader.
    objective: Literal["valid_loss"] = "valid_loss"
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    space: Annotated[dict[str, Dimension], Field(min_length=1)]
    # set in every trial, beside its point (e.g. fewer epochs, a validation split): recorded in
    # each trial's experiment like the point, so `dvc exp apply` + `dvc repro` reproduce it
    fixed: dict[str, Any] = Field(default_factory=dict)
    # points tried before the sampler draws any (a configuration you already trust, or one to
    # compare against), in order; a key left out is drawn by the sampler
    first: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _first_within_space(self) -> SweepConfig:
        for i, point in enumerate(self.first):
            unknown = sorted(set(point) - set(self.space))
            if unknown:
                raise ValueError(
                    f"first[{i}] sets {', '.join(unknown)}, which the space does not search: "
                    "name keys of the space only (fixed settings go under fixed)"
                )
        return self

    @model_validator(mode="after")
    def _fixed_apart_from_space(self) -> SweepConfig:
        both = sorted(set(self.fixed) & set(self.space))
        if both:
            raise ValueError(f"{', '.join(both)} is both fixed and searched: keep one")
        return self

    @model_validator(mode="after")
    def _grid_has_finite_space(self) -> SweepConfig:
        if self.sampler.name == "grid":
            floats = [k for k, d in self.space.items() if isinstance(d, FloatRange)]
            if floats:
                raise ValueError(
                    f"the grid sampler needs a finite space: {', '.join(floats)} is a float range "
                    "(give it as a choice of values)"
                )
        return self

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's space: every value of each dimension."""
        return {k: d.values if isinstance(d, IntRange) else d.bounds for k, d in self.space.items()}


def set_key(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the parameter dict ``raw`` with the dotted ``key`` set to ``value``; the key
    must already exist (a search over a key params.yaml does not have is a typo)."""
    out = copy.deepcopy(raw)
    *path, last = key.split(".")
    node = out
    for part in path:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        raise KeyError(key)
    node[last] = value
    return out


def apply_point(base: Params, point: dict[str, Any]) -> Params:
    """``base`` with each dotted key of ``point`` set: the parameters of one trial."""
    raw = base.model_dump()
    for key, value in point.items():
        raw = set_key(raw, key, value)
    return validate_params(raw, "a trial's parameters")


def sweep_base(sweep: SweepConfig, params: Params) -> Params:
    """The parameters every trial starts from: ``params`` with the sweep's fixed settings."""
    return apply_point(params, sweep.fixed)


def check_against(sweep: SweepConfig, base: Params, where: str) -> None:
    """Every key of the space is a key of ``base`` (params.yaml), every bound and choice of it
    gives valid parameters, the run is in the grid, and there is a validation split to judge
    by. One line per problem, before anything runs."""
    if sweep.run.model not in base.models:
        raise PipelineError(
            f"{where}: run.model {sweep.run.model!r} is not a model of params.yaml "
            f"(it has {', '.join(base.models)})",
            "name one of them, or add the model to params.yaml's models section",
        )
    raw = base.model_dump()
    for key, value in sweep.fixed.items():
        raw = _set_known(raw, key, value, where, sweep.run.model, "fixed")
    base = _valid(raw, where, "its fixed settings", "the fixed settings")
    for key, dimension in sweep.space.items():
        for value in dimension.bounds:
            point = _set_known(raw, key, value, where, sweep.run.model, "space")
            _valid(point, where, f"space {key} = {value!r}", f"{key}'s range")
    for i, point in enumerate(sweep.first):
        chosen = raw
        for key, value in point.items():
            chosen = _set_known(chosen, key, value, where, sweep.run.model, f"first[{i}]")
        _valid(chosen, where, f"first[{i}]", f"first[{i}]")
    if base.train.data_parallel > 1 or "train.data_parallel" in sweep.space:
        raise PipelineError(
            f"{where}: a sweep's trials train in one process each, but params.yaml has "
            "train.data_parallel above 1 (or the space varies it)",
            "set train.data_parallel: 1 for the sweep (the pool runs several trials at once)",
        )
    if base.partition.valid == 0 and "partition.valid" not in sweep.space:
        raise PipelineError(
            f"{where}: the objective is the validation loss, but params.yaml's partition.valid "
            "is 0",
            "set partition.valid (e.g. 0.05, taking it from partition.train) in params.yaml "
            "or under the sweep's fixed settings",
        )


def _set_known(
    raw: dict[str, Any], key: str, value: Any, where: str, model: str, section: str
) -> dict[str, Any]:
    """``raw`` with ``key`` set to ``value``, or one line saying the key does not exist."""
    try:
        return set_key(raw, key, value)
    except KeyError:
        raise PipelineError(
            f"{where}: {section} key {key!r} is not a key of params.yaml",
            f"use a dotted path that params.yaml has, e.g. train.lr or models.{model}.num_hiddens "
            "(`rnn params` lists them)",
        ) from None


def _valid(raw: dict[str, Any], where: str, what: str, change: str) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise PipelineError(
            f"{where}: {what} gives " + describe_validation_error(err, "params.yaml"),
            f"change {change} in {where} to values params.yaml accepts",
        ) from None


def load_sweep(path: str | os.PathLike[str], base: Params) -> SweepConfig:
    """Read, validate and check ``path`` against ``base``; every failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"sweep file {path} not found",
            f"write one beside params.yaml (see {SWEEP_FILE} in the repository) or pass --sweep",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise PipelineError(f"{path} is not valid UTF-8 YAML", "fix its syntax") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping (study, space, ...)", f"see {SWEEP_FILE}")
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as err:
        message = describe_validation_error(err, str(path)).replace(
            "invalid parameters", "invalid sweep"
        )
        raise PipelineError(message, f"correct those keys in {path}") from None
    check_against(sweep, base, str(path))
    return sweep
