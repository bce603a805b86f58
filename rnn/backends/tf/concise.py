"""The chapter's concise models in Keras 3: ``SimpleRNNCell``, ``GRUCell`` or ``LSTMCell`` in
``RNN`` layers, plus ``Dense``; ``rnn/backends/torch/concise.py`` line for line.

Keras 3 has no ``time_major``: the layers run batch-major and the output is transposed, which
gives the same time-major logits as PyTorch. The GRU is Keras' default ``reset_after`` form,
which is PyTorch's (``nn.GRU``); ``reset_after=False`` is the book's form, which the tests use to
prove the scratch GRU against Keras. Layers are stacked as separate ``RNN`` layers with dropout
between them drawn from the engine's stateless seeds. The state is a tuple: (H,) or, for the
LSTM, (H, C), each (layers, batch, hidden).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rnn.backends.canonical import GRU_RECURRENT_BIAS
from rnn.backends.tf.scratch import dropout, layer_seed
from rnn.registry import CELLS

KERAS_CELLS = {
    "rnn": keras.layers.SimpleRNNCell,
    "gru": keras.layers.GRUCell,
    "lstm": keras.layers.LSTMCell,
}
# Canonical gate (registry order) -> the column block of Keras' stacked kernels.
KERAS_BLOCK = {
    "rnn": {"h": 0},
    "gru": {"z": 0, "r": 1, "h": 2},
    "lstm": {"i": 0, "f": 1, "c": 2, "o": 3},
}


class RNNModel(keras.layers.Layer):
    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        seed: int | None = None,
        cell: str = "rnn",
        num_layers: int = 1,
        dropout: float = 0.0,
        reset_after: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.cell, self.num_layers, self.dropout = cell, num_layers, dropout
        self.mask_shard = (0, 1)  # (rank, world size): set by a data-parallel engine
        self.rnns = []
        for k in range(num_layers):
            layer_seed_k = None if seed is None else seed + k
            options = {"reset_after": reset_after} if cell == "gru" else {}
            rnn_cell = KERAS_CELLS[cell](
                num_hiddens,
                kernel_initializer=keras.initializers.GlorotUniform(seed=layer_seed_k),
                recurrent_initializer=keras.initializers.Orthogonal(seed=layer_seed_k),
                **options,
            )
            rnn = keras.layers.RNN(rnn_cell, return_sequences=True, return_state=True)
            rnn.build((None, None, vocab_size if k == 0 else num_hiddens))
            self.rnns.append(rnn)
        self.dense = keras.layers.Dense(
            vocab_size, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
        )
        self.dense.build((None, num_hiddens))

    @property
    def ordered_variables(self) -> list[tf.Variable]:
        cells = [rnn.cell for rnn in self.rnns]
        return [v for c in cells for v in (c.kernel, c.recurrent_kernel, c.bias)] + [
            self.dense.kernel,
            self.dense.bias,
        ]

    @property
    def weight_matrices(self) -> list[bool]:
        """Per ordered variable: a weight matrix (not a bias; the GRU's bias is 2 x gates)."""
        return [True, True, False] * len(self.rnns) + [True, False]

    def begin_state(self, batch_size: int, device: str | None = None) -> tuple[tf.Tensor, ...]:
        with tf.device(device):  # None: TensorFlow's placement, as the engine uses
            shape = (self.num_layers, batch_size, self.num_hiddens)
            return tuple(tf.zeros(shape) for _ in CELLS[self.cell].states)

    def call(
        self, X: tf.Tensor, state: tuple[tf.Tensor, ...], seed: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        Y = tf.one_hot(X, self.vocab_size)  # batch-major (batch, steps, vocab)
        finals: list[list[tf.Tensor]] = [[] for _ in state]
        for k, rnn in enumerate(self.rnns):
            Y, *last = rnn(Y, initial_state=[s[k] for s in state])
            for kept, s in zip(finals, last, strict=True):
                kept.append(s)
            Y = dropout(Y, self.dropout, layer_seed(seed, k), self.mask_shard, rows_axis=0)
        Y = tf.transpose(Y, (1, 0, 2))  # (batch, steps, h) -> time-major (steps, batch, h)
        logits = self.dense(tf.reshape(Y, (-1, self.num_hiddens)))
        return logits, tuple(tf.stack(s) for s in finals)

    def canonical_weights(self) -> dict[str, tf.Tensor]:
        """The same maths in the book's names: the GRU's input and recurrent biases summed per
        gate (its recurrent candidate bias stays apart: the reset gate multiplies it)."""
        out: dict[str, tf.Tensor] = {}
        h = self.num_hiddens
        for k, rnn in enumerate(self.rnns):
            c = rnn.cell
            kernel, recurrent = (
                tf.convert_to_tensor(c.kernel),
                tf.convert_to_tensor(c.recurrent_kernel),
            )
            bias = tf.convert_to_tensor(c.bias)
            for gate, block in KERAS_BLOCK[self.cell].items():
                cols = slice(block * h, (block + 1) * h)
                out[f"W_x{gate}_l{k}"] = kernel[:, cols]
                out[f"W_h{gate}_l{k}"] = recurrent[:, cols]
                if len(bias.shape) == 1:  # one bias per gate (not the reset-after GRU)
                    out[f"b_{gate}_l{k}"] = bias[cols]
                elif gate == "h":
                    out[f"b_h_l{k}"] = bias[0, cols]
                    out[f"{GRU_RECURRENT_BIAS}_l{k}"] = bias[1, cols]
                else:
                    out[f"b_{gate}_l{k}"] = bias[0, cols] + bias[1, cols]
        out["W_hq"] = tf.convert_to_tensor(self.dense.kernel)
        out["b_q"] = tf.convert_to_tensor(self.dense.bias)
        return out

    def load_canonical_weights(self, weights) -> None:
        w = {n: np.asarray(v) for n, v in weights.items()}
        h = self.num_hiddens
        for k, rnn in enumerate(self.rnns):
            c = rnn.cell
            kernel, recurrent = np.array(c.kernel.numpy()), np.array(c.recurrent_kernel.numpy())
            bias = np.zeros(c.bias.shape, np.float32)
            for gate, block in KERAS_BLOCK[self.cell].items():
                cols = slice(block * h, (block + 1) * h)
                kernel[:, cols], recurrent[:, cols] = w[f"W_x{gate}_l{k}"], w[f"W_h{gate}_l{k}"]
                if bias.ndim == 1:
                    bias[cols] = w[f"b_{gate}_l{k}"]
                else:
                    bias[0, cols] = w[f"b_{gate}_l{k}"]
                    if gate == "h":
                        bias[1, cols] = w[f"{GRU_RECURRENT_BIAS}_l{k}"]
            c.kernel.assign(kernel)
            c.recurrent_kernel.assign(recurrent)
            c.bias.assign(bias)
        self.dense.kernel.assign(w["W_hq"])
        self.dense.bias.assign(w["b_q"])
