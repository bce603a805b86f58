"""The chapter's concise RNN: ``nn.RNN`` + ``nn.Linear``; logits are time-major as in scratch.

The one-hot input is built by gathering rows of an identity matrix, which is what ``F.one_hot``
produces, without the int64 -> float conversion pass.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

_INIT_LOCK = threading.Lock()


class RNNModel(nn.Module):
    def __init__(self, vocab_size: int, num_hiddens: int, seed: int | None = None) -> None:
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        # nn.RNN and nn.Linear draw their init from the global generator: seed a private fork of it,
        # under a lock, so runs built side by side in threads (the flow) get the same weights.
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.rnn = nn.RNN(vocab_size, num_hiddens)
            self.linear = nn.Linear(num_hiddens, vocab_size)
        self.register_buffer("eye", torch.eye(vocab_size), persistent=False)

    def begin_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        device = device or self.linear.weight.device
        return torch.zeros((self.rnn.num_layers, batch_size, self.num_hiddens), device=device)

    def forward(self, X: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        Y, state = self.rnn(self.eye[X.T], state)  # eye[X.T] == one_hot(X.T).float()
        return self.linear(Y.reshape(-1, self.num_hiddens)), state

    def canonical_weights(self) -> dict[str, Tensor]:
        """The same maths in the scratch model's names (nn.RNN's two biases summed)."""
        r = self.rnn
        return {
            "W_xh": r.weight_ih_l0.detach().t(),
            "W_hh": r.weight_hh_l0.detach().t(),
            "b_h": (r.bias_ih_l0 + r.bias_hh_l0).detach(),
            "W_hq": self.linear.weight.detach().t(),
            "b_q": self.linear.bias.detach(),
        }

    def load_canonical_weights(self, weights: dict[str, Tensor]) -> None:
        w = {k: torch.as_tensor(v) for k, v in weights.items()}
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(w["W_xh"].t())
            self.rnn.weight_hh_l0.copy_(w["W_hh"].t())
            self.rnn.bias_ih_l0.copy_(w["b_h"])
            self.rnn.bias_hh_l0.zero_()
            self.linear.weight.copy_(w["W_hq"].t())
            self.linear.bias.copy_(w["b_q"])
