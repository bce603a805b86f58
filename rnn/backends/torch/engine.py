"""PyTorch training engine: the chapter's loop, with the same interface as ``rnn/backends/tf/engine.py``.

One ``Engine`` owns a model and its optimiser. Per minibatch: state carried and detached
(sequential) or fresh (random); mean cross-entropy against time-major labels; global-norm clipping
at theta; the step's learning rate (``rnn/training/schedule.py``); SGD, Adam or AdamW (weight decay on
weight matrices only). Losses stay on the device until the end of the epoch (no per-step host
sync).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
from safetensors.torch import load, save_file
from torch.nn import functional as F

from rnn.backends.engine import dropout_seed
from rnn.backends.malloc import keep_freed_memory
from rnn.backends.sampling import stream
from rnn.backends.spec import ModelSpec, OptimSpec
from rnn.backends.torch.concise import RNNModel
from rnn.backends.torch.runtime import framework_version, resolve_device  # noqa: F401 (the backend's front door)
from rnn.backends.torch.scratch import DropoutMasks, RNNModelScratch, uniform_init
from rnn.backends.world import shard_rows
from rnn.config import OptimizerConfig
from rnn.store.record import weights_metadata, write_weights

MODELS = {"scratch": RNNModelScratch, "concise": RNNModel}
FRAMEWORK = "torch"


def join_world(device: str, threads: int | None = None):
    """This process's rank in the torchrun world (rnn/backends/torch/distributed.py); ``threads`` is set
    by the engine."""
    from rnn.backends.torch.distributed import join_world as join

    return join(device)


def time_major_labels(Y: torch.Tensor) -> torch.Tensor:
    """Labels in the logits' order: row ``t * batch + b`` is ``Y[b, t]`` (i.e. ``Y.T.reshape(-1)``)."""
    return Y.T.reshape(-1)


def detach_state(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def make_optimizer(
    params: list[torch.nn.Parameter], cfg: OptimizerConfig, lr: float
) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW; weight decay applies to the weight matrices, not to biases."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return kind(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


def clip_gradients(params: list[torch.nn.Parameter], theta: float) -> None:
    """The book's global-norm clipping: if ||g|| > theta, g *= theta / ||g||. On an accelerator
    without a host sync (the gradients are always scaled, by 1 where the norm is within theta);
    on the CPU a norm within theta skips the pass over every gradient (the same bits: a pass that
    cost a fifth of a millisecond a minibatch for the gated cells, whose norms stay within the
    book's theta)."""
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.clamp(theta / norm, max=1.0)  # a NaN norm gives NaN: scaled, still seen
    if norm.device.type == "cpu" and bool(scale == 1.0):
        return
    torch._foreach_mul_(grads, scale)


def synchronize_gradients(params: list[torch.nn.Parameter], theta: float | None) -> None:
    """Data parallelism: sum the ranks' gradients (each rank's loss is its share of the global
    mean, so the sum is the global batch's gradient), then clip it as one process would.
    Clipping each rank's share first would scale each by its own norm: other maths."""
    from rnn.backends.torch.distributed import all_reduce_gradients

    all_reduce_gradients(params)
    if theta is not None:
        clip_gradients(params, theta)


class Engine:
    def __init__(self, spec: ModelSpec, optim: OptimSpec) -> None:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.world = spec.world
        if self.device.type == "cpu":
            keep_freed_memory()
        self.model = MODELS[spec.variant](
            spec.vocab_size,
            spec.num_hiddens,
            seed=spec.seed,
            cell=spec.cell,
            num_layers=spec.num_layers,
            dropout=spec.dropout,
        )
        if spec.init == "uniform":
            uniform_init(self.model, spec.num_hiddens, spec.seed)
        self.model.to(self.device)
        self.params = list(self.model.parameters())
        cfg = optim.optimizer
        self._optim = optim
        # the book's update alone, p -= lr * g, is one call here: torch.optim's step costs more in
        # its own bookkeeping than the update (a sixth of a millisecond a minibatch)
        self.plain_sgd = cfg.name == "sgd" and cfg.weight_decay == 0
        self.lr, self.theta, self.seed = optim.lr, optim.theta, spec.seed

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first use: evaluation, generation and the book's plain SGD never use it, and
        torch.optim's first call imports TorchDynamo (~1.5 s of every process's start)."""
        return make_optimizer(self.params, self._optim.optimizer, self._optim.lr)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def train_step(self, X: torch.Tensor, Y: torch.Tensor, state, lr: float, masks=None):
        """One update; under data parallelism ``X`` holds this rank's rows and the returned loss
        is its share of the global batch's mean."""
        logits, state = self.model(X, state, masks)
        loss = F.cross_entropy(logits, time_major_labels(Y)) / self.world.size
        for p in self.params:
            p.grad = None
        loss.backward()
        if self.world.size > 1:
            synchronize_gradients(self.params, self.theta)
        elif self.theta is not None:
            clip_gradients(self.params, self.theta)
        if self.plain_sgd:  # what torch.optim.SGD computes, in the same order
            with torch.no_grad():
                torch._foreach_add_(self.params, [p.grad for p in self.params], alpha=-lr)
            return loss.detach(), state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return loss.detach(), state

    def train_epoch(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        sampling: str,
        lrs: np.ndarray | None = None,
        epoch: int = 0,
    ) -> tuple[float, int]:
        """One pass over an epoch's minibatches (num_batches, batch, steps) at the learning rate
        ``lrs[i]`` for minibatch i (default: the engine's ``lr``); returns loss sum, count.
        Dropout masks are drawn from a generator seeded by (seed, ``epoch``). Under data
        parallelism ``xs`` and ``ys`` are the global minibatches: this rank trains its rows."""
        self.model.train()
        count, per_batch = xs.size, xs[0].size
        xs, ys = shard_rows(xs, self.world), shard_rows(ys, self.world)
        xs_t, ys_t = self._tensor(xs), self._tensor(ys)
        rates = np.full(len(xs), self.lr) if lrs is None else np.asarray(lrs, dtype=np.float64)
        generator = torch.Generator(device=self.device).manual_seed(dropout_seed(self.seed, epoch))
        masks = DropoutMasks(generator, self.world.rank, self.world.size)
        total = torch.zeros((), device=self.device)
        state = None
        for X, Y, lr in zip(xs_t, ys_t, rates.tolist(), strict=True):
            if state is None or sampling == "random":
                state = self.model.begin_state(X.shape[0], self.device)
            else:
                state = detach_state(state)  # keep the value, cut the graph (truncated BPTT)
            loss, state = self.train_step(X, Y, state, lr, masks)
            total += loss
        return self.world.all_reduce_sum(float(total)) * per_batch, count

    @torch.no_grad()
    def evaluate(self, xs: np.ndarray, ys: np.ndarray) -> tuple[float, int]:
        """Sequential minibatches with the state carried over; returns loss sum, count."""
        self.model.eval()
        xs_t, ys_t = self._tensor(xs), self._tensor(ys)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        state = self.model.begin_state(xs.shape[1], self.device)
        for X, Y in zip(xs_t, ys_t, strict=True):
            logits, state = self.model(X, state)
            total += F.cross_entropy(logits, time_major_labels(Y), reduction="sum").double()
        return float(total), xs.size

    def stream(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> Iterator[int]:
        """Generated ids, each yielded as soon as it is chosen (rnn/backends/sampling.py)."""
        self.model.eval()

        @torch.no_grad()
        def step(token: int, state):
            logits, state = self.model(torch.tensor([[token]], device=self.device), state)
            return logits[0].cpu().numpy(), state

        return stream(
            step,
            lambda: self.model.begin_state(1, self.device),
            prefix_ids,
            num_preds,
            temperature,
            top_k,
            seed,
        )

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> list[int]:
        return [*prefix_ids, *self.stream(prefix_ids, num_preds, temperature, top_k, seed)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.cpu().numpy()) for k, v in self.model.canonical_weights().items()}

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.model.load_canonical_weights({k: torch.as_tensor(v) for k, v in weights.items()})

    def save(self, path, metadata: dict[str, str] | None = None) -> None:
        """The model file: canonical weights only (rnn/backends/canonical.py)."""
        write_weights(path, self.canonical_weights(), metadata)

    def save_checkpoint(self, path, metadata: dict[str, str], extra: dict[str, np.ndarray]) -> None:
        """Everything a bit-identical resume needs: the model's own parameters (PyTorch's
        names: the canonical ones sum the concise biases), the optimiser's state, and ``extra``
        arrays (the best weights so far), as safetensors."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for index, slots in self.optimizer.state_dict()["state"].items():
            tensors.update({f"optimizer.{index}.{k}": v for k, v in slots.items()})
        tensors.update(
            {f"extra.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in extra.items()}
        )
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=weights_metadata(metadata))

    def load_checkpoint(self, data: bytes) -> dict[str, np.ndarray]:
        """Restore what ``save_checkpoint`` wrote, from the file's bytes (verified by the
        caller: rnn/training/checkpoints.py); returns its ``extra`` arrays."""
        tensors = {k: v.to(self.device) for k, v in load(data).items()}
        part = _prefixed(tensors, "model.")
        self.model.load_state_dict(part)
        optimizer_state = self.optimizer.state_dict()
        slots = _prefixed(tensors, "optimizer.")
        state: dict[int, dict] = {}
        for key, value in slots.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
        optimizer_state["state"] = state
        self.optimizer.load_state_dict(optimizer_state)
        return {k: v.cpu().numpy() for k, v in _prefixed(tensors, "extra.").items()}


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
