"""The chapter's concise models: ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` layers + ``nn.Linear``.

Logits are time-major as in scratch. Layers are stacked as separate single-layer modules so that
dropout between them draws its masks from the engine's per-epoch generator (nn.GRU's own
``dropout`` uses the global one, which runs trained side by side in threads would share). The
one-hot input is built by gathering rows of an identity matrix, which is what ``F.one_hot``
produces, without the int64 -> float conversion pass. The state is a tuple: (H,) or, for the
LSTM, (H, C), each (layers, batch, hidden).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

from rnn.backends.canonical import GRU_RECURRENT_BIAS
from rnn.backends.torch.scratch import DropoutMasks, dropout
from rnn.registry import CELLS

_INIT_LOCK = threading.Lock()
LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
# Canonical gate (registry order) -> the row block of PyTorch's stacked weights.
TORCH_BLOCK = {
    "rnn": {"h": 0},
    "gru": {"r": 0, "z": 1, "h": 2},
    "lstm": {"i": 0, "f": 1, "c": 2, "o": 3},
}


class RNNModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        seed: int | None = None,
        cell: str = "rnn",
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.cell, self.num_layers, self.dropout = cell, num_layers, dropout
        # The layers draw their init from the global generator: seed a private fork of it,
        # under a lock, so runs built side by side in threads (the flow) get the same weights.
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.rnns = nn.ModuleList(
                LAYERS[cell](vocab_size if k == 0 else num_hiddens, num_hiddens)
                for k in range(num_layers)
            )
            self.linear = nn.Linear(num_hiddens, vocab_size)
        self.register_buffer("eye", torch.eye(vocab_size), persistent=False)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None):
        device = device or self.linear.weight.device
        shape = (self.num_layers, batch_size, self.num_hiddens)
        return tuple(torch.zeros(shape, device=device) for _ in CELLS[self.cell].states)

    def forward(
        self, X: Tensor, state: tuple[Tensor, ...], masks: DropoutMasks | None = None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        Y = self.eye[X.T]  # == one_hot(X.T).float(), time-major (steps, batch, vocab)
        finals: list[list[Tensor]] = [[] for _ in state]
        for k, rnn in enumerate(self.rnns):
            layer_state = tuple(s[k : k + 1] for s in state)
            Y, new = rnn(Y, layer_state if self.cell == "lstm" else layer_state[0])
            for kept, s in zip(finals, new if self.cell == "lstm" else (new,), strict=True):
                kept.append(s[0])
            Y = dropout(Y, self.dropout, masks)
        logits = self.linear(Y.reshape(-1, self.num_hiddens))
        return logits, tuple(torch.stack(s) for s in finals)

    def canonical_weights(self) -> dict[str, Tensor]:
        """The same maths in the book's names: each gate's input and recurrent biases summed
        (the GRU's recurrent candidate bias stays apart: the reset gate multiplies it)."""
        out: dict[str, Tensor] = {}
        for k, rnn in enumerate(self.rnns):
            w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
            b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()
            for gate, block in TORCH_BLOCK[self.cell].items():
                rows = slice(block * self.num_hiddens, (block + 1) * self.num_hiddens)
                out[f"W_x{gate}_l{k}"] = w_ih[rows].t()
                out[f"W_h{gate}_l{k}"] = w_hh[rows].t()
                if self.cell == "gru" and gate == "h":
                    out[f"b_h_l{k}"] = b_ih[rows]
                    out[f"{GRU_RECURRENT_BIAS}_l{k}"] = b_hh[rows]
                else:
                    out[f"b_{gate}_l{k}"] = b_ih[rows] + b_hh[rows]
        out["W_hq"], out["b_q"] = self.linear.weight.detach().t(), self.linear.bias.detach()
        return out

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        w = {n: torch.as_tensor(v) for n, v in weights.items()}
        with torch.no_grad():
            for k, rnn in enumerate(self.rnns):
                rnn.bias_hh_l0.zero_()
                for gate, block in TORCH_BLOCK[self.cell].items():
                    rows = slice(block * self.num_hiddens, (block + 1) * self.num_hiddens)
                    rnn.weight_ih_l0[rows] = w[f"W_x{gate}_l{k}"].t()
                    rnn.weight_hh_l0[rows] = w[f"W_h{gate}_l{k}"].t()
                    rnn.bias_ih_l0[rows] = w[f"b_{gate}_l{k}"]
                    if self.cell == "gru" and gate == "h":
                        rnn.bias_hh_l0[rows] = w[f"{GRU_RECURRENT_BIAS}_l{k}"]
            self.linear.weight.copy_(w["W_hq"].t())
            self.linear.bias.copy_(w["b_q"])
