"""The pipeline flow: ingest -> vocabulary -> partition -> train every backend x variant x model
concurrently -> evaluate -> report, with the report published as Prefect artifacts.

Each run holds its workspace (a second run there fails at once, naming this one). Its
parameters become the workspace's params.yaml; in a DVC repository the flow runs only the stages
DVC reports stale, restores from the run-cache (local, and the shared remote's) any stage some
workspace already ran with the same inputs, commits its outputs to dvc.lock (so `dvc repro`
afterwards has nothing to do, and the flow after `dvc repro` reuses its results), pushes outputs,
run-cache and training checkpoints to the remote, and records the run as a DVC experiment in
git origin, where any machine can list, compare and restore it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait
from prefect.runtime import flow_run

import rnn
from flows.plan import (
    DATA_STAGES,
    Stages,
    adopt_params,
    downstream,
    machine_name,
    merge,
    run_data_stages,
    stage_names,
)
from rnn.config import Params
from rnn.errors import PipelineError
from rnn.evaluation.report import CURVES_PNG
from rnn.names import THREADS_ENV as ENGINE_THREADS_ENV
from rnn.registry import grid
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace
from stores import dvc_sync, registry
from stores.checkpoints import collect_finished
from tasks.pictures import show_picture
from tasks.stages import (
    evaluate_task,
    report_task,
    train_task,
)


def share_cores(runs_at_once: int) -> None:
    """Runs trained side by side in one process split its cores: with train.threads null each
    would take them all, and OpenMP threads spinning on oversubscribed cores slow every run
    several-fold. The weights do not depend on it (tests/integration/test_threads.py)."""
    if ENGINE_THREADS_ENV not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        os.environ[ENGINE_THREADS_ENV] = str(max(1, cores // max(1, runs_at_once)))


def train_here(ws, plan, pdict, runs, names, shared) -> tuple[list[dict], list[dict]]:
    """Every run trained side by side in this process (task threads), then evaluated."""
    root = str(ws.root)
    share_cores(len(runs))
    trained = [
        plan.runnable(train_task, stage, ws.model(r)).submit(
            root,
            pdict,
            r.backend,
            r.variant,
            r.model,
            share_checkpoints=shared,
            reuse=plan.reuse(stage),
        )
        for r, stage in zip(runs, names["train"], strict=True)
    ]
    evaluated = []
    for r, stage, t in zip(runs, names["evaluate"], trained, strict=True):
        t.wait()  # its model must be on disk before the run-cache can match the evaluation
        evaluated.append(
            plan.runnable(evaluate_task, stage, ws.eval_of(r)).submit(
                root, pdict, r.backend, r.variant, r.model, reuse=plan.reuse(stage), wait_for=[t]
            )
        )
    wait(evaluated)
    return [t.result() for t in trained], [e.result() for e in evaluated]


def train_on_pool(ws, plan, params: Params, runs, names) -> tuple[list[dict], list[dict]]:
    """Each stale run as an `rnn-train` flow run on the pool, all at once; the data stages are
    pushed first, so they restore there, and the results are restored here from the run-cache."""
    from rnn.evaluation.evaluate import read_eval
    from rnn.store.record import read_record
    from tasks.pool import train_on_worker

    dvc_sync.commit(ws.root, [s for s in DATA_STAGES if plan.needs_work(s)])
    dvc_sync.push(ws.root, list(DATA_STAGES))
    code = dvc_sync.git(ws.root, "rev-parse", "HEAD").stdout.strip()
    pending = [
        r
        for r, t, e in zip(runs, names["train"], names["evaluate"], strict=True)
        if not (plan.reuse(t) and plan.reuse(e))
    ]
    futures = [
        train_on_worker.submit(
            params.model_dump(), r.backend, r.variant, r.model, code, f"{flow_run.name}-{r.name}"
        )
        for r in pending
    ]
    wait(futures)
    on_pool = {f.result()["run"]: f.result() for f in futures}  # raises a run's failure
    dvc_sync.fetch_run_cache(ws.root)
    training, evals = [], []
    for r, t, e in zip(runs, names["train"], names["evaluate"], strict=True):
        if not (plan.reuse(t) and plan.reuse(e)):
            raise PipelineError(
                f"{r.name} finished on the pool but its outputs are not in the remote",
                "check the DVC remote and rerun the pipeline (finished runs are restored)",
            )
        record = read_record(ws.model(r))
        training.append(
            {
                "run": r.name,
                "reused": r.name not in on_pool,
                "train_perplexity": record["train_perplexity"],
                **on_pool.get(r.name, {}),
            }
        )
        evals.append(read_eval(ws.eval_of(r)))
    return training, evals


@flow(name="rnn-pipeline", persist_result=True, result_serializer="json", log_prints=True)
def pipeline(
    params_file: str = "params.yaml",
    backend: str | None = None,
    variant: str | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    workdir: str | None = None,
    record: bool = True,
    fan_out: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline in one workspace (``workdir``, default: the current directory,
    which a deployment run's pull steps make a fresh clone). ``backend``/``variant``/``model``
    restrict the grid to one of each (written into the parameters like any override); ``record``
    saves the
    run as a DVC experiment pushed to git origin; ``fan_out`` trains and evaluates each run of
    the grid as a run of the `rnn-train` deployment on the pool (flows/train.py) instead of here."""
    ws = Workspace.at(workdir or Path.cwd())
    with workspace_lock(ws, f"flow run {flow_run.name!r} ({flow_run.id})"):
        narrowed = {
            k: [v]
            for k, v in (("backends", backend), ("variants", variant), ("models", model))
            if v
        }
        return _pipeline(ws, params_file, narrowed, overrides, record, fan_out)


def _pipeline(
    ws: Workspace,
    params_file: str,
    narrowed: dict[str, list[str]],
    overrides: dict[str, Any] | None,
    record: bool,
    fan_out: bool,
) -> dict[str, Any]:
    logger = get_run_logger()
    # One backend, variant or model is the grid narrowed in the parameters, so that dvc.lock,
    # the report and the recorded experiment all describe exactly the runs this flow run made.
    params = adopt_params(ws, params_file, merge(overrides or {}, {"train": narrowed}))
    runs = grid(params.train.backends, params.train.variants, params.train.models)
    tracked = dvc_sync.in_dvc_repo(ws.root)
    shared = tracked and dvc_sync.connect_remote(ws.root)
    if fan_out and not shared:
        raise PipelineError(
            "fan_out needs a DVC repository with a shared remote: the pool's runs meet there",
            "set RNN_DVC_REMOTE on the workers (python -m pool up --remote URL)",
        )
    if tracked:
        dvc_sync.sync_inputs(ws.root)
    if shared:
        dvc_sync.fetch_run_cache(ws.root)
    names = stage_names(runs)
    plan = Stages(ws, downstream(dvc_sync.stale_stages(ws.root), names) if tracked else None)
    logger.info("pipeline on machine %s in %s; code %s", machine_name(), ws.root, code_dir())

    pdict, root = params.model_dump(), str(ws.root)
    run_data_stages(plan, ws, pdict)
    if fan_out:
        training, evals = train_on_pool(ws, plan, params, runs, names)
    else:
        training, evals = train_here(ws, plan, pdict, runs, names, shared)
    trained_now = [t["run"] for t in training if not t.get("reused")]
    plan.reuse("report")  # restores it where the run-cache has it; rewriting is the same
    rows = report_task(root, runs)
    publish(rows, evals, ws.reports / CURVES_PNG)
    result: dict[str, Any] = {
        "runs": [r["run"] for r in rows],
        "report": rows,
        "workspace": root,
        "code": str(code_dir()),
        "trained": trained_now,
        "training": training,
        "restored": plan.restored,
    }
    result["experiment"] = (
        _record(ws, params, runs, names, plan, shared, record) if tracked else None
    )
    if result["experiment"]:
        result["registered"] = register_trained(ws, result["experiment"], trained_now)
    return result


def code_dir() -> Path:
    """The library this flow run imported: which checkout's code ran."""
    return Path(rnn.__file__).parent


def _record(ws: Workspace, params, runs, names, plan: Stages, shared: bool, record: bool):
    """What a run in a DVC repository leaves behind: dvc.lock for the stages it ran, and with a
    shared remote the outputs pushed, finished checkpoints collected and (``record``) the run
    recorded as a DVC experiment in git origin; returns the experiment's name, if any."""
    logger = get_run_logger()
    done = [*DATA_STAGES, *names["train"], *names["evaluate"], "report"]
    ran = [s for s in done if plan.needs_work(s)]
    dvc_sync.commit(ws.root, ran)
    logger.info("dvc.lock updated for %d stages", len(ran))
    if not shared:
        return None
    logger.info("dvc push: %s", dvc_sync.push(ws.root, done))
    collect_finished(ws.root, params, runs)  # the models are pushed: nothing resumes
    if not record:
        return None
    name = experiment_name()
    pushed = dvc_sync.record_experiment(ws.root, name, done)
    where = " in git origin" if pushed else " (no git origin to push it to)"
    logger.info("recorded as experiment %s%s", name, where)
    return name


def register_trained(ws: Workspace, experiment: str, trained: list[str]) -> dict[str, str]:
    """Each model this run trained, registered as a version of the model registry at the run's
    experiment commit (stores/registry.py); the models dvc.yaml does not declare are named in the
    log. Returns model -> version."""
    logger = get_run_logger()
    declared = registry.declared(ws.root)
    missing = sorted(set(trained) - declared)
    if missing:
        logger.warning(
            "not registered (not artifacts of dvc.yaml): %s; run `rnn artifacts --write`",
            ", ".join(missing),
        )
    to_register = [run for run in trained if run in declared]
    if not to_register:
        return {}
    commit = registry.experiment_commit(ws.root, experiment)
    versions = {run: registry.register(ws.root, run, commit).version for run in to_register}
    logger.info("registered %s", ", ".join(f"{r} {v}" for r, v in versions.items()))
    return versions


def experiment_name() -> str:
    """The flow run's name and id: readable, and unique across every machine's runs."""
    return f"{flow_run.name}-{str(flow_run.id)[:8]}"


def publish(rows: list[dict], evals: list[dict], curves: Path) -> None:
    """The comparison as Prefect artifacts: a table, the perplexity curves of every run as a
    picture (tasks/pictures.py) and the generated samples."""
    create_table_artifact(
        key="rnn-comparison",
        table=[
            {
                "run": r["run"],
                "train ppl": round(r["train_perplexity"], 3),
                "valid ppl": None
                if r["valid_perplexity"] is None
                else round(r["valid_perplexity"], 3),
                "test ppl": None
                if r["test_perplexity"] is None
                else round(r["test_perplexity"], 3),
                "model": r["model"],
                "tokens/s": round(r["tokens_per_s"]),
                "wall time (s)": round(r["wall_time_s"], 1),
                "parameters": r["num_params"],
            }
            for r in rows
        ],
        description="Perplexities, throughput and wall time per backend x variant",
    )
    if curves.is_file():
        show_picture(
            "rnn-curves",
            "Perplexity per epoch",
            curves.read_bytes(),
            "Train (solid) and validation (dashed) perplexity of every run of the grid.",
            "The comparison's perplexity curves",
        )
    lines = ["# Samples", ""]
    for e in evals:
        for prefix, text in e["samples"].items():
            lines.append(f"- **{e['run']}** ({prefix!r}): `{text}`")
    create_markdown_artifact(
        key="rnn-samples",
        markdown="\n".join(lines),
        description="Text generated by each trained model",
    )


if __name__ == "__main__":
    pipeline()
