"""TensorFlow training engine with the same interface as ``rnn/torch/train.py``.

A whole epoch runs inside one ``tf.function`` (a graph ``while`` loop over the minibatches), so
the host does no work per step; the maths per minibatch is the chapter's: state carried and
``stop_gradient``-ed (sequential) or fresh (random), mean cross-entropy against time-major labels,
``tf.clip_by_global_norm`` at theta, SGD.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from rnn.errors import PipelineError
from rnn.malloc import keep_freed_memory
from rnn.record import weights_metadata
from rnn.sampling import generate
from rnn.tf.concise import RNNModel
from rnn.tf.scratch import RNNModelScratch

MODELS = {"scratch": RNNModelScratch, "concise": RNNModel}
FRAMEWORK = "tf"
# XLA-compile the epoch graph: ~1.5x for the scratch model's unrolled steps, slower for Keras'
# RNN loop; both are bit-reproducible. RNN_TF_JIT=1 / 0 forces it on / off for every variant.
JIT_DEFAULT = {"scratch": True, "concise": False}


def use_jit(variant: str) -> bool:
    forced = os.environ.get("RNN_TF_JIT")
    return JIT_DEFAULT[variant] if forced is None else forced == "1"


def framework_version() -> str:
    return tf.__version__


def resolve_device(name: str) -> str:
    """``auto`` picks a GPU when TensorFlow sees one; asking for an absent device is an error."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        return "/GPU:0" if gpus else "/CPU:0"
    if name in ("cuda", "gpu"):
        if not gpus:
            raise PipelineError(
                f"train.device={name} but TensorFlow sees no GPU", "set train.device to cpu or auto"
            )
        return "/GPU:0"
    if name == "mps":
        raise PipelineError(
            "train.device=mps is a PyTorch device", "use gpu (tensorflow-metal) or cpu for tf"
        )
    return "/CPU:0"


def set_threads(threads: int) -> None:
    """``threads`` ops run side by side, each on one thread. Eigen's matrix products (TensorFlow's
    and XLA's) change their blocking with the intra-op thread count, so their sums round
    differently: a (32, 512) x (512, 512) product differs between 1 and 2 intra-op threads, and no
    XLA flag (multi_thread_eigen, thunk runtime, oneDNN, XNNPACK) changes that. One thread per op
    makes every op's result independent of the count; inter-op threads still overlap the
    independent ones (Keras' RNN loop: ~1.3x on 2 cores). TensorFlow fixes its pools when the
    runtime starts; later calls keep the first setting."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


def time_major_labels(Y: tf.Tensor) -> tf.Tensor:
    """Labels in the logits' order: row ``t * batch + b`` is ``Y[b, t]`` (i.e. ``Y.T.reshape(-1)``)."""
    return tf.reshape(tf.transpose(Y), [-1])


def mean_cross_entropy(logits: tf.Tensor, Y: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(time_major_labels(Y), logits)
    )


class Engine:
    def __init__(
        self,
        variant: str,
        vocab_size: int,
        num_hiddens: int,
        *,
        lr: float = 1.0,
        theta: float = 1.0,
        device: str = "cpu",
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        if threads:
            set_threads(threads)
        self.device = resolve_device(device)
        if self.device == "/CPU:0":
            keep_freed_memory()
        tf.random.set_seed(seed)
        with tf.device(self.device):
            self.model = MODELS[variant](vocab_size, num_hiddens, seed=seed)
        self.variables = list(self.model.canonical_weights().values())
        self.jit = use_jit(variant)
        self.lr, self.theta = lr, theta
        self._epoch_fns: dict[bool, tf.types.experimental.GenericFunction] = {}
        # Splits differ in length and rows: let one trace serve them all.
        self._eval_fn = tf.function(self._eval_graph, reduce_retracing=True)
        self._step_fn = tf.function(self.model.__call__)

    def train_step(self, X: tf.Tensor, Y: tf.Tensor, state):
        with tf.GradientTape() as tape:
            logits, state = self.model(X, state)
            loss = mean_cross_entropy(logits, Y)
        # The gather's gradient is sparse (IndexedSlices); the update wants dense tensors.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self.variables)]
        grads, _ = tf.clip_by_global_norm(grads, self.theta)  # g * theta / max(||g||, theta)
        for var, grad in zip(self.variables, grads, strict=True):
            var.assign_sub(self.lr * grad)
        return loss, [tf.stop_gradient(s) for s in state]

    def _epoch_graph(self, xs: tf.Tensor, ys: tf.Tensor, fresh_state: bool) -> tf.Tensor:
        batch = tf.shape(xs)[1]
        total = tf.constant(0.0)
        if fresh_state:  # a Python bool: each scheme gets its own graph
            # No state crosses minibatches, so none is a loop variable (Keras returns its state
            # with an unknown batch size, which a loop variable may not change to).
            for i in tf.range(tf.shape(xs)[0]):
                loss, _ = self.train_step(xs[i], ys[i], list(self.model.begin_state(batch)))
                total += loss
            return total
        state = list(self.model.begin_state(batch))
        for i in tf.range(tf.shape(xs)[0]):
            loss, state = self.train_step(xs[i], ys[i], state)
            total += loss
        return total

    def train_epoch(self, xs: np.ndarray, ys: np.ndarray, sampling: str) -> tuple[float, int]:
        """One pass over an epoch's minibatches (num_batches, batch, steps); returns loss sum, count."""
        fresh = sampling == "random"
        if fresh not in self._epoch_fns:
            spec = tf.TensorSpec([None, *xs.shape[1:]], tf.int32)
            self._epoch_fns[fresh] = tf.function(
                lambda a, b: self._epoch_graph(a, b, fresh),
                input_signature=[spec, spec],
                jit_compile=self.jit,
            )
        with tf.device(self.device):
            total = self._epoch_fns[fresh](xs.astype(np.int32), ys.astype(np.int32))
        return float(total) * xs[0].size, xs.size

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

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, seed=0) -> list[int]:
        def step(token: int, state):
            logits, state = self._step_fn(tf.constant([[token]], tf.int32), list(state))
            return logits[0].numpy(), state

        return generate(
            step,
            lambda: list(self.model.begin_state(1)),
            prefix_ids,
            num_preds,
            temperature,
            top_k,
            seed,
        )

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.variables))

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v.numpy()) for k, v in self.model.canonical_weights().items()}

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.model.load_canonical_weights({k: np.asarray(v) for k, v in weights.items()})

    def save(self, path, metadata: dict[str, str] | None = None) -> None:
        """Weights only, as safetensors (no pickle); the names are the chapter's."""
        save_file(self.canonical_weights(), str(path), metadata=weights_metadata(metadata))

    def load(self, path) -> None:
        self.load_canonical_weights(load_file(str(path)))
