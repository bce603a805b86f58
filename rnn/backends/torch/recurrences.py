"""One layer's recurrence for each cell, as one autograd node per minibatch with a hand-written
backward pass (BPTT), so autograd does no per-step work.

Every recurrence takes ``xw`` (steps, batch, gates x hidden): the input's contribution to every
gate with its bias, computed for all steps at once outside (one product for a layer below; the
GRU's in two parts, z and r apart from h), and ``W_h`` (hidden, gates x hidden): the recurrent
weights of every gate side by side, in the order of ``rnn.registry.CELLS`` (the book's names: z,
r, h for the GRU; i, f, o, c for the LSTM). Per step the forward runs as few products as the
cell's maths allows (one for the RNN and LSTM; two for the book's GRU, whose reset gate must be
known before it multiplies the candidate's product), and the backward one product per step back
through ``W_h`` plus, for the weight gradient, one large product over all steps. The gradient
with respect to ``xw`` is returned whole, so the input weights' gradients are one product outside
too.

On the CPU in float32 the gated cells' loops run in C (``rnn/backends/torch/cells.c`` through
``fused``): one call for the whole forward pass and one for the backward, the per-step products
included, on weights packed once per minibatch; the weight gradient stays one library product.
Elsewhere (CUDA, float64, ``RNN_TORCH_FUSED=0``, no compiler) the eager loops below run the same
maths; the book's RNN always does.

The gated cells' first layer passes, instead of ``xw``, a table (vocab, gates x hidden: ``W_x +
b`` for each token, what the book's one-hot product computes) with the token ``ids`` (steps,
batch): the C loops read each row's share from the table, which stays in cache, instead of a
gathered copy of the whole sequence (4.5 MB for the LSTM at the book's sizes); the table's
gradient is each step's added into its tokens' rows, in one C pass. Tests check every cell
against finite differences, nn.GRU / nn.LSTM and the book's per-step code, and the C loops
against the eager code, with and without a table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnn.backends.torch import fused
from rnn.backends.torch.kernels import matmul, right_multiplier, tanh_linear

# The book's GRU makes four products a step at half the fused gates' width or less, each with its
# own weight: packing those four for oneDNN every minibatch measured 18% slower over a forward and
# backward pass (32 x 35, 256 units) than the plain products reading the weights in place, and 11%
# slower over whole minibatches (2026-12-04, in-process alternation).
BOOK_GRU_PACKS = False

# One-hot columns make each step's product (hidden + vocab) wide instead of hidden: worth it for
# the fused tanh while vocab is a small share of hidden (characters), not for words.
ONE_HOT_MAX_SHARE = 0.125


def fuses_one_hot(vocab_size: int, num_hiddens: int) -> bool:
    return vocab_size <= num_hiddens * ONE_HOT_MAX_SHARE


def _weight_grad(inputs: Tensor, grads: Tensor) -> Tensor:
    """sum_t inputs[t]^T @ grads[t] as one product; an explicit transposed copy (tiled in C)
    measures faster than letting the library read a strided operand."""
    flat = inputs.reshape(-1, inputs.shape[-1])
    return matmul(fused.transposed(flat), grads.reshape(-1, grads.shape[-1]))


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
    tests use it to prove this code against nn.GRU.

    The input's share comes in two tensors, ``x_zr`` (steps, batch, 2 hidden) and ``x_h``
    (steps, batch, hidden), or two tables with ``ids`` (see the module's notes), and its gradient
    goes back the same way: each step's operands are then contiguous rows with no copy of the
    whole sequence either way.

    Every elementwise factor the eager backward pass needs is computed for all steps at once
    before its loop, so a step there is two or three elementwise operations around its products
    (each operation of PyTorch's eager mode costs a few microseconds however small its
    operands)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x_zr: Tensor,
        x_h: Tensor,
        ids: Tensor | None,
        h0: Tensor,
        W_h: Tensor,
        b_hh: Tensor | None,
        reset_after: bool,
    ) -> Tensor:
        steps, (batch, hidden) = (x_h if ids is None else ids).shape[0], h0.shape
        hs = x_h.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        gates = x_h.new_empty(steps, batch, 2 * hidden)  # Z, R after the sigmoid
        cand = x_h.new_empty(steps, batch, hidden)  # C
        # reset before: R * H, the candidate product's input; reset after: H W_hh + b_hh
        inner = x_h.new_empty(steps, batch, hidden)
        if not reset_after and fused.runs(x_h, steps):  # the whole loop in C (cells.c)
            x_zr, x_h, ids = (a if a is None else a.contiguous() for a in (x_zr, x_h, ids))
            fused.gru_forward(x_zr, x_h, ids, W_h, hs, gates, inner, cand)
        elif reset_after:
            xw_zr, xw_h = _gather(x_zr, ids).contiguous(), _gather(x_h, ids).contiguous()
            times_w = right_multiplier(W_h, batch, steps)
            for t in range(steps):
                g = times_w(hs[t], None)
                torch.sigmoid(g[:, : 2 * hidden].add_(xw_zr[t]), out=gates[t])
                torch.add(g[:, 2 * hidden :], b_hh, out=inner[t])
                torch.tanh(torch.addcmul(xw_h[t], gates[t, :, hidden:], inner[t]), out=cand[t])
                _blend(hs[t], gates[t, :, :hidden], cand[t], out=hs[t + 1])
        else:
            xw_zr, xw_h = _gather(x_zr, ids).contiguous(), _gather(x_h, ids).contiguous()
            times_zr = right_multiplier(W_h[:, : 2 * hidden], batch, steps, pack=BOOK_GRU_PACKS)
            times_hh = right_multiplier(W_h[:, 2 * hidden :], batch, steps, pack=BOOK_GRU_PACKS)
            for t in range(steps):
                torch.sigmoid(times_zr(hs[t], xw_zr[t]), out=gates[t])
                torch.mul(gates[t, :, hidden:], hs[t], out=inner[t])
                torch.tanh(times_hh(inner[t], xw_h[t]), out=cand[t])
                _blend(hs[t], gates[t, :, :hidden], cand[t], out=hs[t + 1])
        ctx.save_for_backward(hs, gates, cand, inner, W_h, ids)
        ctx.reset_after, ctx.table_rows = reset_after, x_h.shape[0]
        return hs[1:]

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        hs, gates, cand, inner, W_h, ids = ctx.saved_tensors
        steps, batch, hidden = cand.shape
        grad_hs = grad_hs.contiguous()
        if not ctx.reset_after and fused.runs(cand, steps):
            back, grad_c, grad_h = fused.gru_backward(grad_hs, gates, cand, hs, W_h)
            grad_w = _book_gru_weight_grad(hs, inner, back, grad_c)
            grad_zr, grad_c = (_table_grad(g, ids, ctx.table_rows) for g in (back, grad_c))
            return grad_zr, grad_c, None, grad_h, grad_w, None, None
        z, r, h_prev = gates[..., :hidden], gates[..., hidden:], hs[:-1]
        # dL/dpre_z = dL/dH' (H - C) Z(1 - Z); dL/dpre_c = dL/dH' (1 - Z)(1 - C^2)
        coef_z = (h_prev - cand).mul_(z).mul_(1 - z)
        coef_c = (1 - z).mul_(1 - cand * cand)
        # dL/dpre_r = (back through W_hh) * H R(1 - R) (reset before) or * inner R(1 - R)
        coef_r = (inner if ctx.reset_after else h_prev) * r * (1 - r)
        # each step's operand of a product must be contiguous: oneDNN re-plans a strided one
        # on every call. reset after: [d_z, d_r, d_inner] goes back through all of W_h
        back = cand.new_empty(steps, batch, (3 if ctx.reset_after else 2) * hidden)
        grad_c = cand.new_empty(steps, batch, hidden)
        if ctx.reset_after:
            times_w_t = right_multiplier(W_h.t(), batch, steps)
        else:
            times_zr_t = right_multiplier(
                W_h[:, : 2 * hidden].t(), batch, steps, pack=BOOK_GRU_PACKS
            )
            times_hh_t = right_multiplier(
                W_h[:, 2 * hidden :].t(), batch, steps, pack=BOOK_GRU_PACKS
            )
        grad_h = grad_hs[steps - 1]
        for t in range(steps - 1, -1, -1):
            torch.mul(grad_h, coef_z[t], out=back[t, :, :hidden])
            torch.mul(grad_h, coef_c[t], out=grad_c[t])
            later = grad_hs[t - 1] if t > 0 else None
            if ctx.reset_after:  # C = tanh(xw_h + R * inner), inner = H W_hh + b_hh
                torch.mul(grad_c[t], coef_r[t], out=back[t, :, hidden : 2 * hidden])
                torch.mul(grad_c[t], r[t], out=back[t, :, 2 * hidden :])
                grad_h = times_w_t(back[t], later).addcmul_(grad_h, z[t])
            else:  # C = tanh(xw_h + (R * H) W_hh)
                d_rh = times_hh_t(grad_c[t], None)
                torch.mul(d_rh, coef_r[t], out=back[t, :, hidden:])
                prev = times_zr_t(back[t], later)
                grad_h = prev.addcmul_(grad_h, z[t]).addcmul_(d_rh, r[t])
        if ctx.reset_after:
            grad_w = _weight_grad(h_prev, back)
            grad_b_hh = back[..., 2 * hidden :].sum((0, 1))
        else:
            grad_w = _book_gru_weight_grad(hs, inner, back, grad_c)
            grad_b_hh = None
        grad_zr, grad_c = (
            _table_grad(g, ids, ctx.table_rows) for g in (back[..., : 2 * hidden], grad_c)
        )
        return grad_zr, grad_c, None, grad_h, grad_w, grad_b_hh, None


def _book_gru_weight_grad(hs: Tensor, inner: Tensor, grad_zr: Tensor, grad_c: Tensor) -> Tensor:
    """dL/dW_h of the book's GRU: sum_t H_t^T [d_z, d_r]_t beside sum_t (R * H)_t^T d_c_t, each
    one product over all steps written into its block of the result (the library reads the
    transposed operand in place: no copy, no concatenation)."""
    hidden = inner.shape[-1]
    grad_w = inner.new_empty(hidden, 3 * hidden)
    torch.mm(_rows(hs[:-1]).t(), _rows(grad_zr), out=grad_w[:, : 2 * hidden])
    torch.mm(_rows(inner).t(), _rows(grad_c), out=grad_w[:, 2 * hidden :])
    return grad_w


def _rows(t: Tensor) -> Tensor:
    """(steps, batch, n) as (steps x batch, n)."""
    return t.reshape(-1, t.shape[-1])


def _blend(h: Tensor, z: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """Z * H + (1 - Z) * C, as C + Z * (H - C)."""
    return torch.addcmul(c, z, h - c, out=out)


class LSTMRecurrence(torch.autograd.Function):
    """The book's LSTM, gates i, f, o and candidate c:
        I, F, O = sig(xw_{i,f,o} + H W_h{i,f,o}), C~ = tanh(xw_c + H W_hc),
        C' = F * C + I * C~, H' = O * tanh(C').
    ``x`` is xw, or a table with ``ids`` (see the module's notes). Returns every H and the last
    memory cell C. As in GRURecurrence, the eager backward pass computes its elementwise factors
    for all steps before its loop."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, ids: Tensor | None, h0: Tensor, c0: Tensor, W_h: Tensor
    ) -> tuple[Tensor, Tensor]:
        steps, (batch, hidden) = (x if ids is None else ids).shape[0], h0.shape
        hs = x.new_empty(steps + 1, batch, hidden)
        cs = x.new_empty(steps + 1, batch, hidden)
        hs[0], cs[0] = h0, c0
        gates = x.new_empty(steps, batch, 4 * hidden)  # after their activations
        tanh_c = x.new_empty(steps, batch, hidden)
        if fused.runs(x, steps):  # the whole loop in C (rnn/backends/torch/cells.c)
            x, ids = x.contiguous(), ids if ids is None else ids.contiguous()
            fused.lstm_forward(x, ids, W_h, hs, cs, gates, tanh_c)
        else:
            xw, times_w = _gather(x, ids), right_multiplier(W_h, batch, steps)
            for t in range(steps):
                pre = times_w(hs[t], xw[t])
                torch.sigmoid(pre[:, : 3 * hidden], out=gates[t, :, : 3 * hidden])
                torch.tanh(pre[:, 3 * hidden :], out=gates[t, :, 3 * hidden :])
                i, f, o, c_new = (gates[t, :, k * hidden : (k + 1) * hidden] for k in range(4))
                torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, c_new)
                torch.tanh(cs[t + 1], out=tanh_c[t])
                torch.mul(o, tanh_c[t], out=hs[t + 1])
        ctx.save_for_backward(hs, cs, gates, tanh_c, W_h, ids)
        ctx.table_rows = x.shape[0]
        return hs[1:], cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_hs: Tensor, grad_c_last: Tensor):  # type: ignore[override]
        hs, cs, gates, tanh_c, W_h, ids = ctx.saved_tensors
        steps, batch, hidden = tanh_c.shape
        grad_hs = grad_hs.contiguous()
        if fused.runs(tanh_c, steps):  # the whole loop in C (rnn/backends/torch/cells.c)
            grad_c = grad_c_last.clone(memory_format=torch.contiguous_format)
            grad_xw, grad_h = fused.lstm_backward(grad_hs, grad_c, gates, cs, tanh_c, W_h)
            grad_x = _table_grad(grad_xw, ids, ctx.table_rows)
            return grad_x, None, grad_h, grad_c, _weight_grad(hs[:-1], grad_xw)
        i, f, o, c_new = (gates[..., k * hidden : (k + 1) * hidden] for k in range(4))
        coef_o = tanh_c * o * (1 - o)  # dL/dpre_o = dL/dH' tanh(C') O(1 - O)
        coef_hc = o * (1 - tanh_c * tanh_c)  # dL/dC' += dL/dH' O(1 - tanh(C')^2)
        # dL/dpre_i = dL/dC' C~ I(1 - I), dL/dpre_f = dL/dC' C F(1 - F), side by side
        coef_if = torch.stack([c_new * i * (1 - i), cs[:-1] * f * (1 - f)], 2)
        coef_cc = i * (1 - c_new * c_new)  # dL/dpre_c = dL/dC' I(1 - C~^2)
        grad_xw = gates.new_empty(steps, batch, 4 * hidden)
        grad_if = grad_xw[..., : 2 * hidden].view(steps, batch, 2, hidden)
        times_w_t = right_multiplier(W_h.t(), batch, steps)
        grad_h, grad_c = grad_hs[steps - 1], grad_c_last.clone()
        for t in range(steps - 1, -1, -1):
            grad_c.addcmul_(grad_h, coef_hc[t])
            torch.mul(grad_h, coef_o[t], out=grad_xw[t, :, 2 * hidden : 3 * hidden])
            torch.mul(grad_c.unsqueeze(1), coef_if[t], out=grad_if[t])
            torch.mul(grad_c, coef_cc[t], out=grad_xw[t, :, 3 * hidden :])
            grad_c.mul_(f[t])
            grad_h = times_w_t(grad_xw[t], grad_hs[t - 1] if t > 0 else None)
        grad_x = _table_grad(grad_xw, ids, ctx.table_rows)
        return grad_x, None, grad_h, grad_c, _weight_grad(hs[:-1], grad_xw)


def _gather(x: Tensor, ids: Tensor | None) -> Tensor:
    """Every step's input share: ``x`` itself, or its rows ``ids`` (steps, batch)."""
    return x if ids is None else nn.functional.embedding(ids, x)


def _table_grad(grad_xw: Tensor, ids: Tensor | None, table_rows: int) -> Tensor:
    """The gradient for the recurrence's input from that of every step's share: itself, or,
    for a table, each step's rows added into the rows of their tokens (in C where it is usable:
    threads take column blocks, rows stay in order, as in index_add_)."""
    if ids is None:
        return grad_xw
    flat = _rows(grad_xw).contiguous()
    table = flat.new_zeros(table_rows, flat.shape[-1])
    if fused.usable(flat):
        fused.scatter_add(flat, ids.contiguous(), table)
        return table
    return table.index_add_(0, ids.reshape(-1), flat)


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
