"""Stage 4, train: one backend x variant x model on the train split -> weights, record,
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

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnn.backends.engine import engine_for
from rnn.backends.world import SINGLE, World
from rnn.config import Params
from rnn.data.partition import epoch_minibatches, evaluation_minibatches, load_split, min_tokens
from rnn.data.tokens import Vocab
from rnn.errors import PipelineError
from rnn.faults import kill_point
from rnn.registry import RunKey
from rnn.training.identity import run_identity
from rnn.training.progress import epoch_progress
from rnn.training.publish import publish
from rnn.training.resume import CheckpointSync, resume, save_checkpoint
from rnn.training.schedule import VALID_KEY, best_epoch, epoch_lrs, should_stop
from rnn.workspace import Workspace

logger = logging.getLogger(__name__)


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


def _epoch(engine, params: Params, epoch: int, train_ids, valid_ids, history, checkpointed):
    """Train epoch ``epoch`` (0-based) and return its row of metrics; a diverging epoch stops
    the run here, before anything of it is kept."""
    tcfg, pcfg = params.train, params.partition
    xs, ys = epoch_minibatches(
        train_ids, pcfg.batch_size, pcfg.num_steps, pcfg.sampling, tcfg.seed, epoch
    )
    lrs = epoch_lrs(tcfg, epoch, len(xs), history)
    t0 = time.perf_counter()
    loss_sum, count = engine.train_epoch(xs, ys, pcfg.sampling, lrs, epoch)
    kill_point("train:epoch")  # the epoch computed, not yet recorded or checkpointed
    seconds = time.perf_counter() - t0
    check_converging(loss_sum, count, epoch + 1, engine.spec.vocab_size, tcfg, checkpointed)
    row = {
        "epoch": epoch + 1,
        "train/perplexity": perplexity(loss_sum, count),
        "train/tokens_per_s": count / seconds,
        "train/epoch_seconds": seconds,
        "train/lr": float(lrs[-1]),
    }
    if len(valid_ids) >= min_tokens(1, pcfg.num_steps):
        row[VALID_KEY] = perplexity(
            *engine.evaluate(*evaluation_minibatches(valid_ids, pcfg.batch_size, pcfg.num_steps))
        )
    return row


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
    tcfg = params.train
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
    history, best = resume(engine, ckpt_dir, run_fp, world)
    resumed_from = checkpointed = len(history)
    last = tcfg.epochs if epoch_budget is None else min(tcfg.epochs, resumed_from + epoch_budget)
    stopped = should_stop(history, tcfg.early_stop_patience)
    started = time.perf_counter()
    shown = progress and writes
    with epoch_progress(f"{name}", tcfg.epochs, resumed_from, enabled=shown) as advance:
        for epoch in range(resumed_from, last):
            if stopped:
                break
            row = _epoch(engine, params, epoch, train_ids, valid_ids, history, checkpointed)
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
                save_checkpoint(engine, ckpt_dir, run_fp, history, best, checkpoint_sync)
                checkpointed = len(history)
    wall = time.perf_counter() - started
    if not writes:
        return _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped)
    if len(history) < tcfg.epochs and not stopped:  # budget spent: keep the checkpoint
        if checkpointed < len(history):  # not already written at this epoch
            save_checkpoint(engine, ckpt_dir, run_fp, history, best, checkpoint_sync)
        return _summary(name, model_dir, history, resumed_from, wall, engine, tcfg, stopped)
    publish(
        run,
        params,
        engine,
        ident,
        vocab,
        history,
        best,
        stopped,
        world,
        Path(vocab_dir),
        model_dir,
        metrics_dir,
    )
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
