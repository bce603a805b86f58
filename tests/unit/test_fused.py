"""The C recurrences (rnn/backends/torch/cells.c) against the recurrences' eager code: the same outputs and
gradients, on the sizes the tests and the book use and on sizes that are not multiples of the
kernels' register tiles."""

from __future__ import annotations

import pytest
import torch

from rnn.backends.torch import fused
from rnn.backends.torch.recurrences import GRURecurrence, LSTMRecurrence

pytestmark = pytest.mark.skipif(fused.library() is None, reason="no C compiler here")


def run(cell: str, eager: bool, monkeypatch, table=False, steps=9, batch=4, hidden=24, seed=0):
    """One forward and backward pass of a recurrence: outputs and the gradients of every input.
    ``table``: the input's share as a 5-row table gathered by token ids (a first layer). The
    recurrent weights' scale keeps the gain of a step the same at every width (a chaotic
    recurrence would amplify either code's rounding past any tolerance)."""
    gen = torch.Generator().manual_seed(seed)
    gates = 3 if cell == "gru" else 4
    ids = torch.randint(0, 5, (steps, batch), generator=gen) if table else None
    lead = (5,) if table else (steps, batch)
    xw = (torch.randn(*lead, gates * hidden, generator=gen) * 2).requires_grad_()
    h0 = torch.randn(batch, hidden, generator=gen).requires_grad_()
    c0 = torch.randn(batch, hidden, generator=gen).requires_grad_()
    scale = 0.5 * (24 / hidden) ** 0.5
    W_h = (torch.randn(hidden, gates * hidden, generator=gen) * scale).requires_grad_()
    weights = torch.randn(steps, batch, hidden, generator=gen)
    with monkeypatch.context() as m:
        if eager:
            m.setattr(fused, "usable", lambda t: False)
        if cell == "gru":
            xw_zr, xw_h = xw[..., : 2 * hidden], xw[..., 2 * hidden :]
            hs = GRURecurrence.apply(xw_zr, xw_h, ids, h0, W_h, None, False)
            loss = (hs * weights).sum()
            inputs = (xw, h0, W_h)
        else:
            hs, c_last = LSTMRecurrence.apply(xw, ids, h0, c0, W_h)
            loss = (hs * weights).sum() + (c_last * weights[0]).sum()
            inputs = (xw, h0, c0, W_h)
        grads = torch.autograd.grad(loss, inputs)
    return hs.detach(), grads


@pytest.mark.parametrize("table", [False, True], ids=["xw", "table"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_steps_equal_the_eager_recurrence(cell, table, monkeypatch):
    hs_fused, grads_fused = run(cell, False, monkeypatch, table)
    hs_eager, grads_eager = run(cell, True, monkeypatch, table)
    torch.testing.assert_close(hs_fused, hs_eager, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads_fused, grads_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("batch", "hidden"), [(11, 40), (37, 130), (1, 3)])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_odd_sizes_equal_the_eager_recurrence(cell, batch, hidden, monkeypatch):
    """Rows past a tile's last, units past a panel's last, and (37 x 130: above the threading
    threshold) two threads owning unequal shares of rows, neither a whole number of tiles."""
    hs_fused, grads_fused = run(cell, False, monkeypatch, True, steps=5, batch=batch, hidden=hidden)
    hs_eager, grads_eager = run(cell, True, monkeypatch, True, steps=5, batch=batch, hidden=hidden)
    torch.testing.assert_close(hs_fused, hs_eager, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads_fused, grads_eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_short_sequences_take_the_eager_loop(cell, monkeypatch):
    """Generation feeds one step at a time: packing the weights for it would cost more than the
    step, so the C loops are skipped below MIN_STEPS (and the results are the eager loop's)."""
    calls = []
    for name in ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward"):
        real = getattr(fused, name)
        monkeypatch.setattr(
            fused, name, lambda *a, real=real, name=name: calls.append(name) or real(*a)
        )
    short = fused.MIN_STEPS - 1
    run(cell, False, monkeypatch, steps=short)
    assert calls == []
    run(cell, False, monkeypatch, steps=fused.MIN_STEPS)
    assert calls == [f"{cell}_forward", f"{cell}_backward"]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_table_gradients_do_not_depend_on_the_thread_count(cell, monkeypatch):
    """Each row of the C recurrences is one thread's, summed in a fixed order, and the scatter
    into the input table splits columns over threads, so that rows with the same token add into
    their table row in one order: bit-identical outputs and gradients at one thread and at two
    (the sizes are above the kernels' threshold for threading)."""
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run(cell, False, monkeypatch, True, steps=6, batch=32, hidden=256))
    finally:
        torch.set_num_threads(before)
    (hs_1, grads_1), (hs_2, grads_2) = results
    assert torch.equal(hs_1, hs_2)
    for a, b in zip(grads_1, grads_2, strict=True):
        assert torch.equal(a, b)


def test_fused_kernels_pass_nan_through(monkeypatch):
    """A diverged run must still look diverged: NaN in, NaN out (the clamps must not hide it)."""
    hs, _ = run("lstm", False, monkeypatch)
    xw = torch.full((fused.MIN_STEPS, 1, 8), float("nan"))
    zeros = torch.zeros(1, 2)
    out = LSTMRecurrence.apply(xw, None, zeros, zeros, torch.zeros(2, 8))[0]
    assert torch.isnan(out).all() and torch.isfinite(hs).all()


def test_disabled_by_environment(monkeypatch, tmp_path):
    import subprocess
    import sys

    code = "from rnn.backends.torch import fused; print(fused.library() is None)"
    env = {"RNN_TORCH_FUSED": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize(("rows", "cols", "ld"), [(1120, 256, 256), (37, 70, 100), (1, 5, 5)])
def test_transposed_equals_pytorchs_transpose(rows, cols, ld):
    """The tiled C transpose, on whole matrices and on column slices of wider ones, with edges
    that are not multiples of its tile."""
    full = torch.randn(rows, ld, generator=torch.Generator().manual_seed(1))
    block = full[:, ld - cols :]
    out = fused.transposed(block)
    assert out.is_contiguous() and torch.equal(out, block.t())
