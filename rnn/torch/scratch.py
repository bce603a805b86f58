"""The chapter's RNN from scratch: explicit parameters W_xh, W_hh, b_h, W_hq, b_q.

The recurrence ``H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)`` is one autograd node per minibatch
(``TanhRecurrence``) with a hand-written backward pass (BPTT), so autograd does no per-step work:
- for a small vocabulary (characters) each step is one fused product
  ``tanh([H_{t-1}, one_hot(x_t)] @ [W_hh; W_xh] + b_h)``, written straight into a buffer that
  already holds the one-hot columns (``kernels.tanh_linear``); for a large one (words) the input
  term is a row gather ``(W_xh + b_h)[x_t]``, added inside the step's product;
- the backward adds the next step's incoming gradient inside the step's product, and the weight
  gradients come from one large product over all steps.
The output layer runs once over all steps. Logits are time-major: row ``t * batch + b``.
Tests prove the maths equal to the chapter's per-step loop, to finite differences and to nn.RNN,
on both input paths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnn.torch.kernels import matmul, right_multiplier, tanh_linear

# One-hot columns make each step's product (hidden + vocab) wide instead of hidden: worth it for
# the fused tanh while vocab is a small share of hidden (characters), not for words.
ONE_HOT_MAX_SHARE = 0.125


def normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator) * 0.01


def fuses_one_hot(vocab_size: int, num_hiddens: int) -> bool:
    return vocab_size <= num_hiddens * ONE_HOT_MAX_SHARE


class TanhRecurrence(torch.autograd.Function):
    """Hidden states ``H_1..H_T`` (steps, batch, hidden) for token ids ``X`` (steps, batch).

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


class RNNModelScratch(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int, seed: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.W_xh = nn.Parameter(normal((vocab_size, num_hiddens), gen))
        self.W_hh = nn.Parameter(normal((num_hiddens, num_hiddens), gen))
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))
        self.W_hq = nn.Parameter(normal((num_hiddens, vocab_size), gen))
        self.b_q = nn.Parameter(torch.zeros(vocab_size))

    def begin_state(self, batch_size: int, device: torch.device | str | None = None):
        return (torch.zeros((batch_size, self.num_hiddens), device=device or self.W_hh.device),)

    def forward(self, X: Tensor, state: tuple[Tensor]) -> tuple[Tensor, tuple[Tensor]]:
        """X: (batch, steps) token ids -> logits (steps * batch, vocab), new state."""
        (h0,) = state
        hs = TanhRecurrence.apply(X.T, h0, self.W_hh, self.W_xh, self.b_h)
        logits = torch.addmm(self.b_q, hs.reshape(-1, self.num_hiddens), self.W_hq)
        return logits, (hs[-1].clone(),)  # a copy: a view would keep the step buffer alive

    def canonical_weights(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).detach() for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")}

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                getattr(self, name).copy_(torch.as_tensor(value))
