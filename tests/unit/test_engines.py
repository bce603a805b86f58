"""Both engines against the book's training loop, written out plainly, and against each other."""

import numpy as np
import pytest
import tensorflow as tf
import torch
from torch.nn import functional as F

from rnn.backends.tf.recurrences import tanh_recurrence
from rnn.data.partition import epoch_minibatches
from tests.support.models_util import B, H, T, V, engine, random_weights, tokens

VARIANTS = ["scratch", "concise"]


def corpus(n=600, seed=0):
    return np.random.default_rng(seed).integers(0, V, n)


def forward_logits(backend: str, e, X: np.ndarray) -> np.ndarray:
    """The engine's model on token ids ``X`` (batch, steps) from a fresh state: time-major logits."""
    m = e.model
    if backend == "torch":
        logits, _ = m(torch.from_numpy(X), m.begin_state(X.shape[0]))
        return logits.detach().numpy()
    logits, _ = m(tf.constant(X, tf.int32), list(m.begin_state(X.shape[0])))
    return logits.numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_and_tf_agree_on_logits_for_the_same_weights(variant, scratch_inputs):
    weights = random_weights(1)
    X, _ = tokens(2)
    outs = []
    for backend in ("torch", "tf"):
        e = engine(backend, variant)
        e.load_canonical_weights(weights)
        outs.append(forward_logits(backend, e, X))
    assert outs[0].shape == (T * B, V)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tf_scratch_and_concise_and_torch_agree_on_gradients(variant, scratch_inputs):
    weights = random_weights(3)
    X, Y = tokens(4)
    tf_e = engine("tf", variant)
    tf_e.load_canonical_weights(weights)
    with tf.GradientTape() as tape:
        logits, _ = tf_e.model(tf.constant(X, tf.int32), list(tf_e.model.begin_state(B)))
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.reshape(tf.transpose(Y), [-1]), logits
            )
        )
    tf_grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, tf_e.variables)]
    th = engine("torch", "scratch")
    th.load_canonical_weights(weights)
    logits, _ = th.model(torch.from_numpy(X), th.model.begin_state(B))
    F.cross_entropy(logits, torch.from_numpy(Y).T.reshape(-1)).backward()
    torch_grads = [p.grad for p in (*th.model.layer(0), th.model.W_hq, th.model.b_q)]
    tf_grads = dict(zip([id(v) for v in tf_e.variables], tf_grads, strict=True))
    if variant == "scratch":
        ordered = [
            tf_grads[id(v)] for v in (*tf_e.model.layers[0], tf_e.model.W_hq, tf_e.model.b_q)
        ]
    else:
        cell, dense = tf_e.model.rnns[0].cell, tf_e.model.dense
        ordered = [
            tf_grads[id(v)]
            for v in (cell.kernel, cell.recurrent_kernel, cell.bias, dense.kernel, dense.bias)
        ]
    for a, b in zip(ordered, torch_grads, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)


def test_tf_scratch_gradient_matches_finite_differences():
    e = engine("tf", "scratch")
    e.load_canonical_weights(random_weights(5))
    X, Y = tokens(6)
    labels = tf.reshape(tf.transpose(Y), [-1])

    def loss():
        logits, _ = e.model(tf.constant(X, tf.int32), list(e.model.begin_state(B)))
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    with tf.GradientTape() as tape:
        value = loss()
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, e.variables)]
    rng = np.random.default_rng(0)
    eps = 1e-2
    for var, grad in zip(e.variables, grads, strict=True):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in var.shape)
            original = var.numpy()
            bumped = original.copy()
            bumped[idx] += eps
            var.assign(bumped)
            up = float(loss())
            bumped[idx] -= 2 * eps
            var.assign(bumped)
            down = float(loss())
            var.assign(original)
            assert abs((up - down) / (2 * eps) - grad[idx]) < 2e-3


def test_tf_hand_written_bptt_equals_autodiff_including_state_gradients():
    """Gradients reaching h0 and arriving through the last state, against TF's own autodiff."""
    rng = np.random.default_rng(7)
    xw = tf.constant(rng.normal(0, 0.5, (T, B, H)), tf.float32)
    h0 = tf.Variable(rng.normal(0, 0.5, (B, H)), dtype=tf.float32)
    W_hh = tf.Variable(rng.normal(0, 0.3, (H, H)), dtype=tf.float32)
    weights = tf.constant(rng.normal(0, 1, (T, B, H)), tf.float32)

    def plain(xw, h0, W_hh):
        h, hs = h0, []
        for t in range(T):
            h = tf.tanh(xw[t] + tf.matmul(h, W_hh))
            hs.append(h)
        return tf.stack(hs)

    grads = []
    for recurrence in (tanh_recurrence, plain):
        with tf.GradientTape() as tape:
            tape.watch(xw)
            hs = recurrence(xw, h0, W_hh)
            loss = tf.reduce_sum(hs * weights) + tf.reduce_sum(tf.sin(hs[-1]))
        grads.append(tape.gradient(loss, [xw, h0, W_hh]))
    for ours, reference in zip(*grads, strict=True):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)


def book_epoch(backend, e, xs, ys, sampling, lr=1.0, theta=1.0):
    """The chapter's loop, eager and unoptimised, on the engine's model; returns the loss sum."""
    m, total, state = e.model, 0.0, None
    for X, Y in zip(xs, ys, strict=True):
        if backend == "torch":
            if state is None or sampling == "random":
                state = m.begin_state(X.shape[0])
            else:
                state = (
                    tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
                )
            logits, state = m(torch.from_numpy(X.astype(np.int64)), state)
            loss = F.cross_entropy(logits, torch.from_numpy(Y.T.reshape(-1).astype(np.int64)))
            params = list(m.parameters())
            for p in params:
                p.grad = None
            loss.backward()
            norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))
            with torch.no_grad():
                for p in params:
                    if norm > theta:
                        p.grad *= theta / norm
                    p -= lr * p.grad
            loss = loss.detach()
        else:
            if state is None or sampling == "random":
                state = list(m.begin_state(X.shape[0]))
            with tf.GradientTape() as tape:
                logits, state = m(tf.constant(X, tf.int32), list(state))
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(Y.T.reshape(-1), logits)
                )
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, e.variables)]
            grads, _ = tf.clip_by_global_norm(grads, theta)
            for v, g in zip(e.variables, grads, strict=True):
                v.assign_sub(lr * g)
        total += float(loss) * Y.size
    return total


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("sampling", ["sequential", "random"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_engine_epoch_equals_the_books_loop(backend, variant, sampling, cell, scratch_inputs):
    """Same losses and weights as the plain loop: state carried + detached (sequential) or reset
    (random). An engine that reset the state in sequential mode, or carried it in random mode,
    would see other inputs to every minibatch after the first and fail; one whose gradient
    flowed back into the previous minibatch (TensorFlow's compiled epoch holds them all) would
    end with other weights. Gated cells run two layers, so their states carry per layer."""
    if scratch_inputs == "one_hot" and (variant == "concise" or cell != "rnn"):
        pytest.skip("the one-hot input path is the scratch RNN's first layer's only")
    layers = 1 if cell == "rnn" else 2
    xs, ys = epoch_minibatches(corpus(), 4, 7, sampling, seed=0, epoch=0)
    fast = engine(backend, variant, cell=cell, num_layers=layers)
    plain = engine(backend, variant, cell=cell, num_layers=layers)
    recurrent_bias = cell == "gru" and variant == "concise"
    weights = random_weights(7, cell=cell, num_layers=layers, recurrent_bias=recurrent_bias)
    fast.load_canonical_weights(weights)
    plain.load_canonical_weights(weights)
    got, count = fast.train_epoch(xs, ys, sampling)
    want = book_epoch(backend, plain, xs, ys, sampling)
    assert count == xs.size
    assert got == pytest.approx(want, rel=1e-5)
    for k, v in fast.canonical_weights().items():
        np.testing.assert_allclose(v, plain.canonical_weights()[k], atol=1e-5)
    # And the state really matters: a model fed fresh state each time ends elsewhere.
    if sampling == "sequential":
        other = engine(backend, variant, cell=cell, num_layers=layers)
        other.load_canonical_weights(weights)
        assert other.train_epoch(xs, ys, "random")[0] != pytest.approx(got, rel=1e-7)


def test_torch_state_is_detached_between_minibatches(scratch_inputs):
    """Truncated BPTT: the state handed to the next minibatch carries no graph. (TensorFlow's
    state leaves each step's tape by construction; the book-loop test above checks its weights.)"""
    from rnn.backends.torch.engine import detach_state

    e = engine("torch", "scratch")
    e.load_canonical_weights(random_weights(8))
    xs, ys = epoch_minibatches(corpus(), 4, 7, "sequential", seed=0, epoch=0)
    _, state = e.train_step(
        torch.from_numpy(xs[0].astype(np.int64)),
        torch.from_numpy(ys[0].astype(np.int64)),
        e.model.begin_state(4),
        lr=1.0,
    )
    assert all(s.grad_fn is not None for s in state)  # the raw state is still in the graph
    assert all(s.grad_fn is None for s in detach_state(state))


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_greedy_and_sampled(backend, variant, scratch_inputs):
    e = engine(backend, variant)
    e.load_canonical_weights(random_weights(5))  # distinct logits: no near-ties in the argmax
    greedy = e.generate([1, 2, 3], 10)
    assert greedy[:3] == [1, 2, 3] and len(greedy) == 13
    # The book's predict: each generated token is the argmax after reading everything before
    # it, prefix included (one forward pass over the whole sequence gives those logits).
    logits = forward_logits(backend, e, np.array([greedy[:-1]]))
    assert greedy[3:] == [int(i) for i in logits.argmax(axis=1)[2:]]
    assert e.generate([1, 2, 3], 10) == greedy
    assert e.generate([1, 2, 3], 10, temperature=1.0, top_k=1) == greedy  # top-1 is greedy
    a = e.generate([1], 20, temperature=2.0, top_k=5, seed=3)
    assert a == e.generate([1], 20, temperature=2.0, top_k=5, seed=3)
    assert a != e.generate([1], 20, temperature=2.0, top_k=5, seed=4)


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_missing_device_is_a_clear_error(backend):
    from rnn.errors import PipelineError

    has_gpu = (
        torch.cuda.is_available() if backend == "torch" else tf.config.list_physical_devices("GPU")
    )
    if has_gpu:
        pytest.skip("this machine has a GPU")
    with pytest.raises(PipelineError, match=r"no (CUDA device|GPU)"):
        engine(backend, "scratch", device="cuda")
    assert engine(backend, "scratch", device="auto").num_params() == V * H + H * H + H + H * V + V


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_changes_every_parameter(backend, variant, scratch_inputs):
    e = engine(backend, variant)
    before = {k: v.copy() for k, v in e.canonical_weights().items()}
    xs, ys = (a[None] for a in tokens())
    e.train_epoch(xs, ys, "sequential")
    after = e.canonical_weights()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
