"""The chapter's RNN from scratch in TensorFlow: explicit W_xh, W_hh, b_h, W_hq, b_q.

As in ``rnn/torch/scratch.py``: the one-hot product is a row gather, the output layer runs once
over all steps, and logits are time-major (row ``t * batch + b``). The time loop is a Python loop
over a static number of steps, unrolled into the graph by ``tf.function``.
"""

from __future__ import annotations

import tensorflow as tf


def normal(shape: tuple[int, ...], generator: tf.random.Generator) -> tf.Tensor:
    return generator.normal(shape, mean=0.0, stddev=0.01, dtype=tf.float32)


class RNNModelScratch(tf.Module):
    def __init__(self, vocab_size: int, num_hiddens: int, seed: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        gen = tf.random.Generator.from_seed(seed if seed is not None else 0)
        self.W_xh = tf.Variable(normal((vocab_size, num_hiddens), gen), name="W_xh")
        self.W_hh = tf.Variable(normal((num_hiddens, num_hiddens), gen), name="W_hh")
        self.b_h = tf.Variable(tf.zeros(num_hiddens), name="b_h")
        self.W_hq = tf.Variable(normal((num_hiddens, vocab_size), gen), name="W_hq")
        self.b_q = tf.Variable(tf.zeros(vocab_size), name="b_q")

    def begin_state(self, batch_size: int) -> tuple[tf.Tensor]:
        return (tf.zeros((batch_size, self.num_hiddens)),)

    def __call__(self, X: tf.Tensor, state: tuple[tf.Tensor]) -> tuple[tf.Tensor, tuple[tf.Tensor]]:
        """X: (batch, steps) token ids -> logits (steps * batch, vocab), new state."""
        (H,) = state
        xw = tf.gather(self.W_xh, tf.transpose(X)) + self.b_h  # == one_hot(X.T) @ W_xh + b_h
        outputs = []
        for t in range(X.shape[1]):
            H = tf.tanh(xw[t] + tf.matmul(H, self.W_hh))
            outputs.append(H)
        hs = tf.reshape(tf.stack(outputs), (-1, self.num_hiddens))
        return tf.matmul(hs, self.W_hq) + self.b_q, (H,)

    def canonical_weights(self) -> dict[str, tf.Variable]:
        return {n: getattr(self, n) for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")}

    def load_canonical_weights(self, weights) -> None:
        for name, value in weights.items():
            getattr(self, name).assign(value)
