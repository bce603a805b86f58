"""The chapter's RNN from scratch in TensorFlow: explicit W_xh, W_hh, b_h, W_hq, b_q.

The one-hot product is a row gather, the output layer runs once over all steps, and logits are
time-major (row ``t * batch + b``). The time loop is a Python loop over a static number of steps,
unrolled into the graph by ``tf.function``. As in ``rnn/torch/scratch.py`` the recurrence has a
hand-written backward pass (``tanh_recurrence``): autodiff of the unrolled loop would form W_hh's
gradient as 35 thin products (batch 32 deep), where one product over all steps is ~1.6x faster.
Tests check it against finite differences and against PyTorch.
"""

from __future__ import annotations

import tensorflow as tf


def normal(shape: tuple[int, ...], generator: tf.random.Generator) -> tf.Tensor:
    return generator.normal(shape, mean=0.0, stddev=0.01, dtype=tf.float32)


@tf.custom_gradient
def tanh_recurrence(xw: tf.Tensor, h0: tf.Tensor, W_hh: tf.Tensor):
    """H_t = tanh(XW_t + H_{t-1} @ W_hh) for all t, with a hand-written backward (BPTT) whose
    weight gradient is one product over all steps instead of one small product per step."""
    h, outputs = h0, []
    for t in range(xw.shape[0]):
        h = tf.tanh(xw[t] + tf.matmul(h, W_hh))
        outputs.append(h)
    hs = tf.stack(outputs)

    def backward(grad_hs: tf.Tensor):
        tanh_grad = 1 - hs * hs
        carry, grad_pre = tf.zeros_like(h0), []
        for t in range(xw.shape[0] - 1, -1, -1):
            g = (grad_hs[t] + carry) * tanh_grad[t]
            grad_pre.append(g)
            carry = tf.matmul(g, W_hh, transpose_b=True)
        grad_pre = tf.stack(grad_pre[::-1])
        hidden = W_hh.shape[0]
        prev = tf.reshape(tf.concat([h0[None], hs[:-1]], 0), (-1, hidden))
        grad_w = tf.matmul(prev, tf.reshape(grad_pre, (-1, hidden)), transpose_a=True)
        return grad_pre, carry, grad_w

    return hs, backward


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

    def begin_state(self, batch_size: int, device: str | None = None) -> tuple[tf.Tensor]:
        with tf.device(device):  # None: TensorFlow's placement, as the engine uses
            return (tf.zeros((batch_size, self.num_hiddens)),)

    def __call__(self, X: tf.Tensor, state: tuple[tf.Tensor]) -> tuple[tf.Tensor, tuple[tf.Tensor]]:
        """X: (batch, steps) token ids -> logits (steps * batch, vocab), new state."""
        (H,) = state
        xw = tf.gather(self.W_xh, tf.transpose(X)) + self.b_h  # == one_hot(X.T) @ W_xh + b_h
        hs = tanh_recurrence(xw, H, self.W_hh)
        logits = tf.matmul(tf.reshape(hs, (-1, self.num_hiddens)), self.W_hq) + self.b_q
        return logits, (hs[-1],)

    def canonical_weights(self) -> dict[str, tf.Variable]:
        return {n: getattr(self, n) for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")}

    def load_canonical_weights(self, weights) -> None:
        for name, value in weights.items():
            getattr(self, name).assign(value)
