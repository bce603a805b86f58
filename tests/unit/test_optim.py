"""Optimisers and schedules: the learning rates per step (warm-up, cosine, plateau) against
their reference definitions, and SGD, Adam and AdamW taking the same steps in PyTorch and
TensorFlow at the same rates."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rnn.config import OptimizerConfig, ScheduleConfig, TrainConfig
from rnn.data.partition import epoch_minibatches
from rnn.training.schedule import base_lr, best_epoch, epoch_lrs, plateau_scale, should_stop
from tests.support.models_util import V, engine, random_weights


def test_warmup_then_cosine_is_nanogpts():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.1)
    lrs = [base_lr(s, 110, 1.0, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)  # decay starts at the peak
    assert lrs[60] == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 0.5)))
    assert base_lr(110, 110, 1.0, cfg) == pytest.approx(0.1)  # the floor at the end
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_plateau_matches_torchs_reduce_on_plateau():
    """ReduceLROnPlateau(mode=min, threshold=0) over the same validation perplexities."""
    values = [5.0, 4.0, 4.5, 4.2, 3.9, 3.9, 4.0, 4.1, 3.0, 3.5, 3.6, 3.7]
    for patience in (0, 1, 2):
        cfg = ScheduleConfig(name="plateau", factor=0.5, patience=patience)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=patience, threshold=0.0
        )
        history = []
        for epoch, value in enumerate(values, start=1):
            history.append({"epoch": epoch, "valid/perplexity": value})
            ref.step(value)
            assert plateau_scale(history, cfg) == pytest.approx(opt.param_groups[0]["lr"])


def test_best_epoch_and_early_stopping():
    history = [{"epoch": i + 1, "valid/perplexity": v} for i, v in enumerate([5, 4, 4, 4.5, 3])]
    assert best_epoch(history) == 5 and best_epoch(history[:4]) == 2  # the first of a tie
    assert not should_stop(history[:3], 2) and should_stop(history[:4], 2)
    assert not should_stop(history[:4], 0)  # 0: never


def test_epoch_rates_follow_the_global_step():
    cfg = TrainConfig(
        epochs=3, lr=2.0, schedule=ScheduleConfig(name="cosine", warmup_steps=4, min_lr=0.0)
    )
    rates = np.concatenate([epoch_lrs(cfg, e, 5, []) for e in range(3)])
    expected = [base_lr(s, 15, 2.0, cfg.schedule) for s in range(15)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
def test_both_frameworks_take_the_same_steps(optimizer, schedule):
    """Scratch GRUs (the same parameterisation in both frameworks) with the same weights, the
    same minibatches and the same rates end every epoch with the same weights; the plateau's
    history is made to reduce the rate twice."""
    lr = 1.0 if optimizer == "sgd" else 0.01
    cfg = TrainConfig(
        epochs=3,
        lr=lr,
        optimizer=OptimizerConfig(name=optimizer, weight_decay=0.05),
        schedule=ScheduleConfig(
            name=schedule, warmup_steps=3, min_lr=lr / 10, factor=0.5, patience=0
        ),
    )
    weights = random_weights(9, cell="gru")
    engines = {}
    for backend in ("torch", "tf"):
        engines[backend] = engine(backend, "scratch", cell="gru", optimizer=cfg.optimizer, lr=lr)
        engines[backend].load_canonical_weights(weights)
    ids = np.random.default_rng(1).integers(0, V, 4 * 7 * 3 + 8)
    history: list[dict] = []
    for epoch in range(cfg.epochs):
        xs, ys = epoch_minibatches(ids, 4, 7, "sequential", 0, epoch)
        lrs = epoch_lrs(cfg, epoch, len(xs), history)
        for e in engines.values():
            e.train_epoch(xs, ys, "sequential", lrs, epoch)
        torch_w, tf_w = (engines[b].canonical_weights() for b in ("torch", "tf"))
        for name in torch_w:
            np.testing.assert_allclose(torch_w[name], tf_w[name], atol=2e-5, err_msg=name)
        history.append({"epoch": epoch + 1, "valid/perplexity": 10.0 + epoch})  # worse each time
    if schedule == "plateau":
        assert plateau_scale(history, cfg.schedule) == 0.25  # reduced after epochs 2 and 3
    moved = engines["torch"].canonical_weights()
    assert all(not np.array_equal(moved[k], weights[k]) for k in weights)


@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_plain_sgd_is_torch_optims_step_bit_for_bit(variant):
    """Without weight decay the PyTorch engine updates the weights itself, in one call, instead
    of through torch.optim.SGD: the weights after a few minibatches are the same bits."""
    weights = random_weights(4, cell="lstm")
    xs, ys = epoch_minibatches(
        np.random.default_rng(2).integers(0, V, 4 * 7 * 3 + 8), 4, 7, "sequential", 0, 0
    )
    results = []
    for own_update in (True, False):
        e = engine("torch", variant, cell="lstm", lr=0.5)
        assert e.plain_sgd
        e.plain_sgd = own_update  # False: torch.optim.SGD's step, as with weight decay
        e.load_canonical_weights(weights)
        e.train_epoch(xs, ys, "sequential")
        results.append(e.canonical_weights())
    assert all(not np.array_equal(results[0][k], weights[k]) for k in weights)
    for name in weights:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)
    decayed = engine("torch", "scratch", optimizer=OptimizerConfig(weight_decay=0.1))
    assert not decayed.plain_sgd
