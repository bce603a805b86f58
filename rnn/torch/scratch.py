"""The chapter's RNN from scratch: explicit parameters W_xh, W_hh, b_h, W_hq, b_q.

The recurrence ``H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)`` is one autograd node per minibatch
(``TanhRecurrence``) with a hand-written backward pass (BPTT), so autograd does no per-step work:
- each step is one fused product ``tanh([H_{t-1}, one_hot(x_t)] @ [W_hh; W_xh] + b_h)``, written
  straight into a buffer that already holds the one-hot columns (``kernels.tanh_linear``);
- the backward adds the next step's incoming gradient inside the step's product, and both weight
  gradients come from one large product over all steps.
The output layer runs once over all steps. Logits are time-major: row ``t * batch + b``.
Tests prove the maths equal to the chapter's per-step loop, to finite differences and to nn.RNN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnn.torch.kernels import matmul, right_multiplier, tanh_linear


def normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator) * 0.01


class TanhRecurrence(torch.autograd.Function):
    """Hidden states ``H_1..H_T`` (steps, batch, hidden) for token ids ``X`` (steps, batch)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, X: Tensor, h0: Tensor, W_hh: Tensor, W_xh: Tensor, b_h: Tensor
    ) -> Tensor:
        steps, batch = X.shape
        hidden = W_hh.shape[0]
        # inputs[t] = [H_{t-1}, one_hot(x_t)]; H_T lands in inputs[steps] (whose one-hot stays 0)
        inputs = h0.new_zeros(steps + 1, batch, hidden + W_xh.shape[0])  # one memset
        inputs[:steps, :, hidden:].scatter_(2, X.unsqueeze(-1), 1.0)
        inputs[0, :, :hidden] = h0
        step = tanh_linear(torch.cat([W_hh.t(), W_xh.t()], 1), b_h, batch)  # [W_hh; W_xh]^T
        for t in range(steps):
            inputs[t + 1, :, :hidden] = step(inputs[t])
        ctx.save_for_backward(inputs, W_hh)
        return inputs[1:, :, :hidden]

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        inputs, W_hh = ctx.saved_tensors
        steps, hidden = inputs.shape[0] - 1, W_hh.shape[0]
        hs = inputs[1:, :, :hidden]
        grad_hs = grad_hs.contiguous()
        times_w_hh_t = right_multiplier(W_hh.t(), grad_hs.shape[1])
        # gradient wrt the pre-activation: tanh' = 1 - H_t^2, times dL/dH_t (filled in below)
        grad_pre = torch.addcmul(hs.new_ones(()), hs, hs, value=-1)
        grad_h = grad_hs[steps - 1]
        for t in range(steps - 1, 0, -1):
            grad_h = times_w_hh_t(grad_pre[t].mul_(grad_h), grad_hs[t - 1])
        grad_h0 = times_w_hh_t(grad_pre[0].mul_(grad_h), None)
        flat_pre = grad_pre.reshape(-1, hidden)
        # [W_hh; W_xh]'s gradient, summed over all steps in one product; an explicit transposed
        # copy of the inputs measures faster than letting oneDNN copy a strided operand
        grad_w = matmul(inputs[:steps].reshape(-1, inputs.shape[-1]).t().contiguous(), flat_pre)
        return None, grad_h0, grad_w[:hidden], grad_w[hidden:], flat_pre.sum(0)


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
        return logits, (hs[-1],)

    def canonical_weights(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).detach() for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")}

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                getattr(self, name).copy_(torch.as_tensor(value))
