"""The chapter's RNN from scratch: explicit parameters W_xh, W_hh, b_h, W_hq, b_q.

Two equivalences make it fast without changing the maths (tests prove both):
- ``one_hot(X) @ W_xh`` is the row gather ``W_xh[X]``;
- the recurrence's backward pass is written out (``TanhRecurrence``), so autograd records one node
  per minibatch instead of two per time step, and the weight gradient is one GEMM over all steps.
The output layer runs once over all steps. Logits are time-major: row ``t * batch + b``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator) * 0.01


class TanhRecurrence(torch.autograd.Function):
    """H_t = tanh(XW_t + H_{t-1} @ W_hh) for all t, with a hand-written backward (BPTT)."""

    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, w_hh: Tensor) -> Tensor:  # type: ignore[override]
        hs = torch.empty_like(xw)
        h = h0
        for t in range(xw.shape[0]):
            h = torch.tanh(torch.addmm(xw[t], h, w_hh, out=hs[t]), out=hs[t])
        ctx.save_for_backward(hs, h0, w_hh)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        hs, h0, w_hh = ctx.saved_tensors
        grad_pre = torch.empty_like(hs)  # gradient wrt the pre-activation XW_t + H_{t-1} W_hh
        carry = torch.zeros_like(h0)
        w_hh_t = w_hh.t()
        for t in range(hs.shape[0] - 1, -1, -1):
            g = grad_hs[t] + carry
            torch.mul(g, 1 - hs[t] * hs[t], out=grad_pre[t])
            carry = grad_pre[t] @ w_hh_t
        prev = torch.cat([h0.unsqueeze(0), hs[:-1]]).reshape(-1, hs.shape[-1])
        grad_w_hh = prev.t() @ grad_pre.reshape(-1, hs.shape[-1])
        return grad_pre, carry, grad_w_hh


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
        xw = nn.functional.embedding(X.T, self.W_xh) + self.b_h  # == one_hot(X.T) @ W_xh + b_h
        hs = TanhRecurrence.apply(xw, h0, self.W_hh)
        logits = torch.addmm(self.b_q, hs.reshape(-1, self.num_hiddens), self.W_hq)
        return logits, (hs[-1],)

    def canonical_weights(self) -> dict[str, Tensor]:
        return {n: getattr(self, n).detach() for n in ("W_xh", "W_hh", "b_h", "W_hq", "b_q")}

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                getattr(self, name).copy_(torch.as_tensor(value))
