"""The chapter's concise RNN in Keras 3: ``SimpleRNNCell`` in an ``RNN`` layer, plus ``Dense``.

Keras 3 has no ``time_major``: the layer runs batch-major and its output is transposed, which
gives the same time-major logits as ``rnn/torch/concise.py``.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class RNNModel(keras.layers.Layer):
    def __init__(self, vocab_size: int, num_hiddens: int, seed: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        cell = keras.layers.SimpleRNNCell(
            num_hiddens,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed),
        )
        self.rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
        self.dense = keras.layers.Dense(
            vocab_size, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
        )
        self.rnn.build((None, None, vocab_size))
        self.dense.build((None, num_hiddens))

    def begin_state(self, batch_size: int, device: str | None = None) -> list[tf.Tensor]:
        with tf.device(device):  # None: TensorFlow's placement, as the engine uses
            return [tf.zeros((batch_size, self.num_hiddens))]

    def call(self, X: tf.Tensor, state: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        Y, *state = self.rnn(tf.one_hot(X, self.vocab_size), initial_state=state)
        Y = tf.transpose(Y, (1, 0, 2))  # (batch, steps, h) -> time-major (steps, batch, h)
        return self.dense(tf.reshape(Y, (-1, self.num_hiddens))), state

    def canonical_weights(self) -> dict[str, tf.Variable]:
        cell = self.rnn.cell
        return {
            "W_xh": cell.kernel,
            "W_hh": cell.recurrent_kernel,
            "b_h": cell.bias,
            "W_hq": self.dense.kernel,
            "b_q": self.dense.bias,
        }

    def load_canonical_weights(self, weights) -> None:
        for name, var in self.canonical_weights().items():
            var.assign(weights[name])
