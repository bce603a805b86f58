"""Learning rates per step and the validation bookkeeping (best epoch, plateaus, early stopping).

Everything here is a pure function of the configuration, the step and the epoch history that a
checkpoint already stores, so a resumed run takes exactly the decisions an uninterrupted one
would, and both frameworks get the same rates (the engines only apply them).
"""

from __future__ import annotations

import math

import numpy as np

from rnn.config import ScheduleConfig, TrainConfig

VALID_KEY = "valid/perplexity"


def base_lr(step: int, total_steps: int, lr: float, cfg: ScheduleConfig) -> float:
    """The rate at ``step`` (0-based) of ``total_steps``, before any plateau reductions."""
    if step < cfg.warmup_steps:  # nanoGPT's linear warm-up
        return lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.name != "cosine":
        return lr
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def plateau_scale(history: list[dict], cfg: ScheduleConfig) -> float:
    """The product of every reduction so far: ``factor`` each time validation perplexity has
    not improved on its best for more than ``patience`` epochs (PyTorch's ReduceLROnPlateau,
    mode min, threshold 0, no cooldown)."""
    if cfg.name != "plateau":
        return 1.0
    scale, best, bad = 1.0, math.inf, 0
    for row in history:
        value = row.get(VALID_KEY)
        if value is None:
            continue
        if value < best:
            best, bad = value, 0
        else:
            bad += 1
            if bad > cfg.patience:
                scale, bad = scale * cfg.factor, 0
    return scale


def epoch_lrs(
    cfg: TrainConfig, epoch: int, steps_per_epoch: int, history: list[dict]
) -> np.ndarray:
    """The learning rate of each minibatch of ``epoch`` (0-based), as float32 for the engines."""
    total = cfg.epochs * steps_per_epoch
    scale = plateau_scale(history, cfg.schedule)
    first = epoch * steps_per_epoch
    return np.array(
        [base_lr(first + i, total, cfg.lr, cfg.schedule) * scale for i in range(steps_per_epoch)],
        dtype=np.float32,
    )


def best_epoch(history: list[dict]) -> int | None:
    """The 1-based epoch with the lowest validation perplexity (the first, on ties)."""
    scored = [(row[VALID_KEY], row["epoch"]) for row in history if row.get(VALID_KEY) is not None]
    return min(scored)[1] if scored else None


def should_stop(history: list[dict], patience: int) -> bool:
    """Early stopping: ``patience`` epochs in a row without a new best validation perplexity."""
    best = best_epoch(history)
    return patience > 0 and best is not None and history[-1]["epoch"] - best >= patience
