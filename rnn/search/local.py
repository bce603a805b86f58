"""`rnn sweep`: a sweep on one machine, each trial a DVC experiment.

Each trial is ``dvc exp run --temp`` with the trial's point set (``-S key=value``) and the grid
narrowed to the sweep's run: DVC trains it in a temporary copy of the workspace, records it as an
experiment named ``<study>-<trial>`` (``dvc exp show`` lists it; ``dvc exp apply`` and ``dvc
repro`` reproduce it), and the training reports each epoch to the study (rnn/search/trial.py). The
study lives in a journal file, ``sweeps/<study>/journal.log``: a rerun continues it. A trial whose
sweep died (Ctrl-C, a kill) is marked failed as interrupted and its point is tried again first,
so every point ends with one result. (The retry trains from epoch 0: a trial's checkpoints live
in DVC's temporary copy of the workspace, which goes with it.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnn.config import Params
from rnn.errors import PipelineError
from rnn.registry import RunKey
from rnn.search.space import SweepConfig, apply_point, sweep_base
from rnn.search.study import (
    EXPERIMENT,
    INTERRUPTED,
    REASON,
    SAMPLES,
    best_row,
    best_samples,
    experiment_name,
    finished,
    narrowed_point,
    open_study,
    storage_for,
    suggest,
    trial_rows,
)
from rnn.search.trial import PRUNED_AT, TrialRef
from rnn.store.dvc_cli import dvc_command

SWEEPS_DIR = "sweeps"  # gitignored: the study and its report, per study


@dataclass
class SweepResult:
    study: str
    storage: str
    best: dict[str, Any] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)  # the best trial's, per prefix
    importances: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(row["state"] for row in self.rows))


def sweep_dir(root: Path, study: str) -> Path:
    return root / SWEEPS_DIR / study


def journal_path(root: Path, study: str) -> Path:
    return sweep_dir(root, study) / "journal.log"


def recover_interrupted(study) -> int:
    """Trials left running by a sweep that died: failed as interrupted, their points queued to
    run first. Returns how many."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, REASON, INTERRUPTED)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
    return len(stale)


def run_trial(root: Path, sweep: SweepConfig, number: int, point: dict, storage: str):
    """One ``dvc exp run --temp``; returns the completed process. In a process group of its own,
    so that Ctrl-C reaches DVC and the training once, through here, and the sweep waits for them
    to stop cleanly (DVC removes its temporary copy)."""
    name = experiment_name(sweep.study, number)
    cmd = [*dvc_command(), "exp", "run", "--temp", "-n", name]
    for key, value in narrowed_point(sweep, point).items():
        cmd += ["-S", f"{key}={json.dumps(value)}"]
    env = {**os.environ, **TrialRef(sweep.study, number).env(storage)}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:
        stop_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_group(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """Ctrl-C to the trial's process group, then SIGKILL if it has not ended within ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def experiment_eval(root: Path, name: str, run: RunKey) -> dict:
    """The trial's eval.json, read from its experiment's commit (git-tracked: ``cache: false``)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        raise PipelineError(f"experiment {name} was not recorded", "see `dvc exp show`")
    shown = subprocess.run(
        ["git", "show", f"{ref}:data/eval/{run.name}/eval.json"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(shown)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:500]


def run_sweep(
    root: Path, params: Params, sweep: SweepConfig, trials: int | None = None, log=print
) -> SweepResult:
    """Run ``sweep`` in the project at ``root`` until ``trials`` (default: the sweep's) have
    ended or its time budget is spent; returns every trial of the study."""
    import optuna

    from rnn.search.study import objective

    storage = str(journal_path(root, sweep.study))
    study = open_study(sweep, storage_for(storage), sweep_base(sweep, params).train.epochs)
    if recovered := recover_interrupted(study):
        log(f"{recovered} interrupted trial(s) of {sweep.study} queued to run again")
    budget = trials or sweep.trials
    deadline = time.monotonic() + sweep.timeout_s if sweep.timeout_s else None
    run = RunKey(sweep.run.backend, sweep.run.variant, sweep.run.model)
    while finished(study) < budget and (deadline is None or time.monotonic() < deadline):
        trial = study.ask()
        point = suggest(trial, sweep)
        apply_point(params, {**sweep.fixed, **point})  # valid: checked, not assumed
        name = experiment_name(sweep.study, trial.number)
        trial.set_user_attr(EXPERIMENT, name)
        log(f"trial {trial.number}: {point}")
        try:
            done = run_trial(root, sweep, trial.number, point, storage)
        except KeyboardInterrupt:
            recover_interrupted(study)
            raise
        fresh = study._storage.get_trial(trial._trial_id)
        if done.returncode == 0:
            evaluated = experiment_eval(root, name, run)
            trial.set_user_attr(SAMPLES, evaluated.get("samples", {}))
            value = objective(evaluated["perplexity"].get("valid"))
            study.tell(trial, value)
            log(f"trial {trial.number}: complete, validation loss {value:.4f} ({name})")
        elif PRUNED_AT in fresh.user_attrs:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log(f"trial {trial.number}: pruned after epoch {fresh.user_attrs[PRUNED_AT]}")
        else:
            reason = last_line(done.stderr + done.stdout)
            trial.set_user_attr(REASON, reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log(f"trial {trial.number}: failed: {reason}")
    from rnn.search.report import importances

    rows = trial_rows(study)
    best = best_row(rows)
    return SweepResult(
        sweep.study, storage, best, rows, best_samples(study, best), importances(study)
    )
