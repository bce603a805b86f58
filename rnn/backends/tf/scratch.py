"""The chapter's models from scratch in TensorFlow: RNN, GRU and LSTM cells, one or more stacked
layers; ``rnn/backends/torch/scratch.py`` line for line.

Each layer keeps its gates side by side in three fused variables: ``W_x_l<k>`` (inputs x gates
* hidden), ``W_h_l<k>`` (hidden x gates * hidden) and ``b_l<k>``; ``canonical_weights`` names
them the book's way (see ``rnn/backends/canonical.py``). Weights are drawn from N(0, 0.01), biases are
zero. The first layer's input share of every gate is a row gather of ``W_x`` (what the book's
one-hot product computes), an upper layer's one product over all steps; the recurrence has a
hand-written backward pass (``rnn/backends/tf/recurrences.py``); dropout (while training) sits on each
layer's output; the output layer runs once over all steps; logits are time-major (row
``t * batch + b``). The state is a tuple: (H,) or, for the LSTM, (H, C), each (layers, batch,
hidden).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rnn.backends.canonical import join_gates, split_gates
from rnn.backends.tf.recurrences import gru_recurrence, lstm_recurrence, tanh_recurrence
from rnn.registry import CELLS


def normal(shape: tuple[int, ...], generator: tf.random.Generator) -> tf.Tensor:
    return generator.normal(shape, mean=0.0, stddev=0.01, dtype=tf.float32)


def uniform_init(variables: list[tf.Variable], num_hiddens: int, seed: int) -> None:
    """Every weight and bias redrawn from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's init for its
    recurrent layers (a model's ``init: uniform``), in variable order from the run's seed."""
    generator, bound = tf.random.Generator.from_seed(seed), num_hiddens**-0.5
    for v in variables:
        v.assign(generator.uniform(v.shape, -bound, bound, dtype=v.dtype))


def mask_uniform(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Uniform [0, 1) numbers for dropout masks: a counter hash (murmur3's finaliser over the
    element index, keyed by the int64 seed pair) in 32-bit integer ops. TensorFlow's stateless
    generators give other numbers under XLA than in a plain graph, even with a named algorithm and
    explicit key and counter (measured), and a data-parallel epoch cannot be XLA-compiled: this
    gives the same masks in both, so one process and several drop the same units."""
    low = tf.cast(tf.bitwise.bitwise_and(seed, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(seed, 32), tf.uint32)
    h = tf.cast(tf.range(tf.reduce_prod(shape), dtype=tf.int64), tf.uint32)
    h = h * tf.constant(0x9E3779B1, tf.uint32) + tf.bitwise.bitwise_xor(low[0], high[0])
    for key in (low[1], high[1]):
        h = tf.bitwise.bitwise_xor(h, key)
        for shift, multiplier in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(shift, tf.uint32)))
            h = h * tf.constant(multiplier, tf.uint32)
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
    top24 = tf.bitwise.right_shift(h, tf.constant(8, tf.uint32))
    return tf.reshape(tf.cast(top24, tf.float32) / 16777216.0, shape)


def dropout(
    x: tf.Tensor, p: float, seed: tf.Tensor | None, shard=(0, 1), rows_axis: int = 1
) -> tf.Tensor:
    """Inverted dropout with a stateless mask from ``seed`` (a pair the engine derives from the
    run's seed, the epoch, the minibatch and the layer), so a resumed run draws the same masks.
    ``shard`` (rank, world size): the mask is drawn for the global batch and this rank's block of
    rows (along ``rows_axis``) cut from it, so data parallelism drops what one process would."""
    if p == 0 or seed is None:
        return x
    rank, size = shard
    if size == 1:
        keep = mask_uniform(tf.shape(x), seed) >= p
    else:
        rows = tf.shape(x)[rows_axis]
        shape = tf.tensor_scatter_nd_update(tf.shape(x), [[rows_axis]], [rows * size])
        full = mask_uniform(shape, seed) >= p
        keep = tf.gather(full, tf.range(rank * rows, (rank + 1) * rows), axis=rows_axis)
    return x * tf.cast(keep, x.dtype) / (1 - p)


def layer_seed(seed: tf.Tensor | None, layer: int) -> tf.Tensor | None:
    return None if seed is None else seed + tf.constant([0, layer], dtype=seed.dtype)


class RNNModelScratch(tf.Module):
    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        seed: int | None = None,
        cell: str = "rnn",
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.cell, self.num_layers, self.dropout = cell, num_layers, dropout
        self.mask_shard = (0, 1)  # (rank, world size): set by a data-parallel engine
        gates = CELLS[cell].num_gates
        gen = tf.random.Generator.from_seed(seed if seed is not None else 0)
        self.layers = []
        for k in range(num_layers):
            inputs = vocab_size if k == 0 else num_hiddens
            W_x = tf.Variable(normal((inputs, gates * num_hiddens), gen), name=f"W_x_l{k}")
            W_h = tf.Variable(normal((num_hiddens, gates * num_hiddens), gen), name=f"W_h_l{k}")
            b = tf.Variable(tf.zeros(gates * num_hiddens), name=f"b_l{k}")
            self.layers.append((W_x, W_h, b))
        self.W_hq = tf.Variable(normal((num_hiddens, vocab_size), gen), name="W_hq")
        self.b_q = tf.Variable(tf.zeros(vocab_size), name="b_q")

    @property
    def ordered_variables(self) -> list[tf.Variable]:
        return [v for layer in self.layers for v in layer] + [self.W_hq, self.b_q]

    @property
    def weight_matrices(self) -> list[bool]:
        """Per ordered variable: a weight matrix (not a bias)."""
        return [len(v.shape) == 2 for v in self.ordered_variables]

    def begin_state(self, batch_size: int, device: str | None = None) -> tuple[tf.Tensor, ...]:
        with tf.device(device):  # None: TensorFlow's placement, as the engine uses
            shape = (self.num_layers, batch_size, self.num_hiddens)
            return tuple(tf.zeros(shape) for _ in CELLS[self.cell].states)

    def __call__(
        self, X: tf.Tensor, state: tuple[tf.Tensor, ...], seed: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """X: (batch, steps) token ids -> logits (steps * batch, vocab), new state. Dropout masks
        come from ``seed`` (none: no dropout, as in evaluation)."""
        below = None
        finals: list[list[tf.Tensor]] = [[] for _ in state]
        for k, (W_x, W_h, b) in enumerate(self.layers):
            if below is None:
                xw = tf.gather(W_x, tf.transpose(X)) + b  # == one_hot(X.T) @ W_x + b
            else:
                flat = tf.matmul(tf.reshape(below, (-1, self.num_hiddens)), W_x) + b
                xw = tf.reshape(flat, (tf.shape(below)[0], tf.shape(below)[1], -1))
            if self.cell == "lstm":
                hs, c_last = lstm_recurrence(xw, state[0][k], state[1][k], W_h)
                last = [hs[-1], c_last]
            else:
                recurrence = tanh_recurrence if self.cell == "rnn" else gru_recurrence
                hs = recurrence(xw, state[0][k], W_h)
                last = [hs[-1]]
            for kept, s in zip(finals, last, strict=True):
                kept.append(s)
            below = dropout(hs, self.dropout, layer_seed(seed, k), self.mask_shard)  # time-major
        logits = tf.matmul(tf.reshape(below, (-1, self.num_hiddens)), self.W_hq) + self.b_q
        return logits, tuple(tf.stack(s) for s in finals)

    def canonical_weights(self) -> dict[str, tf.Tensor]:
        out: dict[str, tf.Tensor] = {}
        for k, layer in enumerate(self.layers):
            out.update(split_gates(self.cell, k, *(tf.convert_to_tensor(v) for v in layer)))
        out["W_hq"], out["b_q"] = tf.convert_to_tensor(self.W_hq), tf.convert_to_tensor(self.b_q)
        return out

    def load_canonical_weights(self, weights) -> None:
        arrays = {n: np.asarray(v) for n, v in weights.items()}
        for k, layer in enumerate(self.layers):
            for var, value in zip(layer, join_gates(self.cell, k, arrays), strict=True):
                var.assign(value)
        self.W_hq.assign(arrays["W_hq"])
        self.b_q.assign(arrays["b_q"])
