"""The RNN, GRU and LSTM cells, one and two layers, in both frameworks and both implementations:
shapes, scratch against concise and PyTorch against TensorFlow on logits and gradients (given
the same canonical weights, within 1e-5), the hand-written backward passes against finite
differences. (tests/unit/test_engines.py runs every cell's engine against the book's loop: state
carried and detached under sequential partitioning, reset under random sampling.)

The book's GRU applies its reset gate before the candidate's product; nn.GRU (and cuDNN) after
it, with an extra recurrent bias, which is a different function. The scratch GRU is proven
against Keras' GRU in the book's form (``reset_after=False``), and its ``reset_after`` form
against nn.GRU; each concise GRU against the other framework's.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch
from torch.nn import functional as F

from rnn.backends.canonical import GRU_RECURRENT_BIAS, expected_names, split_gates
from rnn.backends.tf import concise as tf_concise
from rnn.backends.tf import recurrences as tf_rec
from rnn.backends.tf import scratch as tf_scratch
from rnn.backends.torch import concise as torch_concise
from rnn.backends.torch import recurrences as torch_rec
from rnn.backends.torch import scratch as torch_scratch
from rnn.registry import CELLS
from tests.support.models_util import B, H, T, V, engine, random_weights, tokens

CELL_NAMES = list(CELLS)
LAYERS = [1, 2]


def initial_state(cell: str, layers: int, seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, (layers, B, H)).astype(np.float32) for _ in CELLS[cell].states]


# --- one forward and backward pass, gradients in canonical names ---------------------------


def torch_pass(model, X, Y, state0):
    """Logits, canonical gradients and initial-state gradients of the loss (cross-entropy plus
    a term on the final state, so gradients flow through the state outputs too)."""
    state = tuple(torch.from_numpy(s).requires_grad_() for s in state0)
    logits, final = model(torch.from_numpy(X), state)
    loss = F.cross_entropy(logits, torch.from_numpy(Y).T.reshape(-1))
    loss = loss + sum(torch.sin(s).sum() for s in final) * 0.1
    loss.backward()
    return logits.detach().numpy(), torch_canonical_grads(model), [s.grad.numpy() for s in state]


def torch_canonical_grads(model) -> dict[str, np.ndarray]:
    out = {}
    if isinstance(model, torch_scratch.RNNModelScratch):
        for k in range(model.num_layers):
            out.update(split_gates(model.cell, k, *(p.grad for p in model.layer(k))))
            if model.reset_after:
                out[f"{GRU_RECURRENT_BIAS}_l{k}"] = getattr(model, f"b_hh_l{k}").grad
    else:  # the gradient of a summed bias is either addend's
        for k, rnn in enumerate(model.rnns):
            for gate, block in torch_concise.TORCH_BLOCK[model.cell].items():
                rows = slice(block * H, (block + 1) * H)
                out[f"W_x{gate}_l{k}"] = rnn.weight_ih_l0.grad[rows].T
                out[f"W_h{gate}_l{k}"] = rnn.weight_hh_l0.grad[rows].T
                out[f"b_{gate}_l{k}"] = rnn.bias_ih_l0.grad[rows]
                if model.cell == "gru" and gate == "h":
                    out[f"{GRU_RECURRENT_BIAS}_l{k}"] = rnn.bias_hh_l0.grad[rows]
        out["W_hq"], out["b_q"] = model.linear.weight.grad.T, model.linear.bias.grad
        return {k: v.numpy() for k, v in out.items()}
    out["W_hq"], out["b_q"] = model.W_hq.grad, model.b_q.grad
    return {k: v.numpy() for k, v in out.items()}


def tf_pass(model, X, Y, state0):
    state = [tf.Variable(s) for s in state0]
    variables = model.ordered_variables
    with tf.GradientTape() as tape:
        logits, final = model(tf.constant(X, tf.int32), state)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(Y.T.reshape(-1), logits)
        ) + 0.1 * sum(tf.reduce_sum(tf.sin(s)) for s in final)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [*variables, *state])]
    by_var = dict(zip([id(v) for v in variables], grads[: len(variables)], strict=True))
    return (
        logits.numpy(),
        tf_canonical_grads(model, by_var),
        [g.numpy() for g in grads[len(variables) :]],
    )


def tf_canonical_grads(model, by_var) -> dict[str, np.ndarray]:
    def g(var):
        return by_var[id(var)]

    out = {}
    if isinstance(model, tf_scratch.RNNModelScratch):
        for k, layer in enumerate(model.layers):
            out.update(split_gates(model.cell, k, *(g(v) for v in layer)))
        out["W_hq"], out["b_q"] = g(model.W_hq), g(model.b_q)
    else:
        for k, rnn in enumerate(model.rnns):
            c = rnn.cell
            kernel, recurrent, bias = g(c.kernel), g(c.recurrent_kernel), g(c.bias)
            for gate, block in tf_concise.KERAS_BLOCK[model.cell].items():
                cols = slice(block * H, (block + 1) * H)
                out[f"W_x{gate}_l{k}"] = kernel[:, cols]
                out[f"W_h{gate}_l{k}"] = recurrent[:, cols]
                if len(bias.shape) == 1:
                    out[f"b_{gate}_l{k}"] = bias[cols]
                else:
                    out[f"b_{gate}_l{k}"] = bias[0, cols]
                    if gate == "h":
                        out[f"{GRU_RECURRENT_BIAS}_l{k}"] = bias[1, cols]
        out["W_hq"], out["b_q"] = g(model.dense.kernel), g(model.dense.bias)
    return {k: np.asarray(v) for k, v in out.items()}


def assert_same_pass(a, b, atol=1e-5):
    (logits_a, grads_a, state_a), (logits_b, grads_b, state_b) = a, b
    np.testing.assert_allclose(logits_a, logits_b, atol=atol)
    assert set(grads_a) == set(grads_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], atol=atol, err_msg=name)
    for x, y in zip(state_a, state_b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol)


def build(backend, variant, cell, layers, weights, **kw):
    models = {
        ("torch", "scratch"): torch_scratch.RNNModelScratch,
        ("torch", "concise"): torch_concise.RNNModel,
        ("tf", "scratch"): tf_scratch.RNNModelScratch,
        ("tf", "concise"): tf_concise.RNNModel,
    }
    model = models[backend, variant](V, H, seed=0, cell=cell, num_layers=layers, **kw)
    model.load_canonical_weights(weights)
    return model


def run_pass(backend, model, seed=4):
    X, Y = tokens(seed)
    state0 = initial_state(model.cell, model.num_layers)
    return (torch_pass if backend == "torch" else tf_pass)(model, X, Y, state0)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_shapes_and_canonical_names(backend, variant, cell):
    e = engine(backend, variant, cell=cell, num_layers=2)
    X, _ = tokens()
    state = e.model.begin_state(B)
    assert len(state) == len(CELLS[cell].states)
    assert all(tuple(s.shape) == (2, B, H) for s in state)
    if backend == "torch":
        logits, new = e.model(torch.from_numpy(X), state)
    else:
        logits, new = e.model(tf.constant(X, tf.int32), list(state))
    assert tuple(logits.shape) == (T * B, V)
    assert [tuple(s.shape) for s in new] == [(2, B, H)] * len(state)
    recurrent_bias = cell == "gru" and variant == "concise"
    assert set(e.canonical_weights()) == expected_names(cell, 2, recurrent_bias)


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", ["scratch", "concise"])
def test_uniform_init_draws_every_weight_and_bias_from_pytorchs_range(backend, variant):
    """``init: uniform``: U(-1/sqrt(H), 1/sqrt(H)) everywhere (biases too), seeded; ``default``
    keeps each implementation's own (the book's N(0, 0.01) and zero biases, Keras' Glorot)."""
    hiddens, bound = 64, 64**-0.5

    def stored(**kw) -> list[np.ndarray]:  # as the framework holds them (not canonical sums)
        e = engine(backend, variant, hiddens=hiddens, cell="lstm", num_layers=2, **kw)
        held = e.params if backend == "torch" else e.variables
        return [np.asarray(v.detach() if backend == "torch" else v) for v in held]

    uniform = stored(init="uniform")
    values = np.concatenate([w.ravel() for w in uniform])
    assert np.abs(values).max() <= bound
    assert abs(values.std() - bound / 3**0.5) < 0.02 * bound  # a uniform's standard deviation
    assert all(np.abs(w).max() > bound / 2 for w in uniform)  # biases drawn too
    assert all(np.array_equal(a, b) for a, b in zip(uniform, stored(init="uniform"), strict=True))
    if not (backend == "torch" and variant == "concise"):  # there default is uniform already
        output_layer = stored()[-2]
        assert abs(output_layer.std() - bound / 3**0.5) > 0.2 * bound


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("layers", LAYERS)
def test_torch_scratch_equals_concise(cell, layers, scratch_inputs):
    gru_after = cell == "gru"  # nn.GRU's form: the scratch GRU's reset_after
    weights = random_weights(1, cell=cell, num_layers=layers, recurrent_bias=gru_after)
    scratch = build("torch", "scratch", cell, layers, weights, reset_after=gru_after)
    concise = build("torch", "concise", cell, layers, weights)
    assert_same_pass(run_pass("torch", scratch), run_pass("torch", concise))


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("layers", LAYERS)
def test_tf_scratch_equals_concise(cell, layers):
    weights = random_weights(2, cell=cell, num_layers=layers)
    scratch = build("tf", "scratch", cell, layers, weights)
    concise = build("tf", "concise", cell, layers, weights, reset_after=False)  # the book's GRU
    assert_same_pass(run_pass("tf", scratch), run_pass("tf", concise))


@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("layers", LAYERS)
def test_torch_equals_tf(variant, cell, layers, scratch_inputs):
    if variant == "concise" and scratch_inputs == "one_hot":
        pytest.skip("the scratch input paths do not apply to the concise models")
    recurrent_bias = cell == "gru" and variant == "concise"
    weights = random_weights(3, cell=cell, num_layers=layers, recurrent_bias=recurrent_bias)
    torch_model = build("torch", variant, cell, layers, weights)
    tf_model = build("tf", variant, cell, layers, weights)
    assert_same_pass(run_pass("torch", torch_model), run_pass("tf", tf_model))


def _torch_recurrence_inputs(cell: str, gen: torch.Generator, table: bool = False):
    """A recurrence and its inputs in float64; with ``table``, the input's share as a table of
    4 rows gathered by token ids, as a first layer passes it."""

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.double, generator=gen)).requires_grad_()

    steps, batch, hidden = 5, 2, 3
    gates = CELLS[cell].num_gates
    ids = torch.randint(0, 4, (steps, batch), generator=gen) if table else None
    lead = (4,) if table else (steps, batch)
    xw, h0 = rand(*lead, gates * hidden), rand(batch, hidden)
    W_h = rand(hidden, gates * hidden, scale=0.5)
    if cell == "lstm":
        return torch_rec.LSTMRecurrence.apply, (xw, ids, h0, rand(batch, hidden), W_h)
    if cell == "gru":  # the input's share comes as z and r apart from h
        xw_zr, xw_h = rand(*lead, 2 * hidden), rand(*lead, hidden)
        return torch_rec.GRURecurrence.apply, (xw_zr, xw_h, ids, h0, W_h, None, False)
    return torch_rec.TanhRecurrence.apply, (xw, h0, W_h)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_torch_recurrences_match_finite_differences(cell):
    gen = torch.Generator().manual_seed(0)
    fn, inputs = _torch_recurrence_inputs(cell, gen)
    assert torch.autograd.gradcheck(fn, inputs)
    if cell == "gru":  # PyTorch's form, with its recurrent bias
        xw_zr, xw_h, ids, h0, W_h, _, _ = inputs
        b_hh = torch.randn(3, dtype=torch.double, generator=gen).requires_grad_()
        assert torch.autograd.gradcheck(fn, (xw_zr, xw_h, ids, h0, W_h, b_hh, True))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_recurrences_from_a_table_match_finite_differences(cell):
    """A first layer's input share as a table with token ids: the gradient is each step's
    added into its token's row (repeated ids included: 10 draws from 4 rows)."""
    fn, inputs = _torch_recurrence_inputs(cell, torch.Generator().manual_seed(1), table=True)
    assert torch.autograd.gradcheck(fn, inputs)


def test_torch_one_hot_recurrence_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 3, (5, 2), generator=g)  # (steps, batch) over a 3-token vocabulary
    h0, w_hh, w_xh, b_h = (
        (s * torch.randn(shape, dtype=torch.double, generator=g)).requires_grad_()
        for s, shape in ((1, (2, 4)), (0.5, (4, 4)), (1, (3, 4)), (1, (4,)))
    )
    assert torch.autograd.gradcheck(
        torch_rec.OneHotTanhRecurrence.apply, (ids, h0, w_hh, w_xh, b_h)
    )


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_tf_recurrences_match_finite_differences(cell):
    rng = np.random.default_rng(0)
    steps, batch, hidden = 5, 2, 3
    gates = CELLS[cell].num_gates
    inputs = [
        rng.normal(0, 1, (steps, batch, gates * hidden)),
        rng.normal(0, 1, (batch, hidden)),
    ]
    if cell == "lstm":
        inputs.append(rng.normal(0, 1, (batch, hidden)))
    inputs.append(rng.normal(0, 0.5, (hidden, gates * hidden)))
    inputs = [tf.constant(x, tf.float64) for x in inputs]
    recurrence = {
        "rnn": tf_rec.tanh_recurrence,
        "gru": tf_rec.gru_recurrence,
        "lstm": tf_rec.lstm_recurrence,
    }[cell]
    weights = tf.constant(rng.normal(0, 1, (steps, batch, hidden)), tf.float64)

    def loss(*args):
        out = recurrence(*args)
        hs, extra = (out[0], tf.reduce_sum(tf.sin(out[1]))) if cell == "lstm" else (out, 0.0)
        return tf.reduce_sum(hs * weights) + tf.reduce_sum(tf.cos(hs[-1])) + extra

    theoretical, numerical = tf.test.compute_gradient(loss, inputs)
    for a, b in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # central differences: O(delta^2)
