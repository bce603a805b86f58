"""The study behind a sweep (Optuna): its storage, sampler and pruner as ``sweep.yaml`` says, the
trials' parameters drawn from the space, and the study's trials as rows for the report.

Storage: on one machine a journal file (Optuna's ``JournalFileBackend``: an append-only log of
operations, so a process killed mid-write loses at most its last line, and readable by several
processes at once); on the pool the pool's PostgreSQL (Optuna's RDB storage), which every worker
reaches and which outlives any process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

from rnn.errors import PipelineError
from rnn.search.space import Choice, FloatRange, IntRange, SweepConfig

SPACE_ATTR = "sweep"  # the study's record of the sweep that created it
EPOCHS_ATTR = "epochs"  # train.epochs: Hyperband's largest budget
INTERRUPTED = "interrupted"  # a trial whose process died or was stopped: rerun as a new one
# a trial's user attributes
REASON = "reason"  # why it failed, in one line
EXPERIMENT = "experiment"  # the DVC experiment it is recorded as
SAMPLES = "samples"  # its model's generated text, per prefix
optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_for(where: str | Path) -> optuna.storages.BaseStorage:
    """A database URL (``postgresql+psycopg://...``) as Optuna's RDB storage; anything else is
    a journal file's path."""
    text = str(where)
    if "://" in text:
        return optuna.storages.RDBStorage(text, engine_kwargs={"pool_pre_ping": True})
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    )


def make_sampler(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    cfg = sweep.sampler
    if cfg.name == "grid":
        return optuna.samplers.GridSampler(sweep.grid(), seed=cfg.seed)
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)


def make_pruner(sweep: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    cfg = sweep.pruner
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_epochs,
            max_resource=max(epochs, cfg.min_epochs),
            reduction_factor=cfg.reduction_factor,
        )
    if cfg.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_epochs, reduction_factor=cfg.reduction_factor
        )
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    return optuna.pruners.NopPruner()


def open_study(sweep: SweepConfig, storage: optuna.storages.BaseStorage, epochs: int):
    """The sweep's study, created on first use and continued after: a rerun of the same sweep
    picks up where the last stopped. A study of that name made from another space is refused
    (its trials would not be comparable). ``epochs``: what each trial trains (Hyperband's
    largest budget)."""
    study = optuna.create_study(
        study_name=sweep.study,
        storage=storage,
        sampler=make_sampler(sweep),
        pruner=make_pruner(sweep, epochs),
        direction="minimize",
        load_if_exists=True,
    )
    recorded = study.user_attrs.get(SPACE_ATTR)
    mine = sweep.model_dump(mode="json", by_alias=True)
    if recorded is not None and _identity(recorded) != _identity(mine):
        raise PipelineError(
            f"study {sweep.study!r} already exists with another run or space",
            "name a new study in sweep.yaml (study: ...), or put the space back as it was",
        )
    if recorded is None and not study.get_trials(deepcopy=False):
        for point in sweep.first:  # a new study: the sweep's own points before any drawn
            study.enqueue_trial(point)
    # the trainings rebuild the pruner from these (rnn/search/trial.py), wherever they run
    study.set_user_attr(SPACE_ATTR, mine)
    study.set_user_attr(EPOCHS_ATTR, epochs)
    return study


def _identity(recorded: dict[str, Any]) -> tuple:
    return recorded.get("run"), recorded.get("space")


def suggest(trial: optuna.trial.BaseTrial, sweep: SweepConfig) -> dict[str, Any]:
    """The trial's point of the space, one value per dotted key."""
    point: dict[str, Any] = {}
    for key, d in sweep.space.items():
        if isinstance(d, FloatRange):
            point[key] = trial.suggest_float(key, *d.float_, log=d.log)
        elif isinstance(d, IntRange):
            point[key] = trial.suggest_int(key, *d.int_, log=d.log, step=d.step)
        elif isinstance(d, Choice):
            point[key] = trial.suggest_categorical(key, d.choice)
    return point


def experiment_name(study: str, number: int) -> str:
    return f"{study}-{number}"


def narrowed_point(sweep: SweepConfig, point: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings over params.yaml: the sweep's fixed ones, its point, and the grid
    narrowed to the sweep's run."""
    run = sweep.run
    return {
        **sweep.fixed,
        **point,
        "train.backends": [run.backend],
        "train.variants": [run.variant],
        "train.models": [run.model],
    }


def finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: every ending but an interruption."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.user_attrs.get(REASON) != INTERRUPTED
    )


def objective(valid_perplexity: float | None) -> float:
    """The validation loss in nats (the log of the perplexity); lower is better."""
    if valid_perplexity is None or not math.isfinite(valid_perplexity) or valid_perplexity <= 0:
        return math.inf
    return math.log(valid_perplexity)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial with its parameters, objective, epochs reported, state and wall time, the
    best first (complete ones by objective, then pruned, running, failed)."""
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    rows = []
    for t in study.get_trials(deepcopy=False):
        wall = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "objective": t.value,
                "epochs": max(t.intermediate_values, default=0),
                "wall_s": wall,
                "params": dict(t.params),
                "reason": t.user_attrs.get(REASON, ""),
                "experiment": t.user_attrs.get(EXPERIMENT, ""),
            }
        )
    rows.sort(
        key=lambda r: (
            order.get(r["state"].upper(), 5),
            r["objective"] if r["objective"] is not None else math.inf,
            r["trial"],
        )
    )
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best complete trial of ``trial_rows``' rows, if any."""
    return next((r for r in rows if r["state"] == "complete"), None)


def best_samples(study: optuna.Study, best: dict[str, Any] | None) -> dict[str, str]:
    """The text the best trial's model generated, per prefix (recorded with its result)."""
    if best is None:
        return {}
    return dict(study.trials[best["trial"]].user_attrs.get(SAMPLES, {}))
