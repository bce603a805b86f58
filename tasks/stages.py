"""One Prefect task per stage, each a thin call of the ``rnn.stages`` function the CLI calls.

Arguments are the workspace root and plain parameter dicts; results are small JSON summaries
(never tensors, never pickles). ``reuse=True`` returns the summary of outputs that DVC reports
up to date. Training logs a line per epoch and keeps a progress artifact up to date, so a run on a
worker shows how far it is.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from rnn import stages
from rnn.config import Params
from rnn.errors import TrialPruned
from rnn.registry import RunKey
from rnn.workspace import Workspace
from tasks.caching import StageFiles

JSON_RESULTS = {"persist_result": True, "result_serializer": "json"}
PROGRESS_EVERY_S = 2.0  # progress-artifact updates at most this often (and at the last epoch)
CURVES_EVERY_S = 30.0  # the curves' picture likewise: drawing one costs ~0.1 s of a core


def _ingest_reads(ws: Workspace, args: dict) -> list[Path]:
    source = args["params"]["ingest"]["source"]
    return [] if source.startswith(("http://", "https://")) else [ws.resolve(source)]


@task(
    name="ingest",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=StageFiles(reads=_ingest_reads, sections=("ingest",)),
    **JSON_RESULTS,
)
def ingest_task(workdir: str, params: dict, reuse: bool = False) -> dict:
    from rnn.data.corpus import read_provenance

    ws = Workspace(Path(workdir))
    if reuse and ws.corpus.is_file():
        return {
            "path": str(ws.corpus),
            "reused": True,
            "sha256": read_provenance(ws.corpus)["sha256"],
        }
    return asdict(stages.ingest_stage(ws, Params(**params)))


@task(
    name="vocab",
    cache_policy=StageFiles(reads=lambda ws, a: [ws.corpus], sections=("vocab",)),
    **JSON_RESULTS,
)
def vocab_task(workdir: str, params: dict, reuse: bool = False) -> dict:
    ws = Workspace(Path(workdir))
    if reuse and (ws.vocab / "vocab.json").is_file():
        return {"out_dir": str(ws.vocab), "reused": True}
    return asdict(stages.vocab_stage(ws, Params(**params)))


@task(
    name="partition",
    cache_policy=StageFiles(reads=lambda ws, a: [ws.vocab / "ids.npy"], sections=("partition",)),
    **JSON_RESULTS,
)
def partition_task(workdir: str, params: dict, reuse: bool = False) -> dict:
    ws = Workspace(Path(workdir))
    if reuse and (ws.partition / "partition.json").is_file():
        return {"out_dir": str(ws.partition), "reused": True}
    return asdict(stages.partition_stage(ws, Params(**params)))


class EpochReporter:
    """Per-epoch log lines in the flow run's logs, and two Prefect artifacts kept up to date: a
    progress bar (percent) and the perplexity curves as a picture (tasks/pictures.py). The
    artifacts are a courtesy: while the API is unreachable (a server or database restart)
    training goes on without them."""

    def __init__(self, run: str) -> None:
        self.logger = get_run_logger()
        self.run = run
        self.last_update = self.last_curves = 0.0
        self.progress = self.curves = None
        self.rows: list[dict] = []
        self._try(self._create)

    def _create(self) -> None:
        from prefect.artifacts import create_progress_artifact

        self.progress = create_progress_artifact(
            0.0, key=f"train-{self.run}", description=f"training {self.run}: epochs done, percent"
        )

    def _update(self, percent: float) -> None:
        from prefect.artifacts import update_progress_artifact

        if self.progress is not None:
            update_progress_artifact(self.progress, percent)

    def _draw(self, total: int) -> None:
        try:
            self._show_curves(total)
        except Exception as err:  # a picture is never worth a training
            self.logger.warning(f"curves not drawn (training goes on): {err!r}"[:300])

    def _show_curves(self, total: int) -> None:
        from tasks.pictures import show_curves

        curves = {
            split: [(r["epoch"], r[f"{split}/perplexity"]) for r in self.rows
                    if r.get(f"{split}/perplexity") is not None]
            for split in ("train", "valid")
        }  # fmt: skip
        self.curves = show_curves(self.curves, f"curves-{self.run}", self.run, curves, total)

    def _try(self, call, *args) -> None:
        import httpx

        try:
            call(*args)
        except httpx.HTTPError as err:  # PrefectHTTPStatusError and transport errors alike
            self.logger.warning(f"progress artifact not updated (training goes on): {err}")

    def __call__(self, run: str, row: dict, total: int) -> None:
        from rnn.training.progress import epoch_line

        self.logger.info(epoch_line(run, row, total))
        self.rows.append(row)
        now, last = time.monotonic(), row["epoch"] == total
        if last or now - self.last_update >= PROGRESS_EVERY_S:
            self._try(self._update, 100.0 * row["epoch"] / total)
            self.last_update = now
        if last or now - self.last_curves >= CURVES_EVERY_S:
            self._try(self._draw, total)
            self.last_curves = time.monotonic()  # drawing takes time too


@task(
    name="train",
    task_run_name="train-{backend}-{variant}-{model}",
    cache_policy=StageFiles(reads=lambda ws, a: [ws.partition, ws.vocab]),
    **JSON_RESULTS,
)
def train_task(
    workdir: str,
    params: dict,
    backend: str,
    variant: str,
    model: str,
    share_checkpoints: bool = False,
    reuse: bool = False,
    trial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``share_checkpoints``: push every checkpoint to the workspace's DVC remote and resume
    from the remote's if it is further along than this workspace's. ``trial`` ({"study",
    "trial"}): a sweep's trial, to which each epoch is reported; when its pruner stops the
    training, the summary says ``pruned`` (nothing of the run is published)."""
    from rnn.store.record import read_record

    ws, run = Workspace(Path(workdir)), RunKey(backend, variant, model)
    model_dir = ws.model(run)
    if reuse and (model_dir / "run.json").is_file():
        record = read_record(model_dir)
        return {
            "run": run.name,
            "model_dir": str(model_dir),
            "reused": True,
            "train_perplexity": record["train_perplexity"],
        }
    sync = None
    if share_checkpoints:
        from stores.checkpoints import RemoteCheckpoints

        sync = RemoteCheckpoints(ws.root)
    on_epoch = EpochReporter(run.name)
    if trial is not None:
        on_epoch = reporting_to(trial, on_epoch)
    try:
        summary = stages.train_stage(
            ws, Params(**params), run, progress=False, on_epoch=on_epoch, checkpoint_sync=sync
        )
    except TrialPruned as pruned:
        get_run_logger().info(str(pruned))
        return {"run": run.name, "pruned": {"epoch": pruned.epoch, "objective": pruned.value}}
    return asdict(summary)


def reporting_to(trial: dict[str, Any], log: EpochReporter):
    """``log``, then the epoch reported to the sweep's study (whose storage, the pool's
    database, is in this worker's environment only: it holds a password)."""
    from rnn.search.trial import TrialRef, epoch_reporter, storage_from_env

    report = epoch_reporter(TrialRef(str(trial["study"]), int(trial["trial"])), storage_from_env())

    def both(run: str, row: dict, total: int) -> None:
        log(run, row, total)
        report(run, row, total)

    return both


def _evaluate_reads(ws: Workspace, args: dict) -> list[Path]:
    return [ws.model(RunKey(args["backend"], args["variant"], args["model"])), ws.partition]


@task(
    name="evaluate",
    task_run_name="evaluate-{backend}-{variant}-{model}",
    cache_policy=StageFiles(reads=_evaluate_reads),
    **JSON_RESULTS,
)
def evaluate_task(
    workdir: str, params: dict, backend: str, variant: str, model: str, reuse: bool = False
) -> dict[str, Any]:
    from rnn.evaluation.evaluate import read_eval

    ws, run = Workspace(Path(workdir)), RunKey(backend, variant, model)
    if reuse and (ws.eval_of(run) / "eval.json").is_file():
        return read_eval(ws.eval_of(run))
    return asdict(stages.evaluate_stage(ws, Params(**params), run))


@task(name="report", **JSON_RESULTS)
def report_task(workdir: str, runs: list[RunKey]) -> list[dict]:
    rows = stages.report_stage(Workspace(Path(workdir)), runs)
    return [asdict(r) for r in rows]
