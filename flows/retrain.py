"""Scheduled retraining: bring the data up to date, retrain what changed, evaluate, promote a
model only if its validation perplexity is no worse than the promoted one's, push, and record
the decision as an artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows import dvc_sync
from flows.pipeline import pipeline
from rnn.atomic import atomic_dir
from rnn.lock import workspace_lock
from rnn.workspace import Workspace


def held_out_perplexity(eval_record: dict) -> float:
    """Validation perplexity, or training perplexity when the configuration has no valid split."""
    ppl = eval_record["perplexity"]
    return ppl.get("valid", ppl["train"])


def promote_if_no_worse(ws: Workspace, run: str) -> dict[str, Any]:
    candidate = json.loads((ws.evals / run / "eval.json").read_text())
    new = held_out_perplexity(candidate)
    current_file = ws.promoted / run / "eval.json"
    old = (
        held_out_perplexity(json.loads(current_file.read_text()))
        if current_file.is_file()
        else None
    )
    promote = old is None or new <= old
    if promote:
        with atomic_dir(ws.promoted / run) as tmp:
            shutil.copytree(ws.models / run, tmp, dirs_exist_ok=True)
            shutil.copy2(ws.evals / run / "eval.json", tmp / "eval.json")
    return {
        "run": run,
        "candidate ppl": round(new, 4),
        "promoted ppl": None if old is None else round(old, 4),
        "decision": "promoted" if promote else "kept current",
    }


@flow(name="rnn-retrain", persist_result=True, result_serializer="json", log_prints=True)
def retrain(
    params_file: str = "params.yaml", backend: str | None = None, workdir: str | None = None
) -> dict[str, Any]:
    logger = get_run_logger()
    ws = Workspace.at(workdir or Path.cwd())
    with workspace_lock(ws, f"flow run {flow_run.name!r} ({flow_run.id})"):
        remote = dvc_sync.in_dvc_repo(ws.root) and dvc_sync.connect_remote(ws.root)
        if remote:
            pulled = dvc_sync.run_dvc(ws.root, "pull", "--allow-missing", check=False)
            logger.info("dvc pull: %s", (pulled.stdout or pulled.stderr).strip()[-200:] or "ok")
        result = pipeline(params_file=params_file, backend=backend, workdir=str(ws.root))
        decisions = [promote_if_no_worse(ws, run) for run in result["runs"]]
    create_table_artifact(
        key="rnn-promotion",
        table=decisions,
        description="Promotion decisions (validation perplexity, lower is better)",
    )
    return {"decisions": decisions, "pushed": remote}


if __name__ == "__main__":
    retrain()
