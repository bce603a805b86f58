"""One backend x variant x model as a flow run of its own: the unit the pipeline fans out over
the pool.

A run of the `rnn-train` deployment clones the origin (pull steps), checks out the commit its
pipeline run was at, takes that run's parameters, restores the data stages from the DVC
run-cache (the pipeline pushed them), trains (resuming from the remote's checkpoint when an
earlier attempt died) inside one slot of the global `rnn-training` limit, evaluates, and pushes
its outputs and run-cache entries. It meets the other runs only through git, the DVC remote and
the Prefect server. `prefect deployment run rnn-train/default --param backend=tf --param
variant=concise` trains one variant with the clone's params.yaml (``--param model=gru`` picks a
model other than the first of ``train.models``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from flows.plan import (
    Stages,
    adopt_params,
    downstream,
    machine_name,
    merge,
    run_data_stages,
    stage_names,
)
from rnn.config import load_params
from rnn.errors import PipelineError
from rnn.names import TRAINING_GPU_LIMIT, TRAINING_LIMIT, wants_gpu
from rnn.registry import RunKey
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace
from stores import dvc_sync
from stores.checkpoints import collect_finished
from tasks.caching import with_outputs
from tasks.stages import evaluate_task, train_task

SLOT_LEASE_S = 60  # a dead holder's slot frees itself after this long


def training_slot(on_pool: bool, processes: int = 1, device: str = "cpu"):
    """A slot of the pool's training limit (the GPU limit for train.device cuda) per process
    the training starts (train.data_parallel; strict: a missing limit is an error, not a
    warning); a run outside a deployment (tests, a laptop) takes none."""
    if not on_pool:
        return nullcontext()
    from prefect.concurrency.sync import concurrency

    limit = TRAINING_GPU_LIMIT if wants_gpu(device) else TRAINING_LIMIT
    return concurrency(limit, occupy=processes, strict=True, lease_duration=SLOT_LEASE_S)


def check_out(root: Path, sha: str) -> None:
    """Make the workspace's checkout the pipeline run's commit. Pull steps clone the branch tip;
    if it moved since the pipeline started, fetch and check out the pipeline's commit."""
    head = dvc_sync.git(root, "rev-parse", "HEAD").stdout.strip()
    if head == sha:
        return
    get_run_logger().warning(
        "origin moved to %s since the pipeline run started at %s: checking out %s",
        head[:12],
        sha[:12],
        sha[:12],
    )
    if dvc_sync.git(root, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode:
        dvc_sync.git(root, "fetch", "-q", "--depth", "1", "origin", sha)
    dvc_sync.git(root, "checkout", "-q", sha)


@flow(name="rnn-train", persist_result=True, result_serializer="json", log_prints=True)
def train_variant(
    backend: str,
    variant: str,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    params_file: str = "params.yaml",
    code: str | None = None,
    workdir: str | None = None,
    trial: dict[str, Any] | None = None,
) -> dict[str, Any] | State:
    """Train and evaluate ``backend`` x ``variant`` x ``model`` (default: the first of
    ``train.models``) in this run's workspace. ``params`` (a pipeline run's complete parameters)
    override ``params_file``; ``code`` is the commit to run. ``trial`` ({"study", "trial"}): the
    sweep trial this training is (flows/sweep.py); stopped by its pruner, the run ends in a
    state of its own, Pruned (Completed: nothing failed)."""
    ws = Workspace.at(workdir or Path.cwd())
    with workspace_lock(ws, f"flow run {flow_run.name!r} ({flow_run.id})"):
        return _train_variant(ws, backend, variant, model, params, params_file, code, trial)


def _train_variant(ws, backend, variant, model, params, params_file, code, trial):
    logger = get_run_logger()
    machine = machine_name()
    if not dvc_sync.in_dvc_repo(ws.root):
        raise PipelineError(f"{ws.root} is not a DVC repository", "run rnn-train in a clone")
    if code:
        check_out(ws.root, code)
    if model is None:
        model = (params or load_params(ws.inside(params_file, "params_file")).model_dump())[
            "train"
        ]["models"][0]
    run = RunKey(backend, variant, model)
    logger.info("%s on machine %s in %s", run.name, machine, ws.root)
    narrowed = {"train": {"backends": [backend], "variants": [variant], "models": [model]}}
    run_params = adopt_params(ws, params_file, merge(params or {}, narrowed))
    shared = dvc_sync.connect_remote(ws.root)
    dvc_sync.sync_inputs(ws.root)
    if shared:
        dvc_sync.fetch_run_cache(ws.root)
    names = stage_names([run])
    plan = Stages(ws, downstream(dvc_sync.stale_stages(ws.root), names))
    pdict, root = run_params.model_dump(), str(ws.root)
    run_data_stages(plan, ws, pdict)
    train_stage, eval_stage = names["train"][0], names["evaluate"][0]
    reuse = plan.reuse(train_stage)
    on_pool = deployment.id is not None and not reuse
    train_cfg = run_params.train
    with training_slot(on_pool, train_cfg.data_parallel, train_cfg.device):
        trained = with_outputs(train_task, ws.model(run), stale=plan.needs_work(train_stage))(
            root, pdict, backend, variant, model, share_checkpoints=shared, reuse=reuse, trial=trial
        )
    if "pruned" in trained:
        return pruned_state(trained)
    if not trained.get("reused"):
        logger.info(
            "%s trained: resumed from epoch %d, %d epochs in %.2f s",
            trained["run"],
            trained["resumed_from_epoch"],
            trained["epochs"],
            trained["wall_time_s"],
        )
    evaluated = with_outputs(evaluate_task, ws.eval_of(run), stale=plan.needs_work(eval_stage))(
        root, pdict, backend, variant, model, reuse=plan.reuse(eval_stage)
    )
    done = ["ingest", "vocab", "partition", train_stage, eval_stage]
    dvc_sync.commit(ws.root, [s for s in done if plan.needs_work(s)])
    if shared:
        logger.info("dvc push: %s", dvc_sync.push(ws.root, done))
        collect_finished(ws.root, run_params, [run])  # the model is pushed: nothing resumes it
    return {
        "run": trained["run"],
        "training": trained,
        "perplexity": evaluated["perplexity"],
        "workspace": root,
        "machine": machine,
        "restored": plan.restored,
    }


PRUNED = "Pruned"  # the state's name: a sweep's pruner stopped the training


def pruned_state(trained: dict[str, Any]) -> State:
    """A Completed state named Pruned, carrying the epoch and the loss it stopped at (a sweep
    reads both from its study; the message is for people)."""
    at = trained["pruned"]
    return Completed(
        name=PRUNED,
        message=f"{trained['run']} pruned after epoch {at['epoch']} "
        f"(validation loss {at['objective']:.4f} nats)",
    )


if __name__ == "__main__":
    train_variant("torch", "scratch")
