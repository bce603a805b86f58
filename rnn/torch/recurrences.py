"""One layer's recurrence for each cell, as one autograd node per minibatch with a hand-written
backward pass (BPTT), so autograd does no per-step work.

Every recurrence takes ``xw`` (steps, batch, gates x hidden): the input's contribution to every
gate with its bias, computed for all steps at once outside (a row gather for token ids, one
product for a layer below), and ``W_h`` (hidden, gates x hidden): the recurrent weights of every
gate side by side, in the order of ``rnn.registry.CELLS`` (the book's names: z, r, h for the
GRU; i, f, o, c for the LSTM). Per step the forward runs as few products as the cell's maths
allows (one for the RNN and LSTM; two for the book's GRU, whose reset gate must be known before
it multiplies the candidate's product), and the backward one product per step back through
``W_h`` plus, for the weight gradient, one large product over all steps. The gradient with
respect to ``xw`` is returned whole, so the input weights' gradients are one product (or a row
scatter) outside too. Tests check every cell against finite differences, nn.GRU / nn.LSTM and
the book's per-step code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnn.torch.kernels import matmul, right_multiplier, tanh_linear

# One-hot columns make each step's product (hidden + vocab) wide instead of hidden: worth it for
# the fused tanh while vocab is a small share of hidden (characters), not for words.
ONE_HOT_MAX_SHARE = 0.125


def fuses_one_hot(vocab_size: int, num_hiddens: int) -> bool:
    return vocab_size <= num_hiddens * ONE_HOT_MAX_SHARE


def _weight_grad(inputs: Tensor, grads: Tensor) -> Tensor:
    """sum_t inputs[t]^T @ grads[t] as one product; an explicit transposed copy measures faster
    than letting the library copy a strided operand."""
    width = inputs.shape[-1]
    return matmul(inputs.reshape(-1, width).t().contiguous(), grads.reshape(-1, grads.shape[-1]))


class TanhRecurrence(torch.autograd.Function):
    """The book's RNN: H_t = tanh(xw_t + H_{t-1} W_hh)."""

    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, W_hh: Tensor) -> Tensor:  # type: ignore[override]
        steps, batch, hidden = xw.shape
        hs = xw.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        times_w = right_multiplier(W_hh, batch, steps)
        for t in range(steps):
            torch.tanh(times_w(hs[t], xw[t]), out=hs[t + 1])
        ctx.save_for_backward(hs, W_hh)
        return hs[1:]

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        hs, W_hh = ctx.saved_tensors
        steps, batch = hs.shape[0] - 1, hs.shape[1]
        grad_hs = grad_hs.contiguous()
        times_w_t = right_multiplier(W_hh.t(), batch, steps)
        grad_pre = torch.addcmul(hs.new_ones(()), hs[1:], hs[1:], value=-1)  # tanh' = 1 - H^2
        grad_h = grad_hs[steps - 1]
        for t in range(steps - 1, 0, -1):
            grad_h = times_w_t(grad_pre[t].mul_(grad_h), grad_hs[t - 1])
        grad_pre[0].mul_(grad_h)
        grad_h0 = times_w_t(grad_pre[0], None) if ctx.needs_input_grad[1] else None
        return grad_pre, grad_h0, _weight_grad(hs[:-1], grad_pre)


class GRURecurrence(torch.autograd.Function):
    """The book's GRU (``reset_after=False``), gates z, r and candidate h:
        Z = sig(xw_z + H W_hz), R = sig(xw_r + H W_hr), C = tanh(xw_h + (R * H) W_hh),
        H' = Z * H + (1 - Z) * C.
    ``reset_after=True`` is PyTorch's and cuDNN's form, with the reset gate applied after the
    product and a recurrent bias ``b_hh`` inside it: C = tanh(xw_h + R * (H W_hh + b_hh)); the
    tests use it to prove this code against nn.GRU."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, xw: Tensor, h0: Tensor, W_h: Tensor, b_hh: Tensor | None, reset_after: bool
    ) -> Tensor:
        steps, batch, hidden = xw.shape[0], xw.shape[1], h0.shape[-1]
        hs = xw.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        gates = xw.new_empty(steps, batch, 2 * hidden)  # Z, R after the sigmoid
        cand = xw.new_empty(steps, batch, hidden)  # C
        # reset before: R * H, the candidate product's input; reset after: H W_hh + b_hh
        inner = xw.new_empty(steps, batch, hidden)
        if reset_after:
            times_w = right_multiplier(W_h, batch, steps)
            for t in range(steps):
                g = times_w(hs[t], None)
                torch.sigmoid(g[:, : 2 * hidden].add_(xw[t, :, : 2 * hidden]), out=gates[t])
                torch.add(g[:, 2 * hidden :], b_hh, out=inner[t])
                torch.tanh(
                    torch.addcmul(xw[t, :, 2 * hidden :], gates[t, :, hidden:], inner[t]),
                    out=cand[t],
                )
                _blend(hs[t], gates[t, :, :hidden], cand[t], out=hs[t + 1])
        else:
            times_zr = right_multiplier(W_h[:, : 2 * hidden].contiguous(), batch, steps)
            times_hh = right_multiplier(W_h[:, 2 * hidden :].contiguous(), batch, steps)
            for t in range(steps):
                torch.sigmoid(times_zr(hs[t], xw[t, :, : 2 * hidden]), out=gates[t])
                torch.mul(gates[t, :, hidden:], hs[t], out=inner[t])
                torch.tanh(times_hh(inner[t], xw[t, :, 2 * hidden :]), out=cand[t])
                _blend(hs[t], gates[t, :, :hidden], cand[t], out=hs[t + 1])
        ctx.save_for_backward(hs, gates, cand, inner, W_h)
        ctx.reset_after = reset_after
        return hs[1:]

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        hs, gates, cand, inner, W_h = ctx.saved_tensors
        steps, batch, hidden = cand.shape
        grad_hs = grad_hs.contiguous()
        grad_xw = cand.new_empty(steps, batch, 3 * hidden)  # pre-activation gradients
        grad_inner = cand.new_empty(steps, batch, hidden) if ctx.reset_after else None
        if ctx.reset_after:
            times_w_t = right_multiplier(W_h.t(), batch, steps)
        else:
            times_zr_t = right_multiplier(W_h[:, : 2 * hidden].t().contiguous(), batch, steps)
            times_hh_t = right_multiplier(W_h[:, 2 * hidden :].t().contiguous(), batch, steps)
        grad_h = grad_hs[steps - 1]
        for t in range(steps - 1, -1, -1):
            z, r, c, h_prev = gates[t, :, :hidden], gates[t, :, hidden:], cand[t], hs[t]
            d_z, d_r, d_c = (grad_xw[t, :, i * hidden : (i + 1) * hidden] for i in range(3))
            # H' = Z * H + (1 - Z) * C
            torch.mul(grad_h, h_prev - c, out=d_z).mul_(z * (1 - z))
            torch.mul(grad_h, 1 - z, out=d_c).mul_(1 - c * c)
            if ctx.reset_after:  # C = tanh(xw_h + R * inner), inner = H W_hh + b_hh
                torch.mul(d_c, inner[t], out=d_r).mul_(r * (1 - r))
                torch.mul(d_c, r, out=grad_inner[t])
                back = torch.cat([d_z, d_r, grad_inner[t]], 1)
                prev = times_w_t(back, None).addcmul_(grad_h, z)
            else:  # C = tanh(xw_h + (R * H) W_hh)
                d_rh = times_hh_t(d_c, None)
                torch.mul(d_rh, h_prev, out=d_r).mul_(r * (1 - r))
                prev = times_zr_t(grad_xw[t, :, : 2 * hidden], None)
                prev.addcmul_(grad_h, z).addcmul_(d_rh, r)
            grad_h = prev + grad_hs[t - 1] if t > 0 else prev
        h_prevs = hs[:-1]
        if ctx.reset_after:
            back = torch.cat([grad_xw[:, :, : 2 * hidden], grad_inner], 2)
            grad_w = _weight_grad(h_prevs, back)
            grad_b_hh = grad_inner.reshape(-1, hidden).sum(0)
        else:
            grad_w = torch.cat(
                [
                    _weight_grad(h_prevs, grad_xw[:, :, : 2 * hidden]),
                    _weight_grad(inner, grad_xw[:, :, 2 * hidden :]),
                ],
                1,
            )
            grad_b_hh = None
        return grad_xw, grad_h, grad_w, grad_b_hh, None


def _blend(h: Tensor, z: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """Z * H + (1 - Z) * C, as C + Z * (H - C)."""
    return torch.addcmul(c, z, h - c, out=out)


class LSTMRecurrence(torch.autograd.Function):
    """The book's LSTM, gates i, f, o and candidate c:
        I, F, O = sig(xw_{i,f,o} + H W_h{i,f,o}), C~ = tanh(xw_c + H W_hc),
        C' = F * C + I * C~, H' = O * tanh(C').
    Returns every H and the last memory cell C."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, xw: Tensor, h0: Tensor, c0: Tensor, W_h: Tensor
    ) -> tuple[Tensor, Tensor]:
        steps, batch, hidden = xw.shape[0], xw.shape[1], h0.shape[-1]
        hs = xw.new_empty(steps + 1, batch, hidden)
        cs = xw.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        gates = xw.new_empty(steps, batch, 4 * hidden)  # after their activations
        tanh_c = xw.new_empty(steps, batch, hidden)
        times_w = right_multiplier(W_h, batch, steps)
        for t in range(steps):
            g = gates[t]
            g.copy_(times_w(hs[t], xw[t]))
            g[:, : 3 * hidden].sigmoid_()
            g[:, 3 * hidden :].tanh_()
            i, f, o, c_new = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
            torch.addcmul(f * cs[t], i, c_new, out=cs[t + 1])
            torch.tanh(cs[t + 1], out=tanh_c[t])
            torch.mul(o, tanh_c[t], out=hs[t + 1])
        ctx.save_for_backward(hs, cs, gates, tanh_c, W_h)
        return hs[1:], cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_hs: Tensor, grad_c_last: Tensor):  # type: ignore[override]
        hs, cs, gates, tanh_c, W_h = ctx.saved_tensors
        steps, batch, hidden = tanh_c.shape
        grad_hs = grad_hs.contiguous()
        grad_xw = gates.new_empty(steps, batch, 4 * hidden)
        times_w_t = right_multiplier(W_h.t(), batch, steps)
        grad_h, grad_c = grad_hs[steps - 1], grad_c_last.clone()
        for t in range(steps - 1, -1, -1):
            g, d = gates[t], grad_xw[t]
            i, f, o, c_new = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
            d_i, d_f, d_o, d_c = (d[:, k * hidden : (k + 1) * hidden] for k in range(4))
            torch.mul(grad_h, tanh_c[t], out=d_o).mul_(o * (1 - o))
            grad_c.addcmul_(grad_h * o, 1 - tanh_c[t] * tanh_c[t])
            torch.mul(grad_c, c_new, out=d_i).mul_(i * (1 - i))
            torch.mul(grad_c, cs[t], out=d_f).mul_(f * (1 - f))
            torch.mul(grad_c, i, out=d_c).mul_(1 - c_new * c_new)
            grad_c.mul_(f)
            prev = times_w_t(d, None)
            grad_h = prev + grad_hs[t - 1] if t > 0 else prev
        return grad_xw, grad_h, grad_c, _weight_grad(hs[:-1], grad_xw)


class OneHotTanhRecurrence(torch.autograd.Function):
    """The first layer of an RNN on a character vocabulary: hidden states ``H_1..H_T`` (steps,
    batch, hidden) for token ids ``X`` (steps, batch). With a small vocabulary each step is one
    fused product ``tanh([H_{t-1}, one_hot(x_t)] @ [W_hh; W_xh] + b_h)``, written straight into a
    buffer that already holds the one-hot columns (``kernels.tanh_linear``); otherwise the input
    term is a row gather ``(W_xh + b_h)[x_t]`` added inside the step's product.

    Both paths keep ``states[t] = [H_t, (one_hot(x_{t+1}))]`` for t = 0..T; the backward needs
    ``H_1..H_T`` and, as the weight gradient's left operand, ``states[0..T-1]``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, X: Tensor, h0: Tensor, W_hh: Tensor, W_xh: Tensor, b_h: Tensor
    ) -> Tensor:
        steps, batch = X.shape
        (vocab, hidden), one_hot = W_xh.shape, fuses_one_hot(*W_xh.shape)
        width = hidden + (vocab if one_hot else 0)
        states = (
            h0.new_zeros(steps + 1, batch, width)
            if one_hot
            else h0.new_empty(steps + 1, batch, width)
        )
        states[0, :, :hidden] = h0
        if one_hot:
            states[:steps, :, hidden:].scatter_(2, X.unsqueeze(-1), 1.0)
            step = tanh_linear(torch.cat([W_hh.t(), W_xh.t()], 1), b_h, batch, steps)
            for t in range(steps):
                states[t + 1, :, :hidden] = step(states[t])
        else:
            xw = nn.functional.embedding(X, W_xh + b_h)  # == one_hot(X) @ W_xh + b_h
            times_w_hh = right_multiplier(W_hh, batch, steps)
            for t in range(steps):
                torch.tanh(times_w_hh(states[t], xw[t]), out=states[t + 1])
        ctx.save_for_backward(X, states, W_hh)
        ctx.vocab_size = vocab
        return states[1:, :, :hidden]

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        X, states, W_hh = ctx.saved_tensors
        steps, batch, width = states.shape[0] - 1, states.shape[1], states.shape[2]
        hidden = W_hh.shape[0]
        hs = states[1:, :, :hidden]
        grad_hs = grad_hs.contiguous()
        times_w_hh_t = right_multiplier(W_hh.t(), batch, steps)
        # gradient wrt the pre-activation: tanh' = 1 - H_t^2, times dL/dH_t (filled in below)
        grad_pre = torch.addcmul(hs.new_ones(()), hs, hs, value=-1)
        grad_h = grad_hs[steps - 1]
        for t in range(steps - 1, 0, -1):
            grad_h = times_w_hh_t(grad_pre[t].mul_(grad_h), grad_hs[t - 1])
        grad_pre[0].mul_(grad_h)
        grad_h0 = times_w_hh_t(grad_pre[0], None) if ctx.needs_input_grad[1] else None
        flat_pre = grad_pre.reshape(-1, hidden)
        # W_hh's gradient (and W_xh's on the one-hot path) summed over all steps in one product;
        # an explicit transposed copy measures faster than letting oneDNN copy a strided operand
        grad_w = matmul(states[:steps].reshape(-1, width).t().contiguous(), flat_pre)
        if width > hidden:
            grad_w_xh = grad_w[hidden:]
        else:  # the gather's gradient: each step's rows added into the rows of its tokens
            grad_w_xh = flat_pre.new_zeros(ctx.vocab_size, hidden)
            grad_w_xh.index_add_(0, X.reshape(-1), flat_pre)
        return None, grad_h0, grad_w[:hidden], grad_w_xh, flat_pre.sum(0)
