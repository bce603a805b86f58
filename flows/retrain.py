"""Scheduled retraining: pull the newest code (the deployment clones origin's tip) and data,
retrain only what changed (everything else is restored from the DVC run-cache), evaluate, and
promote each model whose held-out perplexity is no worse than the promoted one's. A promotion
is a git tag on the run's recorded experiment, pushed to origin (stores/promotion.py): every
worker and the next run see it, and the weights it names are in the DVC remote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.pipeline import pipeline
from flows.plan import machine_name
from rnn.errors import PipelineError
from rnn.evaluation.evaluate import read_eval
from rnn.workspace import Workspace
from stores import dvc_sync, promotion


def held_out_perplexity(eval_record: dict) -> float:
    """Validation perplexity, or training perplexity when the configuration has no valid split."""
    ppl = eval_record["perplexity"]
    return ppl.get("valid", ppl["train"])


def decide(ws: Workspace, run: str, experiment: str) -> dict[str, Any]:
    candidate = held_out_perplexity(read_eval(ws.evals / run))
    current = promotion.promoted_eval(ws.root, run)
    old = None if current is None else held_out_perplexity(current)
    decision = "kept current"
    if old is None or candidate <= old:
        commit = promotion.experiment_commit(ws.root, experiment)
        expected = promotion.promoted_commit(ws.root, run)
        won = promotion.promote(ws.root, run, commit, expected)
        decision = "promoted" if won else "kept current (another run promoted first)"
    return {
        "run": run,
        "candidate ppl": round(candidate, 4),
        "promoted ppl": None if old is None else round(old, 4),
        "decision": decision,
        "experiment": experiment,
    }


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
    promotion.fetch_promotions(ws.root)
    result = pipeline(
        params_file=params_file, backend=backend, workdir=str(ws.root), fan_out=fan_out
    )
    experiment = result["experiment"]
    if experiment is None:
        raise PipelineError("the run was not recorded as an experiment", "configure a DVC remote")
    decisions = [decide(ws, run, experiment) for run in result["runs"]]
    for d in decisions:
        logger.info(
            "%s: %s (candidate %s, promoted %s)",
            d["run"],
            d["decision"],
            d["candidate ppl"],
            d["promoted ppl"],
        )
    create_table_artifact(
        key="rnn-promotion",
        table=decisions,
        description="Promotion decisions (validation perplexity, lower is better)",
    )
    return {"decisions": decisions, "experiment": experiment}


if __name__ == "__main__":
    retrain()
