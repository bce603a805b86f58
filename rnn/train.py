"""Stage 4, train: one backend x variant on the train split -> weights, record, metrics.

Outputs (model directory: deterministic, so a repeated CPU run hashes the same):
  model.safetensors   weights, safetensors (never a pickle)
  run.json            model arguments, parameters, data and vocabulary hashes, library versions,
                      final perplexities
Metrics directory (timings, so not deterministic): dvclive's metrics.json and plots/metrics/*.tsv.
Checkpoints go to a separate directory every ``train.checkpoint_every`` epochs; a rerun with the
same fingerprint (parameters, data, code version) resumes from the latest one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rnn.atomic import atomic_dir, atomic_path
from rnn.config import Params
from rnn.engine import make_engine
from rnn.partition import epoch_minibatches, evaluation_minibatches, load_split, min_tokens
from rnn.progress import epoch_progress
from rnn.record import RECORD_FILE, WEIGHTS_FILE, file_sha256, fingerprint, library_versions
from rnn.vocab import VOCAB_FILE, Vocab
from rnn.workspace import run_name

# The ingest keys that decide the corpus's content (the rest: download and checksum settings).
DATA_INGEST_KEYS = ("source", "normalization", "strip_gutenberg", "encoding")

CHECKPOINT = "checkpoint.safetensors"
HISTORY = "checkpoint.json"


class CheckpointSync(Protocol):
    """A store that checkpoints are shared through, keyed by the run's fingerprint, so that a
    training interrupted in one workspace resumes in another (the flows' DVC-remote store)."""

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """Bring the store's checkpoint for ``key`` into ``ckpt_dir`` if it is further along."""

    def push(self, key: str, ckpt_dir: Path) -> None:
        """Publish ``ckpt_dir``'s checkpoint under ``key``."""


EpochCallback = Callable[[str, dict, int], None]  # (run, the epoch's row, epochs in all)


@dataclass(frozen=True)
class TrainSummary:
    run: str
    model_dir: str
    epochs: int
    resumed_from_epoch: int
    train_perplexity: float
    valid_perplexity: float | None
    tokens_per_s: float
    wall_time_s: float
    num_params: int


def perplexity(loss_sum: float, count: int) -> float:
    return math.exp(loss_sum / count)


def _load_checkpoint(engine, ckpt_dir: Path, run_fp: str) -> list[dict]:
    """History of the epochs already done, or [] if there is no usable checkpoint."""
    hist_path, weights = ckpt_dir / HISTORY, ckpt_dir / CHECKPOINT
    if not (hist_path.is_file() and weights.is_file()):
        return []
    saved = json.loads(hist_path.read_text())
    if saved.get("fingerprint") != run_fp or saved.get("weights_sha256") != file_sha256(weights):
        return []  # another configuration's checkpoint, or a torn write: start afresh
    engine.load(weights)
    return saved["history"]


def _save_checkpoint(
    engine, ckpt_dir: Path, run_fp: str, history: list[dict], sync: CheckpointSync | None
) -> None:
    with atomic_path(ckpt_dir / CHECKPOINT) as tmp:
        engine.save(tmp, metadata={"epoch": str(len(history)), "fingerprint": run_fp})
        digest = file_sha256(tmp)
    payload = {"fingerprint": run_fp, "weights_sha256": digest, "history": history}
    with atomic_path(ckpt_dir / HISTORY) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    if sync is not None:
        sync.push(run_fp, ckpt_dir)


def checkpoint_epochs(ckpt_dir: Path) -> int:
    """How many epochs the checkpoint in ``ckpt_dir`` holds (0: none, or unreadable)."""
    try:
        return len(json.loads((Path(ckpt_dir) / HISTORY).read_text())["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


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
    backend: str,
    variant: str,
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
) -> TrainSummary:
    """Train (or resume) one run. ``epoch_budget`` stops early after that many epochs this call,
    leaving a checkpoint to resume from (time-boxed scheduled training, and the resume tests).
    ``on_epoch`` sees every finished epoch (log lines, progress artifacts); ``checkpoint_sync``
    shares checkpoints beyond this workspace."""
    tcfg, pcfg = params.train, params.partition
    name = run_name(backend, variant)
    model_dir, metrics_dir, ckpt_dir = Path(model_dir), Path(metrics_dir), Path(checkpoint_dir)
    vocab = Vocab.load(vocab_dir)
    train_ids = load_split(partition_dir, "train")
    valid_ids = load_split(partition_dir, "valid")
    num_hiddens = tcfg.models[variant].num_hiddens
    data_hashes = {
        "vocab_sha256": file_sha256(Path(vocab_dir) / VOCAB_FILE),
        "train_sha256": file_sha256(Path(partition_dir) / "train.npy"),
        "valid_sha256": file_sha256(Path(partition_dir) / "valid.npy"),
    }
    trained_with = {
        "partition": pcfg.model_dump(),
        # threads changes only the speed (rnn/engine.py resolve_threads), so it is not recorded
        "train": tcfg.model_dump(exclude={"backends", "variants", "threads"}),
    }
    versions = library_versions(backend, engine_version(backend))
    run_fp = fingerprint({"run": name, **trained_with, **data_hashes, "versions": versions})
    engine = make_engine(
        backend,
        variant,
        len(vocab),
        num_hiddens,
        lr=tcfg.lr,
        theta=tcfg.theta,
        device=tcfg.device,
        seed=tcfg.seed,
        threads=tcfg.threads,
    )
    if checkpoint_sync is not None:
        checkpoint_sync.fetch(run_fp, ckpt_dir)
    history = _load_checkpoint(engine, ckpt_dir, run_fp)
    resumed_from = len(history)
    last = tcfg.epochs if epoch_budget is None else min(tcfg.epochs, resumed_from + epoch_budget)
    has_valid = len(valid_ids) >= min_tokens(1, pcfg.num_steps)
    started = time.perf_counter()
    with epoch_progress(f"{name}", tcfg.epochs, resumed_from, enabled=progress) as advance:
        for epoch in range(resumed_from, last):
            xs, ys = epoch_minibatches(
                train_ids, pcfg.batch_size, pcfg.num_steps, pcfg.sampling, tcfg.seed, epoch
            )
            t0 = time.perf_counter()
            loss_sum, count = engine.train_epoch(xs, ys, pcfg.sampling)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch + 1,
                "train/perplexity": perplexity(loss_sum, count),
                "train/tokens_per_s": count / seconds,
                "train/epoch_seconds": seconds,
            }
            if has_valid:
                row["valid/perplexity"] = perplexity(
                    *engine.evaluate(
                        *evaluation_minibatches(valid_ids, pcfg.batch_size, pcfg.num_steps)
                    )
                )
            history.append(row)
            advance(row)
            if on_epoch is not None:
                on_epoch(name, row, tcfg.epochs)
            if (
                tcfg.checkpoint_every
                and (epoch + 1) % tcfg.checkpoint_every == 0
                and epoch + 1 < tcfg.epochs
            ):
                _save_checkpoint(engine, ckpt_dir, run_fp, history, checkpoint_sync)
    wall = time.perf_counter() - started
    if len(history) < tcfg.epochs:  # budget spent: keep the checkpoint, publish nothing yet
        _save_checkpoint(engine, ckpt_dir, run_fp, history, checkpoint_sync)
        return _summary(name, model_dir, history, resumed_from, wall, engine)
    final = history[-1]
    record = {
        "backend": backend,
        "variant": variant,
        "model_args": {"vocab_size": len(vocab), "num_hiddens": num_hiddens},
        "num_params": engine.num_params(),
        # every parameter that shaped the model: the data's (also in dvc.yaml's train params, so
        # the record cannot go stale) and training's; fetch settings change no content
        "params": {
            "ingest": params.ingest.model_dump(include=set(DATA_INGEST_KEYS)),
            "vocab": params.vocab.model_dump(),
            **trained_with,
        },
        **data_hashes,
        "token_type": vocab.token_type,
        "versions": versions,
        "device": tcfg.device,
        "epochs": len(history),
        "train_perplexity": final["train/perplexity"],
        "valid_perplexity": final.get("valid/perplexity"),
    }
    with atomic_dir(model_dir) as tmp:
        engine.save(tmp / WEIGHTS_FILE, metadata={"backend": backend, "variant": variant})
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    with atomic_dir(metrics_dir) as tmp:
        _log_metrics(tmp, history)
    return _summary(name, model_dir, history, resumed_from, wall, engine)


def engine_version(backend: str) -> str:
    from rnn.engine import backend_module

    return backend_module(backend).framework_version()


def _summary(name, model_dir, history, resumed_from, wall, engine) -> TrainSummary:
    done = history[resumed_from:]
    tokens_per_s = (
        sum(r["train/tokens_per_s"] * r["train/epoch_seconds"] for r in done)
        / sum(r["train/epoch_seconds"] for r in done)
        if done
        else 0.0
    )
    last = history[-1] if history else {}
    return TrainSummary(
        run=name,
        model_dir=str(model_dir),
        epochs=len(history),
        resumed_from_epoch=resumed_from,
        train_perplexity=last.get("train/perplexity", float("nan")),
        valid_perplexity=last.get("valid/perplexity"),
        tokens_per_s=tokens_per_s,
        wall_time_s=wall,
        num_params=engine.num_params(),
    )
