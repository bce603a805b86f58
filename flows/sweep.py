"""The sweep flow, deployed as `rnn-sweep/pool`: a search over sweep.yaml's space whose trials are
`rnn-train` runs on the pool.

The study lives in the pool's PostgreSQL (Optuna's RDB storage), whose URL the workers have in
their environment (``RNN_SWEEP_STORAGE``: it holds a password, so it never travels in flow
parameters, results or logs). The flow keeps as many trials in flight as the pool has training
slots. Each trial is an `rnn-train` flow run named ``<study>-<trial>`` with the trial's
parameters; it reports every epoch's validation loss to the study and ends in a state of its own,
Pruned, when the pruner stops it. A finished trial is restored here from the DVC run-cache and
recorded as the DVC experiment ``<study>-<trial>`` on origin, like a pipeline run: `dvc exp show`
lists it, `dvc exp apply` + `dvc repro` reproduce it.

Crashes: a training whose worker died ends Crashed and is started again, resuming from its pushed
checkpoint. Each training run is created with an idempotency key (the study's id, the trial, the
attempt), so the sweep flow killed and started again re-attaches to the trainings still running
instead of starting them twice, and no trial is lost. Run one sweep flow per study at a time.

    prefect deployment run rnn-sweep/pool                       # sweep.yaml's search
    prefect deployment run rnn-sweep/pool --param trials=4      # end after 4 trials
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.plan import (
    DATA_STAGES,
    Stages,
    adopt_params,
    downstream,
    run_data_stages,
    stage_names,
)
from flows.train import PRUNED
from rnn.config import Params, load_params
from rnn.errors import PipelineError
from rnn.names import TRAINING_LIMIT
from rnn.registry import RunKey
from rnn.search.space import SWEEP_FILE, SweepConfig, apply_point, load_sweep, sweep_base
from rnn.search.study import (
    EXPERIMENT,
    REASON,
    SAMPLES,
    best_row,
    best_samples,
    experiment_name,
    finished,
    narrowed_point,
    objective,
    open_study,
    storage_for,
    suggest,
    trial_rows,
)
from rnn.search.trial import storage_from_env
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace
from stores import dvc_sync
from tasks.pictures import markdown_image
from tasks.pool import TRAIN_DEPLOYMENT, training_queue
from tasks.stages import report_task

FLOW_RUN = "flow_run"  # a trial's user attribute: its (latest) training flow run's id
ATTEMPT = "attempt"  # ... and how many times that training was started again after a crash
STUDY_KEY = "key"  # the study's own attribute: a random id, so that idempotency keys of a new
# study of an old name never meet the old one's training runs
CRASH_RETRIES = 2
POLL_S = 2.0
Ending = dict[str, Any]  # {"state": complete | pruned | failed, "message", "flow_run"}


@flow(name="rnn-sweep", persist_result=True, result_serializer="json", log_prints=True)
def sweep(
    sweep_file: str = SWEEP_FILE,
    params_file: str = "params.yaml",
    trials: int | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Search ``sweep_file``'s space over ``params_file`` (both relative to the workspace, a
    fresh clone of origin) until ``trials`` (default: the sweep's) have ended or its time budget
    is spent; a rerun continues the same study. Returns every trial, the best first."""
    ws = Workspace.at(workdir or Path.cwd())
    with workspace_lock(ws, f"flow run {flow_run.name!r} ({flow_run.id})"):
        return _sweep(ws, sweep_file, params_file, trials)


def _sweep(ws: Workspace, sweep_file: str, params_file: str, trials: int | None) -> dict:
    logger = get_run_logger()
    params = load_params(ws.inside(params_file, "params_file"))
    search = load_sweep(ws.inside(sweep_file, "sweep_file"), params)
    if not (dvc_sync.in_dvc_repo(ws.root) and dvc_sync.connect_remote(ws.root)):
        raise PipelineError(
            "a sweep on the pool needs a DVC repository with a shared remote: its trials meet there",
            "set RNN_DVC_REMOTE on the workers (python -m pool up --remote URL)",
        )
    epochs = sweep_base(search, params).train.epochs
    study = open_study(search, storage_for(storage_from_env()), epochs)
    if STUDY_KEY not in study.user_attrs:
        import uuid

        study.set_user_attr(STUDY_KEY, uuid.uuid4().hex[:12])
    code = dvc_sync.git(ws.root, "rev-parse", "HEAD").stdout.strip()
    prepare_data(ws, params_file, params, search)
    slots = training_slots()
    budget = trials or search.trials
    deadline = time.monotonic() + search.timeout_s if search.timeout_s else None
    logger.info(
        "sweep %s: %d trials, %d at a time, code %s", search.study, budget, slots, code[:12]
    )
    progress = Progress(search.study, budget)
    in_flight = {
        t.number: submit(search, study, params, t.number, t.params, code)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    }
    if in_flight:
        logger.info("re-attached to trial(s) %s, still training", sorted(in_flight))
    while True:
        for number in [n for n, f in in_flight.items() if f.wrapped_future.done()]:
            settle(ws, params_file, params, search, study, number, in_flight.pop(number))
            progress.show(study)
        more = finished(study) + len(in_flight) < budget
        if more and (deadline is None or time.monotonic() < deadline) and len(in_flight) < slots:
            trial = study.ask()
            point = suggest(trial, search)
            trial.set_user_attr(EXPERIMENT, experiment_name(search.study, trial.number))
            logger.info("trial %d: %s", trial.number, point)
            try:
                in_flight[trial.number] = submit(search, study, params, trial.number, point, code)
            except PipelineError as err:  # a point the space allows but params.yaml does not
                fail(study, trial.number, str(err))
            continue
        if not in_flight:
            break
        time.sleep(POLL_S)
    return publish(ws, search, study)


def trial_params(params: Params, search: SweepConfig, point: dict[str, Any]) -> Params:
    """A trial's whole parameters: params.yaml as the sweep started from it (the workspace's file
    is each recorded trial's in turn) with the sweep's fixed settings, the point and the grid
    narrowed to the sweep's run."""
    return apply_point(params, narrowed_point(search, point))


def training_slots() -> int:
    """How many trainings the pool runs at once: its training limit's size."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return max(1, client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).limit)


def prepare_data(ws: Workspace, params_file: str, params: Params, search: SweepConfig) -> None:
    """The data stages with the sweep's fixed settings, run or restored here and pushed, so that
    every trial restores them instead of computing them again."""
    adopted = adopt_params(ws, params_file, trial_params(params, search, {}).model_dump())
    dvc_sync.fetch_run_cache(ws.root)
    plan = Stages(ws, downstream(dvc_sync.stale_stages(ws.root), stage_names([])))
    run_data_stages(plan, ws, adopted.model_dump())
    dvc_sync.commit(ws.root, [s for s in DATA_STAGES if plan.needs_work(s)])
    dvc_sync.push(ws.root, list(DATA_STAGES))


def submit(
    search: SweepConfig, study: optuna.Study, params: Params, number: int, point: dict, code: str
):
    """The trial's training on the pool, as a task waiting in a thread of this flow run."""
    return train_trial.submit(
        search.study,
        number,
        trial_params(params, search, point).model_dump(),
        code,
        f"{study.user_attrs[STUDY_KEY]}-{number}",
        int(trial_handle(study, number).user_attrs.get(ATTEMPT, 0)),
    )


def trial_handle(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """Trial ``number`` of ``study``, to read and set its attributes (one trial read, not all)."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def fail(study: optuna.Study, number: int, reason: str) -> None:
    """Trial ``number`` ended failed, with its reason in one line."""
    reason = " ".join(reason.split())[:500]
    trial_handle(study, number).set_user_attr(REASON, reason)
    study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    get_run_logger().warning("trial %d: failed: %s", number, reason)


@task(name="trial", task_run_name="trial-{number}", persist_result=True, result_serializer="json")
def train_trial(
    study: str, number: int, params: dict[str, Any], code: str, key: str, attempt: int
) -> Ending:
    """Start the trial's `rnn-train` run (or find the one already started: the idempotency key)
    and wait for it to end; a crashed one is started again, on any live worker, from its last
    pushed checkpoint."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    run = params["train"]
    trial = trial_handle(
        optuna.load_study(study_name=study, storage=storage_for(storage_from_env())), number
    )
    while True:
        child = run_deployment(
            TRAIN_DEPLOYMENT,
            parameters={
                "backend": run["backends"][0],
                "variant": run["variants"][0],
                "model": run["models"][0],
                "params": params,
                "code": code,
                "trial": {"study": study, "trial": number},
            },
            flow_run_name=experiment_name(study, number) + (f"-retry{attempt}" if attempt else ""),
            idempotency_key=f"{key}-{attempt}",
            work_queue_name=training_queue(params),
            timeout=0,
        )
        trial.set_user_attr(FLOW_RUN, str(child.id))
        state = _wait(child.id)
        if state.is_crashed() and attempt < CRASH_RETRIES:
            attempt += 1
            trial.set_user_attr(ATTEMPT, attempt)
            logger.warning(
                "trial %d: flow run %s crashed (%s); starting it again from its last pushed "
                "checkpoint",
                number,
                child.name,
                state.message,
            )
            continue
        if state.name == PRUNED:
            ending = "pruned"
        elif state.is_completed():
            ending = "complete"
        else:
            ending = "failed"
        message = state.message or state.name
        return {"state": ending, "message": message, "flow_run": str(child.id)}


def _wait(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            time.sleep(POLL_S)


def settle(
    ws: Workspace,
    params_file: str,
    params: Params,
    search: SweepConfig,
    study: optuna.Study,
    number: int,
    future,
) -> None:
    """Tell the study how trial ``number`` ended: a complete one recorded as a DVC experiment
    first (its value is the recorded evaluation's), a pruned one as pruned, anything else
    failed with its one-line reason."""
    logger = get_run_logger()
    try:
        ending = future.result()
    except Exception as err:  # the trial's task itself failed: the trial failed, the sweep goes on
        ending = {"state": "failed", "message": f"{type(err).__name__}: {err}"}
    if ending["state"] == "complete":
        trial = trial_handle(study, number)
        try:
            value, samples = record_trial(ws, params_file, params, search, number, trial.params)
        except PipelineError as err:
            ending = {"state": "failed", "message": str(err)}
        else:
            trial.set_user_attr(SAMPLES, samples)
            study.tell(number, value, skip_if_finished=True)
            logger.info("trial %d: complete, validation loss %.4f", number, value)
            return
    if ending["state"] == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        logger.info("trial %d: %s", number, ending["message"])
        return
    fail(study, number, str(ending["message"]))


def record_trial(
    ws: Workspace, params_file: str, params: Params, search: SweepConfig, number: int, point: dict
) -> tuple[float, dict[str, str]]:
    """A trial trained on the pool made a run of this workspace: its parameters adopted, its
    stages restored from the run-cache, dvc.lock committed, the whole pushed and recorded as the
    experiment ``<study>-<trial>`` on origin. Returns its objective and samples."""
    from rnn.evaluation.evaluate import read_eval

    run = RunKey(search.run.backend, search.run.variant, search.run.model)
    adopt_params(ws, params_file, trial_params(params, search, point).model_dump())
    dvc_sync.fetch_run_cache(ws.root)
    names = stage_names([run])
    plan = Stages(ws, downstream(dvc_sync.stale_stages(ws.root), names))
    done = [*DATA_STAGES, *names["train"], *names["evaluate"]]
    missing = [s for s in done if not plan.reuse(s)]
    if missing:
        raise PipelineError(
            f"trial {number} finished on the pool but {', '.join(missing)} is not in the "
            "DVC remote's run-cache",
            "check the DVC remote the workers share, then rerun the sweep",
        )
    report_task(str(ws.root), [run])
    done.append("report")
    dvc_sync.commit(ws.root, [s for s in done if plan.needs_work(s)])
    dvc_sync.push(ws.root, done)
    dvc_sync.record_experiment(ws.root, experiment_name(search.study, number), done)
    evaluated = read_eval(ws.eval_of(run))
    return objective(evaluated["perplexity"].get("valid")), dict(evaluated.get("samples", {}))


class Progress:
    """Trials done, pruned, failed and running, and the best so far: a log line and a Prefect
    progress artifact, after every trial that ends."""

    def __init__(self, study: str, budget: int) -> None:
        self.budget = budget
        self.artifact = create_progress_artifact(
            0.0, key=f"sweep-{study.lower().replace('_', '-').replace('.', '-')}",
            description=f"sweep {study}: trials ended, percent of {budget}",
        )  # fmt: skip

    def show(self, study: optuna.Study) -> None:
        from rnn.search.report import progress_line

        get_run_logger().info("progress: %s", progress_line(trial_rows(study)))
        update_progress_artifact(self.artifact, min(100.0, 100.0 * finished(study) / self.budget))


def publish(ws: Workspace, search: SweepConfig, study: optuna.Study) -> dict[str, Any]:
    """The sweep side by side: the report's files in the workspace, a Prefect table of every
    trial and a markdown artifact with the report and its plots; returns the flow's result."""
    from rnn.search.report import (
        HISTORY_PNG,
        IMPORTANCE_PNG,
        PARAMS_PNG,
        importances,
        write_report,
    )

    rows = trial_rows(study)
    best = best_row(rows)
    weights = importances(study)
    out = ws.root / "sweeps" / search.study / "report"
    report = write_report(rows, search.study, best_samples(study, best), weights, out)
    create_table_artifact(
        key="rnn-sweep-trials",
        table=[
            {
                "trial": r["trial"],
                "state": r["state"],
                "validation loss": r["objective"],
                "epochs": r["epochs"],
                "wall s": None if r["wall_s"] is None else round(r["wall_s"], 1),
                **r["params"],
                "experiment / reason": r["experiment"] if r["state"] == "complete" else r["reason"],
            }
            for r in rows
        ],
        description=f"sweep {search.study}: every trial, the best first",
    )
    plots = [
        markdown_image((out / name).read_bytes(), name)
        for name in (HISTORY_PNG, PARAMS_PNG, IMPORTANCE_PNG)
        if (out / name).is_file()
    ]
    create_markdown_artifact(
        key="rnn-sweep-report",
        markdown="\n\n".join([report.read_text(), *plots]),
        description=f"sweep {search.study}: the report and its plots",
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"study": search.study, "best": best, "trials": counts, "rows": rows}
