"""TensorFlow training engine with the same interface as ``rnn/backends/torch/engine.py``.

A whole epoch runs inside one ``tf.function`` (a graph ``while`` loop over the minibatches), so
the host does no work per step; the maths per minibatch is the chapter's: state carried and
``stop_gradient``-ed (sequential) or fresh (random), mean cross-entropy against time-major labels,
``tf.clip_by_global_norm`` at theta, the step's learning rate (``rnn/training/schedule.py``, passed in as
one tensor per epoch) and SGD, Adam or AdamW written out with PyTorch's formulas, so both
frameworks take the same steps (tests/unit/test_optim.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from rnn.backends.engine import dropout_seed
from rnn.backends.malloc import keep_freed_memory
from rnn.backends.sampling import stream
from rnn.backends.spec import ModelSpec, OptimSpec
from rnn.backends.tf.concise import RNNModel
from rnn.backends.tf.runtime import framework_version, resolve_device, set_threads  # noqa: F401 (the backend's front door)
from rnn.backends.tf.scratch import RNNModelScratch, uniform_init
from rnn.backends.world import World, shard_rows
from rnn.config import OptimizerConfig
from rnn.names import TF_JIT_ENV
from rnn.store.record import weights_from_bytes, write_weights

MODELS = {"scratch": RNNModelScratch, "concise": RNNModel}
FRAMEWORK = "tf"
# XLA-compile the epoch graph: ~1.5x for the scratch model's unrolled steps, slower for Keras'
# RNN loop; both are bit-reproducible. RNN_TF_JIT=1 / 0 forces it on / off for every variant.
JIT_DEFAULT = {"scratch": True, "concise": False}


def use_jit(variant: str) -> bool:
    forced = os.environ.get(TF_JIT_ENV)
    return JIT_DEFAULT[variant] if forced is None else forced == "1"


def join_world(device: str, threads: int | None = None) -> World:
    """This process's rank in the TF_CONFIG cluster (rnn/backends/tf/distributed.py)."""
    from rnn.backends.tf.distributed import join_world as join

    return join(device, threads)


def time_major_labels(Y: tf.Tensor) -> tf.Tensor:
    """Labels in the logits' order: row ``t * batch + b`` is ``Y[b, t]`` (i.e. ``Y.T.reshape(-1)``)."""
    return tf.reshape(tf.transpose(Y), [-1])


def mean_cross_entropy(logits: tf.Tensor, Y: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(time_major_labels(Y), logits)
    )


class Optimizer:
    """PyTorch's SGD, Adam and AdamW update rules (torch.optim's single-tensor code), with
    weight decay on the weight matrices only: L2 added to the gradient for sgd and adam,
    decoupled for adamw. Moments and the step count are variables, so they live in the graph
    and in checkpoints."""

    def __init__(
        self, variables: list[tf.Variable], matrices: list[bool], cfg: OptimizerConfig
    ) -> None:
        """``matrices[i]``: whether ``variables[i]`` is a weight matrix (weight decay applies)."""
        self.cfg, self.variables = cfg, variables
        self.decays = [m and cfg.weight_decay > 0 for m in matrices]
        self.slots: list[tf.Variable] = []
        if cfg.name != "sgd":
            self.step = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="step")
            self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
            self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
            self.slots = [self.step, *self.m, *self.v]

    def apply(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        cfg, wd = self.cfg, self.cfg.weight_decay
        if cfg.name == "sgd":
            for var, grad, decays in zip(self.variables, grads, self.decays, strict=True):
                var.assign_sub(lr * (grad + wd * var if decays else grad))
            return
        beta1, beta2 = cfg.betas
        step = self.step.assign_add(1.0)
        # bias corrections in float64, as PyTorch computes them on Python floats
        step_size = tf.cast(tf.cast(lr, tf.float64) / (1 - beta1**step), tf.float32)
        correction2_sqrt = tf.cast(tf.sqrt(1 - beta2**step), tf.float32)
        for var, grad, m, v, decays in zip(
            self.variables, grads, self.m, self.v, self.decays, strict=True
        ):
            if decays and cfg.name == "adamw":
                var.assign(var * (1 - lr * wd))
            elif decays:
                grad = grad + wd * var
            m.assign(m + (1 - beta1) * (grad - m))  # torch's lerp_
            v.assign(v * beta2 + (1 - beta2) * grad * grad)
            var.assign_sub(step_size * (m / (tf.sqrt(v) / correction2_sqrt + cfg.eps)))


@dataclass
class Replica:
    """One copy of the model with its variables and optimiser, on one device."""

    model: Any
    variables: list[tf.Variable]
    optimizer: Optimizer

    def parts(self) -> tuple[Any, list[tf.Variable], Optimizer]:
        return self.model, self.variables, self.optimizer


class Engine:
    def __init__(self, spec: ModelSpec, optim: OptimSpec) -> None:
        self.spec = spec
        self.world = world = spec.world
        if spec.threads:
            set_threads(spec.threads)
        self.device = resolve_device(spec.device)
        if self.device == "/CPU:0":
            keep_freed_memory()
        tf.random.set_seed(spec.seed)
        # One model per replica this process trains (several under MirroredStrategy, each on
        # its device); replica 0's is the model that evaluates, generates and is saved.
        devices = getattr(world, "devices", ()) or (self.device,)
        self.replicas = [self._replica(spec, optim, where, r) for r, where in enumerate(devices)]
        self.model, self.variables, self.optimizer = self.replicas[0].parts()
        self._sync_replicas()
        # XLA cannot compile the strategy's collectives: a data-parallel epoch runs as a graph
        self.jit = use_jit(spec.variant) and world.size == 1
        self.lr, self.theta, self.seed = optim.lr, optim.theta, spec.seed
        self._epoch_fns: dict[bool, tf.types.experimental.GenericFunction] = {}
        # Splits differ in length and rows: let one trace serve them all.
        self._eval_fn = tf.function(self._eval_graph, reduce_retracing=True)
        self._step_fn = tf.function(self.model.__call__)

    @staticmethod
    def _replica(spec: ModelSpec, optim: OptimSpec, where: str, r: int) -> Replica:
        """Replica ``r``'s model, variables and optimiser, on device ``where``."""
        world = spec.world
        with tf.device(where):
            model = MODELS[spec.variant](
                spec.vocab_size,
                spec.num_hiddens,
                seed=spec.seed,
                cell=spec.cell,
                num_layers=spec.num_layers,
                dropout=spec.dropout,
            )
            if spec.init == "uniform":
                uniform_init(model.ordered_variables, spec.num_hiddens, spec.seed)
            model.mask_shard = (world.rank * world.local_replicas + r, world.size)
            variables = model.ordered_variables
            return Replica(
                model, variables, Optimizer(variables, model.weight_matrices, optim.optimizer)
            )

    def _sync_replicas(self) -> None:
        """Every replica's variables and optimiser slots set to replica 0's (after a load)."""
        first = self.replicas[0]
        for other in self.replicas[1:]:
            for mine, theirs in zip(
                [*other.variables, *other.optimizer.slots],
                [*first.variables, *first.optimizer.slots],
                strict=True,
            ):
                mine.assign(theirs)

    def train_step(
        self, X: tf.Tensor, Y: tf.Tensor, state, lr: tf.Tensor, seed=None, replica: int = 0
    ):
        model, variables, optimizer = self.replicas[replica].parts()
        with tf.GradientTape() as tape:
            logits, state = model(X, state, seed)
            loss = mean_cross_entropy(logits, Y) / self.world.size  # a share of the global mean
        # The gather's gradient is sparse (IndexedSlices); the update wants dense tensors.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        if (
            self.world.size > 1
        ):  # the global batch's gradient, before clipping (rnn/backends/world.py)
            context = tf.distribute.get_replica_context()
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.theta is not None:  # g * theta / max(||g||, theta)
            grads, _ = tf.clip_by_global_norm(grads, self.theta)
        optimizer.apply(grads, lr)
        return loss, [tf.stop_gradient(s) for s in state]

    def _epoch_graph(
        self, xs: tf.Tensor, ys: tf.Tensor, lrs: tf.Tensor, seed: tf.Tensor, fresh_state: bool
    ) -> tf.Tensor:
        """``seed``: the epoch's dropout seed; minibatch i and layer k draw from
        ``seed + [i * 1024, k]``."""
        batch = tf.shape(xs)[1]
        total = tf.constant(0.0)

        def step_seed(i):
            return seed + tf.stack([tf.cast(i, tf.int64) * 1024, tf.constant(0, tf.int64)])

        if fresh_state:  # a Python bool: each scheme gets its own graph
            # No state crosses minibatches, so none is a loop variable (Keras returns its state
            # with an unknown batch size, which a loop variable may not change to).
            for i in tf.range(tf.shape(xs)[0]):
                state = list(self.model.begin_state(batch))
                loss, _ = self._step(xs[i], ys[i], state, lrs[i], step_seed(i))
                total += loss
            return total
        state = list(self.model.begin_state(batch))
        for i in tf.range(tf.shape(xs)[0]):
            loss, state = self._step(xs[i], ys[i], state, lrs[i], step_seed(i))
            total += loss
        return total

    def _step(self, X, Y, state, lr, seed):
        """``train_step``; under data parallelism as the strategy's replica function (its
        all-reduce needs a replica context, and may not sit inside the loop's control flow)."""
        if self.world.size == 1:
            return self.train_step(X, Y, state, lr, seed)
        strategy = self.world.strategy  # type: ignore[attr-defined]
        if len(self.replicas) == 1:  # one replica in this process
            out = strategy.run(self.train_step, args=(X, Y, state, lr, seed))
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)
        share = X.shape[0] // len(self.replicas)

        def replica_step(X, Y, state, lr, seed):  # replica r: its block of the rows and state
            context = tf.distribute.get_replica_context()
            r = int(tf.get_static_value(context.replica_id_in_sync_group))
            rows = slice(r * share, (r + 1) * share)
            mine = [s[:, rows] for s in state]  # state: (layers, batch, hiddens)
            return self.train_step(X[rows], Y[rows], mine, lr, seed, replica=r)

        losses, states = strategy.run(replica_step, args=(X, Y, state, lr, seed))
        states = strategy.experimental_local_results(states)
        with tf.device(self.device):
            loss = tf.add_n(list(strategy.experimental_local_results(losses)))
            return loss, [tf.concat(parts, axis=1) for parts in zip(*states, strict=True)]

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
        Dropout masks are drawn from stateless seeds derived from (seed, ``epoch``). Under data
        parallelism ``xs`` and ``ys`` are the global minibatches: this rank trains its rows."""
        count, per_batch = xs.size, xs[0].size
        xs, ys = shard_rows(xs, self.world), shard_rows(ys, self.world)
        fresh = sampling == "random"
        if fresh not in self._epoch_fns:
            spec = tf.TensorSpec([None, *xs.shape[1:]], tf.int32)
            self._epoch_fns[fresh] = tf.function(
                lambda a, b, r, s: self._epoch_graph(a, b, r, s, fresh),
                input_signature=[
                    spec,
                    spec,
                    tf.TensorSpec([None], tf.float32),
                    tf.TensorSpec([2], tf.int64),
                ],
                jit_compile=self.jit,
            )
        rates = (
            np.full(len(xs), self.lr, np.float32) if lrs is None else np.asarray(lrs, np.float32)
        )
        seed = np.array([dropout_seed(self.seed, epoch) % (2**62), 0], np.int64)
        with tf.device(self.device):
            total = self._epoch_fns[fresh](xs.astype(np.int32), ys.astype(np.int32), rates, seed)
        return self.world.all_reduce_sum(float(total)) * per_batch, count

    def _eval_graph(self, xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
        state = list(self.model.begin_state(tf.shape(xs)[1]))
        total = tf.constant(0.0, tf.float64)
        for i in tf.range(tf.shape(xs)[0]):
            logits, state = self.model(xs[i], state)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
                time_major_labels(ys[i]), logits
            )
            total += tf.cast(tf.reduce_sum(losses), tf.float64)
            state = list(state)
        return total

    def evaluate(self, xs: np.ndarray, ys: np.ndarray) -> tuple[float, int]:
        """Sequential minibatches with the state carried over; returns loss sum, count."""
        with tf.device(self.device):
            total = self._eval_fn(xs.astype(np.int32), ys.astype(np.int32))
        return float(total), xs.size

    def stream(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> Iterator[int]:
        """Generated ids, each yielded as soon as it is chosen (rnn/backends/sampling.py)."""

        def step(token: int, state):
            logits, state = self._step_fn(tf.constant([[token]], tf.int32), list(state))
            return logits[0].numpy(), state

        return stream(
            step,
            lambda: list(self.model.begin_state(1)),
            prefix_ids,
            num_preds,
            temperature,
            top_k,
            seed,
        )

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> list[int]:
        return [*prefix_ids, *self.stream(prefix_ids, num_preds, temperature, top_k, seed)]

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.variables))

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v.numpy()) for k, v in self.model.canonical_weights().items()}

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.model.load_canonical_weights({k: np.asarray(v) for k, v in weights.items()})
        self._sync_replicas()

    def save(self, path, metadata: dict[str, str] | None = None) -> None:
        """The model file: canonical weights only (rnn/backends/canonical.py)."""
        write_weights(path, self.canonical_weights(), metadata)

    def save_checkpoint(self, path, metadata: dict[str, str], extra: dict[str, np.ndarray]) -> None:
        """Everything a bit-identical resume needs: the model's own variables (the canonical
        names sum the concise GRU's biases), the optimiser's slots and ``extra`` arrays (the
        best weights so far), as safetensors."""
        arrays = {f"model.{i}": v.numpy() for i, v in enumerate(self.variables)}
        arrays.update({f"optimizer.{i}": v.numpy() for i, v in enumerate(self.optimizer.slots)})
        arrays.update({f"extra.{k}": v for k, v in extra.items()})
        write_weights(path, arrays, metadata)

    def load_checkpoint(self, data: bytes) -> dict[str, np.ndarray]:
        """Restore what ``save_checkpoint`` wrote, from the file's bytes (verified by the
        caller: rnn/training/checkpoints.py); returns its ``extra`` arrays."""
        arrays = weights_from_bytes(data)
        for i, v in enumerate(self.variables):
            v.assign(arrays[f"model.{i}"])
        for i, v in enumerate(self.optimizer.slots):
            v.assign(arrays[f"optimizer.{i}"])
        self._sync_replicas()
        return {k.removeprefix("extra."): v for k, v in arrays.items() if k.startswith("extra.")}
