"""Scheduled retraining: pull the newest code (the deployment clones origin's tip) and data,
retrain only what changed (everything else is restored from the DVC run-cache), evaluate,
register each model as a version of the model registry, and promote each whose held-out
perplexity is better than what ``prod`` holds (a model prod already holds, restored rather than
retrained, stays as it is): GTO tags on the run's recorded experiment,
pushed to origin (stores/registry.py), so every worker and the next run see it, the history is
kept, and the weights it names are in the DVC remote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.pipeline import pipeline
from flows.plan import machine_name
from rnn.errors import PipelineError
from rnn.evaluation.evaluate import read_eval
from rnn.names import PROMOTED_EVENT
from rnn.workspace import Workspace
from stores import dvc_sync, registry


def held_out_perplexity(eval_record: dict) -> float:
    """Validation perplexity, or training perplexity when the configuration has no valid split."""
    ppl = eval_record["perplexity"]
    return ppl.get("valid", ppl["train"])


def decide(ws: Workspace, run: str, experiment: str) -> dict[str, Any]:
    """``run``'s model from ``experiment`` (its version: registered by the pipeline run if
    trained, else the one that recorded the same model) given ``prod`` if better than prod's."""
    candidate = held_out_perplexity(read_eval(ws.evals / run))
    version = registry.register(ws.root, run, registry.experiment_commit(ws.root, experiment))
    held = registry.current(ws.root, run, registry.PROD)
    record = None if held is None else registry.eval_at(ws.root, held[0])
    old = None if record is None else held_out_perplexity(record)
    decision = "kept current"
    if held is not None and held[0] == version:
        decision = "kept current (prod holds this model)"
    elif old is None or candidate < old:
        won = registry.assign(ws.root, run, version, registry.PROD)
        decision = "promoted" if won else "kept current (another run promoted first)"
        if won:
            announce_promotion(run, version.version, candidate, held and held[0].version, old)
    return {
        "run": run,
        "version": version.version,
        "candidate ppl": round(candidate, 4),
        "prod": None if held is None else held[0].version,
        "prod ppl": None if old is None else round(old, 4),
        "decision": decision,
        "experiment": experiment,
    }


def announce_promotion(
    run: str, version: str, perplexity: float, previous_version: str | None, previous: float | None
) -> None:
    """The promotion as a Prefect event (PROMOTED_EVENT): the pool's alerts (pool/alerts.py)
    send it to the webhook."""
    from prefect.events import emit_event

    emit_event(
        event=PROMOTED_EVENT,
        resource={"prefect.resource.id": f"rnn.model.{run}", "prefect.resource.name": run},
        payload={
            "version": version,
            "perplexity": round(perplexity, 4),
            "previous_version": previous_version,
            "previous_perplexity": None if previous is None else round(previous, 4),
        },
    )


@flow(name="rnn-retrain", persist_result=True, result_serializer="json", log_prints=True)
def retrain(
    params_file: str = "params.yaml",
    backend: str | None = None,
    workdir: str | None = None,
    fan_out: bool = False,
) -> dict[str, Any]:
    logger = get_run_logger()
    ws = Workspace.at(workdir or Path.cwd())
    if not dvc_sync.in_dvc_repo(ws.root):
        raise PipelineError(f"{ws.root} is not a DVC repository", "retrain runs in a clone")
    logger.info("retraining on machine %s in %s", machine_name(), ws.root)
    registry.fetch_tags(ws.root)
    result = pipeline(
        params_file=params_file, backend=backend, workdir=str(ws.root), fan_out=fan_out
    )
    experiment = result["experiment"]
    if experiment is None:
        raise PipelineError("the run was not recorded as an experiment", "configure a DVC remote")
    decisions = [decide(ws, run, experiment) for run in result["runs"]]
    for d in decisions:
        logger.info(
            "%s %s: %s (candidate %s, prod %s %s)",
            d["run"],
            d["version"],
            d["decision"],
            d["candidate ppl"],
            d["prod"],
            d["prod ppl"],
        )
    create_table_artifact(
        key="rnn-promotion",
        table=decisions,
        description="Promotion decisions (validation perplexity, lower is better)",
    )
    return {"decisions": decisions, "experiment": experiment}


if __name__ == "__main__":
    retrain()
