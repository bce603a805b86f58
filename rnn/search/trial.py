"""A sweep's trial as seen from the training it runs: each finished epoch's validation loss is
reported to the study, and the pruner's verdict stops the training at the end of that epoch.

The training may run in another process or on another machine than the sweep (``dvc exp run``,
an ``rnn-train`` flow run on the pool), so the trial travels by name in the environment:
``RNN_SWEEP_TRIAL`` holds the study and trial number, ``RNN_SWEEP_STORAGE`` the study's storage
(a journal file, or the pool's database URL, which holds a password and so never travels in flow
parameters, records or logs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from rnn.errors import PipelineError, TrialPruned
from rnn.names import SWEEP_STORAGE_ENV, SWEEP_TRIAL_ENV
from rnn.training.schedule import VALID_KEY

PRUNED_AT = "pruned_at_epoch"  # the trial's user attribute: the epoch its pruner stopped it


@dataclass(frozen=True)
class TrialRef:
    study: str
    number: int

    def env(self, storage: str) -> dict[str, str]:
        """The environment a training needs to report to this trial."""
        ref = json.dumps({"study": self.study, "trial": self.number})
        return {SWEEP_TRIAL_ENV: ref, SWEEP_STORAGE_ENV: storage}


def trial_from_env() -> tuple[TrialRef, str] | None:
    raw = os.environ.get(SWEEP_TRIAL_ENV)
    if not raw:
        return None
    storage = os.environ.get(SWEEP_STORAGE_ENV)
    try:
        ref = json.loads(raw)
        trial = TrialRef(str(ref["study"]), int(ref["trial"]))
    except (ValueError, KeyError, TypeError):
        raise PipelineError(
            f"{SWEEP_TRIAL_ENV} is not a sweep trial reference", f"unset {SWEEP_TRIAL_ENV}"
        ) from None
    if not storage:
        raise PipelineError(
            f"{SWEEP_TRIAL_ENV} is set but {SWEEP_STORAGE_ENV} (the study's storage) is not",
            f"set {SWEEP_STORAGE_ENV}, or unset {SWEEP_TRIAL_ENV}",
        )
    return trial, storage


def storage_from_env() -> str:
    """The study's storage named by this machine's environment (the pool's workers have it)."""
    storage = os.environ.get(SWEEP_STORAGE_ENV)
    if not storage:
        raise PipelineError(
            f"this worker has no {SWEEP_STORAGE_ENV} (the sweeps' database) to report a trial to",
            "start the pool's workers with `python -m pool up` (it sets it), or set it by hand",
        )
    return storage


def epoch_reporter(ref: TrialRef, storage: str):
    """An ``on_epoch`` callback (rnn/training/loop.py) that reports each epoch's validation loss
    to trial ``ref`` and raises ``TrialPruned`` when the study's pruner says stop."""
    import optuna

    from rnn.search.space import SweepConfig
    from rnn.search.study import EPOCHS_ATTR, SPACE_ATTR, make_pruner, objective, storage_for

    store = storage_for(storage)
    # the pruner as the sweep declared it, from the study's attributes (read once, not the
    # whole study twice)
    attrs = store.get_study_user_attrs(store.get_study_id_from_name(ref.study))
    sweep = SweepConfig.model_validate(attrs[SPACE_ATTR])
    epochs = int(attrs.get(EPOCHS_ATTR, 1))
    study = optuna.load_study(
        study_name=ref.study, storage=store, pruner=make_pruner(sweep, epochs)
    )
    trial_id = store.get_trial_id_from_study_id_trial_number(study._study_id, ref.number)
    trial = optuna.trial.Trial(study, trial_id)

    def report(run: str, row: dict, total: int) -> None:
        value = objective(row.get(VALID_KEY))
        trial.report(value, row["epoch"])
        if trial.should_prune():
            trial.set_user_attr(PRUNED_AT, row["epoch"])
            raise TrialPruned(ref.study, ref.number, row["epoch"], value)

    return report


def reporter_from_env():
    """The epoch reporter of the trial this process trains for, or None outside a sweep."""
    found = trial_from_env()
    return epoch_reporter(*found) if found else None
