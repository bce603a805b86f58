"""One layer's recurrence for each cell with a hand-written backward pass (BPTT), mirroring
``rnn/backends/torch/recurrences.py``: ``xw`` (steps, batch, gates x hidden) is the input's share of every
gate with its bias, ``W_h`` (hidden, gates x hidden) the recurrent weights of every gate side by
side in the registry's order. The forward time loop is a Python loop over a static number of steps,
unrolled into the graph (and XLA-compiled with the epoch). The gated cells' backward loops are
graph ``while`` loops instead: unrolled, a gradient that flows from step to step through
elementwise operations alone (the LSTM's dL/dC, the GRU's dL/dH through Z) is fused by XLA
into every later step's kernel and recomputed from the last step each time, quadratic in the
steps (the LSTM's backward took 4x its products' time); a loop's carried values are
materialised once per step. Autodiff of the unrolled loop would
form W_h's gradient as one thin product per step (batch deep); here it is one product over all
steps. Tests check each against finite differences and against PyTorch.
"""

from __future__ import annotations

import tensorflow as tf


def _weight_grad(inputs: list[tf.Tensor] | tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """sum_t inputs[t]^T @ grads[t] as one product."""
    inputs = tf.stack(inputs) if isinstance(inputs, list) else inputs
    width, out = inputs.shape[-1], grads.shape[-1]
    return tf.matmul(
        tf.reshape(inputs, (-1, width)), tf.reshape(grads, (-1, out)), transpose_a=True
    )


def _later(grad_hs: tf.Tensor) -> tf.Tensor:
    """The loss's own gradient at H_{t-1} for each step t (zero for t = 0), which the backward
    pass adds to what flows back from step t."""
    return tf.concat([tf.zeros_like(grad_hs[:1]), grad_hs[:-1]], 0)


def _steps_array(steps: int, like: tf.Tensor) -> tf.TensorArray:
    """One slot per step for a backward loop's per-step gradients (written in place under XLA),
    of ``like``'s dtype."""
    return tf.TensorArray(like.dtype, size=steps)


@tf.custom_gradient
def tanh_recurrence(xw: tf.Tensor, h0: tf.Tensor, W_hh: tf.Tensor):
    """The book's RNN: H_t = tanh(xw_t + H_{t-1} W_hh) for all t."""
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
        prev = tf.concat([h0[None], hs[:-1]], 0)
        return grad_pre, carry, _weight_grad(prev, grad_pre)

    return hs, backward


@tf.custom_gradient
def gru_recurrence(xw: tf.Tensor, h0: tf.Tensor, W_h: tf.Tensor):
    """The book's GRU, gates z, r and candidate h:
    Z = sig(xw_z + H W_hz), R = sig(xw_r + H W_hr), C = tanh(xw_h + (R * H) W_hh),
    H' = Z * H + (1 - Z) * C."""
    hidden = h0.shape[-1]
    W_zr, W_hh = W_h[:, : 2 * hidden], W_h[:, 2 * hidden :]
    h, prevs, zs, rs, cands, rhs = h0, [], [], [], [], []
    for t in range(xw.shape[0]):
        zr = tf.sigmoid(xw[t, :, : 2 * hidden] + tf.matmul(h, W_zr))
        z, r = zr[:, :hidden], zr[:, hidden:]
        rh = r * h
        c = tf.tanh(xw[t, :, 2 * hidden :] + tf.matmul(rh, W_hh))
        for kept, value in zip((prevs, zs, rs, cands, rhs), (h, z, r, c, rh), strict=True):
            kept.append(value)
        h = c + z * (h - c)
    hs = tf.stack([*prevs[1:], h])

    def backward(grad_hs: tf.Tensor):
        z_all, r_all, c_all, prev_all = (tf.stack(v) for v in (zs, rs, cands, prevs))
        later = _later(grad_hs)

        def step(t, grad_h, grads_zr, grads_c):
            z, r, c, h_prev = z_all[t], r_all[t], c_all[t], prev_all[t]
            d_z = grad_h * (h_prev - c) * z * (1 - z)
            d_c = grad_h * (1 - z) * (1 - c * c)
            d_rh = tf.matmul(d_c, W_hh, transpose_b=True)
            d_r = d_rh * h_prev * r * (1 - r)
            d_zr = tf.concat([d_z, d_r], 1)
            grad_h = grad_h * z + d_rh * r + tf.matmul(d_zr, W_zr, transpose_b=True) + later[t]
            return t - 1, grad_h, grads_zr.write(t, d_zr), grads_c.write(t, d_c)

        steps = xw.shape[0]
        _, grad_h, grads_zr, grads_c = tf.while_loop(
            lambda t, *_: t >= 0,
            step,
            (tf.constant(steps - 1), grad_hs[-1], *(_steps_array(steps, xw) for _ in range(2))),
        )
        grads_zr, grads_c = grads_zr.stack(), grads_c.stack()
        grad_w = tf.concat([_weight_grad(prev_all, grads_zr), _weight_grad(rhs, grads_c)], 1)
        return tf.concat([grads_zr, grads_c], 2), grad_h, grad_w

    return hs, backward


@tf.custom_gradient
def lstm_recurrence(xw: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, W_h: tf.Tensor):
    """The book's LSTM, gates i, f, o and candidate c:
    I, F, O = sig(xw_{i,f,o} + H W_h{i,f,o}), C~ = tanh(xw_c + H W_hc), C' = F * C + I * C~,
    H' = O * tanh(C'). Returns every H and the last memory cell."""
    hidden = h0.shape[-1]
    h, c, prevs, cs, gates, tanh_cs = h0, c0, [], [], [], []
    for t in range(xw.shape[0]):
        pre = xw[t] + tf.matmul(h, W_h)
        g = tf.concat([tf.sigmoid(pre[:, : 3 * hidden]), tf.tanh(pre[:, 3 * hidden :])], 1)
        i, f, o, c_new = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
        prevs.append(h)
        cs.append(c)
        gates.append(g)
        c = f * c + i * c_new
        tanh_c = tf.tanh(c)
        h = o * tanh_c
        tanh_cs.append(tanh_c)
    hs = tf.stack([*prevs[1:], h])

    def backward(grad_hs: tf.Tensor, grad_c_last: tf.Tensor):
        gate_all, c_all, tanh_all = (tf.stack(v) for v in (gates, cs, tanh_cs))
        later = _later(grad_hs)

        def step(t, grad_h, grad_c, grads):
            i, f, o, c_new = (gate_all[t][:, k * hidden : (k + 1) * hidden] for k in range(4))
            tanh_c = tanh_all[t]
            d_o = grad_h * tanh_c * o * (1 - o)
            grad_c = grad_c + grad_h * o * (1 - tanh_c * tanh_c)
            d_i = grad_c * c_new * i * (1 - i)
            d_f = grad_c * c_all[t] * f * (1 - f)
            d_c = grad_c * i * (1 - c_new * c_new)
            d = tf.concat([d_i, d_f, d_o, d_c], 1)
            grad_h = tf.matmul(d, W_h, transpose_b=True) + later[t]
            return t - 1, grad_h, grad_c * f, grads.write(t, d)

        steps = xw.shape[0]
        grad_c = tf.zeros_like(c0) if grad_c_last is None else grad_c_last
        _, grad_h, grad_c, grads = tf.while_loop(
            lambda t, *_: t >= 0,
            step,
            (tf.constant(steps - 1), grad_hs[-1], grad_c, _steps_array(steps, xw)),
        )
        grads = grads.stack()
        return grads, grad_h, grad_c, _weight_grad(prevs, grads)

    return (hs, c), backward
