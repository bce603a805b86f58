"""Start one training on the pool as a run of the `rnn-train` deployment and wait for it.

A run that ends Crashed (its worker or machine died; the zombie automation marks a silent run
Crashed) is started again, so any live worker picks it up and resumes from the checkpoint the
dead one pushed; a run that Failed (an error in the training itself) is not retried.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from rnn.names import TRAINING_GPU_QUEUE, TRAINING_QUEUE, wants_gpu
from rnn.registry import RunKey

TRAIN_DEPLOYMENT = "rnn-train/default"


def training_queue(params: dict[str, Any]) -> str:
    """The pool's queue for a training with ``params``: GPU machines take train.device cuda."""
    return TRAINING_GPU_QUEUE if wants_gpu(params["train"]["device"]) else TRAINING_QUEUE


CRASH_RETRIES = 2


class TrainingCrashed(RuntimeError):
    """The training's flow run crashed: worth starting again elsewhere."""


def _retry_crashes_only(task, task_run, state) -> bool:
    try:
        state.result()
    except TrainingCrashed:
        return True
    except Exception:
        return False
    return False


@task(
    name="train-on-pool",
    task_run_name="train-on-pool-{backend}-{variant}-{model}",
    retries=CRASH_RETRIES,
    retry_condition_fn=_retry_crashes_only,
    persist_result=True,
    result_serializer="json",
)
def train_on_worker(
    params: dict[str, Any], backend: str, variant: str, model: str, code: str, run_label: str
) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    child = run_deployment(
        TRAIN_DEPLOYMENT,
        parameters={
            "backend": backend,
            "variant": variant,
            "model": model,
            "params": params,
            "code": code,
        },
        flow_run_name=run_label,
        work_queue_name=training_queue(params),
        timeout=None,  # wait for it to finish, however long training takes
        poll_interval=2,
    )
    state = child.state
    run = RunKey(backend, variant, model).name
    summary = {"run": run, "flow_run": str(child.id), "state": state.name}
    if state.is_completed():
        logger.info("%s completed as flow run %s", summary["run"], child.name)
        return summary
    if state.is_crashed():
        raise TrainingCrashed(
            f"{summary['run']}: flow run {child.name} crashed ({state.message}); starting it "
            "again on the pool, from its last pushed checkpoint"
        )
    raise RuntimeError(
        f"{summary['run']}: flow run {child.name} ended {state.name}: {state.message}"
    )
