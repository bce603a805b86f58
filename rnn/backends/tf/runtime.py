"""TensorFlow's runtime: its version, the device a run asks for, and its threads; what the engine and
the distributed set-up both need, so neither imports the other for it."""

from __future__ import annotations

import tensorflow as tf

from rnn.errors import PipelineError


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
