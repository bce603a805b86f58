"""The chapter's models from scratch: RNN, GRU and LSTM cells, one or more stacked layers.

Each layer keeps its gates side by side in three fused parameters: ``W_x_l<k>`` (inputs x gates
* hidden), ``W_h_l<k>`` (hidden x gates * hidden) and ``b_l<k>``; ``canonical_weights`` names
them the book's way (``W_xz_l0``, ``W_hr_l0``, ``b_c_l1`` ... see ``rnn/backends/canonical.py``). Weights
are drawn from N(0, 0.01), biases are zero (the book's). Per minibatch, each layer:
- computes its input's share of every gate: for token ids the table ``W_x + b`` (what the book's
  one-hot product computes), whose rows the recurrence gathers step by step (the RNN's for all
  steps at once), for a layer below one product over all steps;
- runs its recurrence as one autograd node with a hand-written backward pass
  (``rnn/backends/torch/recurrences.py``); the first RNN layer on a character vocabulary fuses the
  one-hot product and tanh into each step's product instead;
- hands its outputs, through dropout while training, to the next layer or the output layer,
  which runs once over all steps. Logits are time-major: row ``t * batch + b``.
The state is a tuple: (H,) or, for the LSTM, (H, C), each (layers, batch, hidden).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnn.backends.canonical import GRU_RECURRENT_BIAS, join_gates, split_gates
from rnn.backends.torch.recurrences import (
    GRURecurrence,
    LSTMRecurrence,
    OneHotTanhRecurrence,
    TanhRecurrence,
    fuses_one_hot,
)
from rnn.registry import CELLS


def normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator) * 0.01


def uniform_init(model: nn.Module, num_hiddens: int, seed: int) -> None:
    """Every weight and bias redrawn from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's init for its
    recurrent layers (a model's ``init: uniform``), in parameter order from the run's seed."""
    generator, bound = torch.Generator().manual_seed(seed), num_hiddens**-0.5
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) * (2 * bound) - bound)


class DropoutMasks:
    """Dropout masks from ``generator`` (seeded per epoch by the engine, so a resumed run draws
    the masks an uninterrupted one would), drawn for the global batch and cut to this rank's
    block of rows, so data parallelism drops what one process would."""

    def __init__(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> None:
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def keep(self, x: Tensor, p: float) -> Tensor:
        """A 0/1 mask for ``x`` (steps, rows, units): this rank's rows of the global one."""
        steps, rows, units = x.shape
        shape = (steps, rows * self.world_size, units)
        full = torch.rand(shape, generator=self.generator, device=x.device) >= p
        return full[:, self.rank * rows : (self.rank + 1) * rows]


def dropout(x: Tensor, p: float, masks: DropoutMasks | None) -> Tensor:
    """Inverted dropout (none without masks: evaluation)."""
    if p == 0 or masks is None:
        return x
    return x * masks.keep(x, p).to(x.dtype) / (1 - p)


def _input_share(
    W_x: Tensor, b: Tensor, ids: Tensor, below: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The input's share of (some of) a layer's gates with their bias, as the recurrences take
    it: for token ids (steps, batch), the table ``W_x + b`` (vocab, columns of W_x) with the ids
    to gather its rows by; for a layer below, one product for all steps (steps, batch, columns)
    and no ids."""
    if below is None:
        return W_x + b, ids
    steps, batch, width = below.shape
    return torch.addmm(b, below.reshape(-1, width), W_x).view(steps, batch, -1), None


class RNNModelScratch(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        seed: int | None = None,
        cell: str = "rnn",
        num_layers: int = 1,
        dropout: float = 0.0,
        reset_after: bool = False,
    ) -> None:
        """``reset_after``: the GRU in PyTorch's and cuDNN's form (see GRURecurrence), which
        the tests use to prove the recurrence against nn.GRU; the book's form is the default."""
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.cell, self.num_layers, self.dropout = cell, num_layers, dropout
        self.reset_after = reset_after and cell == "gru"
        gates = CELLS[cell].num_gates
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for k in range(num_layers):
            inputs = vocab_size if k == 0 else num_hiddens
            self.register_parameter(
                f"W_x_l{k}", nn.Parameter(normal((inputs, gates * num_hiddens), gen))
            )
            self.register_parameter(
                f"W_h_l{k}", nn.Parameter(normal((num_hiddens, gates * num_hiddens), gen))
            )
            self.register_parameter(f"b_l{k}", nn.Parameter(torch.zeros(gates * num_hiddens)))
            if self.reset_after:
                self.register_parameter(f"b_hh_l{k}", nn.Parameter(torch.zeros(num_hiddens)))
        self.W_hq = nn.Parameter(normal((num_hiddens, vocab_size), gen))
        self.b_q = nn.Parameter(torch.zeros(vocab_size))

    def layer(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        return getattr(self, f"W_x_l{k}"), getattr(self, f"W_h_l{k}"), getattr(self, f"b_l{k}")

    def begin_state(self, batch_size: int, device: torch.device | str | None = None):
        device = device or self.W_hq.device
        shape = (self.num_layers, batch_size, self.num_hiddens)
        return tuple(torch.zeros(shape, device=device) for _ in CELLS[self.cell].states)

    def forward(
        self, X: Tensor, state: tuple[Tensor, ...], masks: DropoutMasks | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """X: (batch, steps) token ids -> logits (steps * batch, vocab), new state. Dropout
        masks come from ``masks`` (none: no dropout, as in evaluation)."""
        ids, below = X.T.to(torch.int64).contiguous(), None
        finals: list[list[Tensor]] = [[] for _ in state]
        for k in range(self.num_layers):
            outputs, last = self._layer_forward(k, ids, below, [s[k] for s in state])
            for kept, s in zip(finals, last, strict=True):
                kept.append(s)
            below = dropout(outputs, self.dropout, masks)
        logits = torch.addmm(self.b_q, below.reshape(-1, self.num_hiddens), self.W_hq)
        return logits, tuple(torch.stack(s) for s in finals)

    def _layer_forward(
        self, k: int, ids: Tensor, below: Tensor | None, state: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        W_x, W_h, b = self.layer(k)
        if k == 0 and self.cell == "rnn" and fuses_one_hot(self.vocab_size, self.num_hiddens):
            hs = OneHotTanhRecurrence.apply(ids, state[0], W_h, W_x, b)
            return hs, [hs[-1]]
        if self.cell == "gru":  # z and r apart from h: the recurrence reads them apart
            b_hh = getattr(self, f"b_hh_l{k}") if self.reset_after else None
            h = self.num_hiddens
            (x_zr, rows), (x_h, _) = (
                _input_share(W_x[:, cols], b[cols], ids, below)
                for cols in (slice(0, 2 * h), slice(2 * h, 3 * h))
            )
            hs = GRURecurrence.apply(x_zr, x_h, rows, state[0], W_h, b_hh, self.reset_after)
            return hs, [hs[-1]]
        x, rows = _input_share(W_x, b, ids, below)
        if self.cell == "rnn":
            xw = x if rows is None else F.embedding(rows, x)
            hs = TanhRecurrence.apply(xw, state[0], W_h)
            return hs, [hs[-1]]
        hs, c_last = LSTMRecurrence.apply(x, rows, state[0], state[1], W_h)
        return hs, [hs[-1], c_last]

    def canonical_weights(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for k in range(self.num_layers):
            out.update(split_gates(self.cell, k, *(p.detach() for p in self.layer(k))))
            if self.reset_after:
                out[f"{GRU_RECURRENT_BIAS}_l{k}"] = getattr(self, f"b_hh_l{k}").detach()
        out["W_hq"], out["b_q"] = self.W_hq.detach(), self.b_q.detach()
        return out

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k in range(self.num_layers):
                fused = join_gates(
                    self.cell, k, {n: torch.as_tensor(v).cpu() for n, v in weights.items()}
                )
                for param, value in zip(self.layer(k), fused, strict=True):
                    param.copy_(torch.as_tensor(value))
                if self.reset_after:
                    getattr(self, f"b_hh_l{k}").copy_(torch.as_tensor(weights[f"b_hh_l{k}"]))
            self.W_hq.copy_(torch.as_tensor(weights["W_hq"]))
            self.b_q.copy_(torch.as_tensor(weights["b_q"]))
