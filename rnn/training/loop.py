"""Stage 4, train: one backend x implementation x model on the train split -> weights, record,
metrics.

Outputs (model directory: deterministic, so a repeated CPU run hashes the same):
  model.safetensors   canonical weights (rnn/backends/canonical.py), safetensors (never a pickle): the last
                      epoch's, or with ``train.keep_best`` the best epoch's by validation perplexity
  run.json            model arguments, parameters, data and vocabulary hashes, library versions,
                      final perplexities, best epoch
Metrics directory (timings, so not deterministic): dvclive's metrics.json and plots/metrics/*.tsv.
Checkpoints go to a separate directory every ``train.checkpoint_every`` epochs (weights,
optimiser state and the best weights so far; rnn/training/checkpoints.py keeps two generations, each with
its checksum); a rerun with the same fingerprint (parameters, data, code version) resumes from
the newest one whose bytes verify. Learning rates, plateaus and early stopping
are functions of the epoch history the checkpoint holds (rnn/training/schedule.py), so a resumed run
decides as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rnn.backends.engine import engine_for
from rnn.backends.world import SINGLE, World
from rnn.config import Params
from rnn.data.partition import epoch_minibatches, evaluation_minibatches, load_split, min_tokens
from rnn.data.vocab import Vocab
from rnn.errors import PipelineError
from rnn.faults import kill_point
from rnn.registry import RunKey
from rnn.store.atomic import atomic_dir
from rnn.store.record import (
    RECORD_FILE,
    WEIGHTS_FILE,
    file_sha256,
    write_weights,
)
from rnn.training.checkpoints import (
    Generation,
    newest_good,
    save_generation,
    sidecar,
    sidecar_name,
    weights_name,
)
from rnn.training.identity import DATA_INGEST_KEYS, run_identity
from rnn.training.progress import epoch_progress
from rnn.training.schedule import VALID_KEY, best_epoch, epoch_lrs, should_stop
from rnn.workspace import Workspace

logger = logging.getLogger(__name__)


class CheckpointSync(Protocol):
    """A store that checkpoints are shared through, keyed by the run's fingerprint, so that a
    training interrupted in one workspace resumes in another (the flows' DVC-remote store)."""

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """Bring the store's newest good generation for ``key`` into ``ckpt_dir`` if it is
        further along than the newest good one there (verified before it is installed)."""

    def push(self, key: str, ckpt_dir: Path) -> None:
        """Publish ``ckpt_dir``'s newest generation under ``key``, keeping the store to the
        generations resuming needs."""


EpochCallback = Callable[[str, dict, int], None]  # (run, the epoch's row, epochs in all)


@dataclass(frozen=True)
class TrainSummary:
    run: str
    model_dir: str
    epochs: int
    resumed_from_epoch: int
    train_perplexity: float
    valid_perplexity: float | None
    best_epoch: int | None
    stopped_early: bool
    tokens_per_s: float
    wall_time_s: float
    num_params: int


def perplexity(loss_sum: float, count: int) -> float:
    mean = loss_sum / count
    return math.exp(mean) if mean < MAX_EXP else math.inf


MAX_EXP = 700.0  # math.exp overflows a float above ~709
# Diverged: a mean loss this many times that of guessing uniformly (ln V nats per token) only
# comes from weights that have blown up; a model at initialisation sits at about 1x.
DIVERGED_VS_UNIFORM = 10.0


def check_converging(
    loss_sum: float, count: int, epoch: int, vocab_size: int, tcfg, checkpointed: int
) -> None:
    """Stop a diverging run (non-finite or exploding loss: the gradients or weights overflowed)
    at the epoch it happened, before anything of it is saved: the last checkpoint and earlier
    outputs stay, nothing is published."""
    mean = float(loss_sum) / count
    limit = DIVERGED_VS_UNIFORM * math.log(max(vocab_size, 2))
    if math.isfinite(mean) and mean <= limit:
        return
    kept = checkpointed
    clip = "" if tcfg.theta is not None else ", or set train.theta (e.g. 1.0) to clip gradients"
    raise PipelineError(
        f"training diverged at epoch {epoch}: the mean training loss is {mean:g} nats "
        f"(guessing uniformly gives {math.log(max(vocab_size, 2)):.2f}); nothing of this run "
        "was saved or published" + (f" (its checkpoint at epoch {kept} is kept)" if kept else ""),
        f"lower train.lr (now {tcfg.lr:g}){clip}, then rerun",
    )


def _load_checkpoint(engine, ckpt_dir: Path, run_fp: str) -> tuple[list[dict], dict]:
    """History of the epochs already done and the best weights so far, from the newest
    generation whose bytes match their checksum, or ([], {}) if there is none. Each damaged
    generation passed over is one warning line naming its file and where training goes on."""
    found = _newest_good(ckpt_dir, run_fp)
    if found is None:
        return [], {}
    return found.history, engine.load_checkpoint(found.data)


def _newest_good(ckpt_dir: Path, run_fp: str) -> Generation | None:
    found, problems = newest_good(ckpt_dir, run_fp)
    outcome = f"resuming from epoch {found.epoch}" if found else "training from the start"
    for problem in problems.values():
        logger.warning("%s; %s", problem, outcome)
    return found


def _resume(engine, ckpt_dir: Path, run_fp: str, world: World) -> tuple[list[dict], dict]:
    """``_load_checkpoint`` on rank 0's files, on every rank: ranks on other machines have no
    checkpoint of their own, and all must resume from the same epoch. Rank 0 chooses the
    generation and sends its bytes and checksum; every rank verifies them before loading."""
    if world.size == 1:
        return _load_checkpoint(engine, ckpt_dir, run_fp)
    found = _newest_good(ckpt_dir, run_fp) if world.is_root else None
    record = sidecar(run_fp, found.epoch, hashlib.sha256(found.data).hexdigest()) if found else {}
    sent = json.dumps(record).encode() if world.is_root else None
    record = json.loads(world.broadcast_bytes(sent))
    data = world.broadcast_bytes((found.data if found else b"") if world.is_root else None)
    with tempfile.TemporaryDirectory(prefix="rnn-resume-") as tmp:
        if record:
            (Path(tmp) / sidecar_name(record["epoch"])).write_text(json.dumps(record))
            (Path(tmp) / weights_name(record["epoch"])).write_bytes(data)
        return _load_checkpoint(engine, Path(tmp), run_fp)


def _save_checkpoint(
    engine,
    ckpt_dir: Path,
    run_fp: str,
    history: list[dict],
    best: dict,
    sync: CheckpointSync | None,
) -> None:
    meta = {"epoch": str(len(history)), "fingerprint": run_fp, "history": json.dumps(history)}
    save_generation(
        ckpt_dir,
        run_fp,
        len(history),
        lambda tmp: engine.save_checkpoint(tmp, metadata=meta, extra=best),
    )
    if sync is not None:
        sync.push(run_fp, ckpt_dir)


def _log_metrics(metrics_dir: Path, history: list[dict]) -> None:
    """Write per-epoch metrics with dvclive (what `dvc metrics` / `dvc plots` read)."""
    from dvclive import Live

    with Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=None) as live:
        for row in history:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    live.log_metric(key, value, plot=True)
            live.next_step()


def train_model(
    run: RunKey,
    params: Params,
    partition_dir: str | Path,
    vocab_dir: str | Path,
    model_dir: str | Path,
    metrics_dir: str | Path,
    checkpoint_dir: str | Path,
    epoch_budget: int | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    checkpoint_sync: CheckpointSync | None = None,
    world: World = SINGLE,
) -> TrainSummary:
    """Train (or resume) one run. ``epoch_budget`` stops early after that many epochs this call,
    leaving a checkpoint to resume from (time-boxed scheduled training, and the resume tests).
    ``on_epoch`` sees every finished epoch (log lines, progress artifacts); ``checkpoint_sync``
    shares checkpoints beyond this workspace; ``world``: this process's rank in a data-parallel
    run (rnn/backends/world.py), where rank 0 does every write."""
    tcfg, pcfg, arch = params.train, params.partition, params.model(run.model)
    name = run.name
    model_dir, metrics_dir, ckpt_dir = Path(model_dir), Path(metrics_dir), Path(checkpoint_dir)
    vocab = Vocab.load(vocab_dir)
    train_ids = load_split(partition_dir, "train")
    valid_ids = load_split(partition_dir, "valid")
    ident = run_identity(run, params, partition_dir, vocab_dir)
    run_fp = ident.fingerprint
    engine = engine_for(params, run.backend, run.variant, run.model, len(vocab), world)
    writes = world.is_root  # under data parallelism only rank 0 writes
    if checkpoint_sync is not None and writes:
        checkpoint_sync.fetch(run_fp, ckpt_dir)
    history, best = _resume(engine, ckpt_dir, run_fp, world)
    resumed_from = checkpointed = len(history)
    last = tcfg.epochs if epoch_budget is None else min(tcfg.epochs, resumed_from + epoch_budget)
    has_valid = len(valid_ids) >= min_tokens(1, pcfg.num_steps)
    stopped = should_stop(history, tcfg.early_stop_patience)
    started = time.perf_counter()
    shown = progress and writes
    with epoch_progress(f"{name}", tcfg.epochs, resumed_from, enabled=shown) as advance:
        for epoch in range(resumed_from, last):
            if stopped:
                break
            xs, ys = epoch_minibatches(
                train_ids, pcfg.batch_size, pcfg.num_steps, pcfg.sampling, tcfg.seed, epoch
            )
            lrs = epoch_lrs(tcfg, epoch, len(xs), history)
            t0 = time.perf_counter()
            loss_sum, count = engine.train_epoch(xs, ys, pcfg.sampling, lrs, epoch)
            kill_point("train:epoch")  # the epoch computed, not yet recorded or checkpointed
            seconds = time.perf_counter() - t0
            check_converging(loss_sum, count, epoch + 1, len(vocab), tcfg, checkpointed)
            row = {
                "epoch": epoch + 1,
                "train/perplexity": perplexity(loss_sum, count),
                "train/tokens_per_s": count / seconds,
                "train/epoch_seconds": seconds,
                "train/lr": float(lrs[-1]),
            }
            if has_valid:
                row[VALID_KEY] = perplexity(
                    *engine.evaluate(
                        *evaluation_minibatches(valid_ids, pcfg.batch_size, pcfg.num_steps)
                    )
                )
            history.append(row)
            if tcfg.keep_best and best_epoch(history) == row["epoch"]:
                best = engine.canonical_weights()
            stopped = should_stop(history, tcfg.early_stop_patience)
            advance(row)
            if on_epoch is not None and writes:
                on_epoch(name, row, tcfg.epochs)
            if (
                writes
                and tcfg.checkpoint_every
                and (epoch + 1) % tcfg.checkpoint_every == 0
                and epoch + 1 < tcfg.epochs
                and not stopped
            ):
                _save_checkpoint(engine, ckpt_dir, run_fp, history, best, checkpoint_sync)
                checkpointed = len(history)
    wall = time.perf_counter() - started
    if not writes:
        return _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped)
    if len(history) < tcfg.epochs and not stopped:  # budget spent: keep the checkpoint
        if checkpointed < len(history):  # not already written at this epoch
            _save_checkpoint(engine, ckpt_dir, run_fp, history, best, checkpoint_sync)
        return _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped)
    chosen = best_epoch(history) if tcfg.keep_best else None
    final = history[chosen - 1] if chosen else history[-1]
    record = {
        "backend": run.backend,
        "variant": run.variant,
        "model": run.model,
        "model_args": {
            "vocab_size": len(vocab),
            "num_hiddens": arch.hiddens(run.variant),
            "cell": arch.cell,
            "num_layers": arch.num_layers,
            "dropout": arch.dropout,
        },
        "num_params": engine.num_params(),
        # every parameter that shaped the model: the data's (also in dvc.yaml's train params, so
        # the record cannot go stale) and training's; fetch settings change no content
        "params": {
            "ingest": params.ingest.model_dump(include=set(DATA_INGEST_KEYS)),
            "vocab": params.vocab.model_dump(),
            **ident.trained_with,
        },
        **ident.data_hashes,
        "token_type": vocab.token_type,
        "versions": ident.versions,
        "device": tcfg.device,
        "data_parallel": {"world_size": world.size, "comm": world.comm},
        "epochs": len(history),
        "weights_epoch": final["epoch"],
        "best_epoch": best_epoch(history),
        "stopped_early": stopped,
        "train_perplexity": final["train/perplexity"],
        "valid_perplexity": final.get(VALID_KEY),
    }
    meta = {"backend": run.backend, "variant": run.variant, "model": run.model}
    with atomic_dir(model_dir) as tmp:
        if chosen:
            write_weights(tmp / WEIGHTS_FILE, best, metadata=meta)
        else:
            engine.save(tmp / WEIGHTS_FILE, metadata=meta)
        record["weights_sha256"] = file_sha256(tmp / WEIGHTS_FILE)  # checked before loading
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    with atomic_dir(metrics_dir) as tmp:
        _log_metrics(tmp, history)
    return _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped)


def _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped) -> TrainSummary:
    done = history[resumed_from:]
    tokens_per_s = (
        sum(r["train/tokens_per_s"] * r["train/epoch_seconds"] for r in done)
        / sum(r["train/epoch_seconds"] for r in done)
        if done
        else 0.0
    )
    chosen = best_epoch(history) if tcfg.keep_best else None
    last = history[chosen - 1] if chosen else history[-1] if history else {}
    return TrainSummary(
        run=name,
        model_dir=str(model_dir),
        epochs=len(history),
        resumed_from_epoch=resumed_from,
        train_perplexity=last.get("train/perplexity", float("nan")),
        valid_perplexity=last.get(VALID_KEY),
        best_epoch=best_epoch(history),
        stopped_early=stopped,
        tokens_per_s=tokens_per_s,
        wall_time_s=wall,
        num_params=engine.num_params(),
    )


def train_in_workspace(ws: Workspace, params, run: RunKey, **options) -> TrainSummary:
    """``train_model`` on the workspace's own folders; ``options`` as for ``train_model``."""
    return train_model(
        run,
        params,
        partition_dir=ws.partition,
        vocab_dir=ws.vocab,
        model_dir=ws.model(run),
        metrics_dir=ws.metrics_of(run),
        checkpoint_dir=ws.checkpoint(run),
        **options,
    )
