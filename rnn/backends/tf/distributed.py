"""TensorFlow's side of data parallelism (see ``rnn/backends/world.py``), two ways:

- across processes or machines: a ``MultiWorkerMirroredStrategy`` set up from ``TF_CONFIG`` (one
  process per worker, one replica each, ring all-reduce), checkpoints broadcast from rank 0
  through the same collectives;
- across the devices of one process (``train.data_parallel_over: devices``): a
  ``MirroredStrategy`` over N GPUs, or over N logical CPU devices split from the host.

Either way the strategy's replica context sums the gradients inside the epoch graph, and each
replica keeps its own (unmirrored) copy of the variables on its device: every replica applies
the same summed gradient, so the copies stay equal without the strategy's variable syncing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from rnn.backends.tf.runtime import set_threads
from rnn.backends.world import World
from rnn.errors import PipelineError
from rnn.names import TF_DEVICES_ENV


@dataclass(frozen=True)
class TFWorld(World):
    strategy: Any = field(default=None, compare=False, repr=False)

    def _sum(self, value: np.ndarray) -> np.ndarray:
        def replica_sum(t):
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, t)

        result = self.strategy.run(replica_sum, args=(tf.constant(value),))
        return self.strategy.experimental_local_results(result)[0].numpy()

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank: a sum where the other ranks contribute zeros."""
        size = int(self._sum(np.array([len(data) if self.is_root else 0], np.int64))[0])
        if size == 0:
            return b""
        mine = (
            np.frombuffer(data, np.uint8).astype(np.int32)
            if self.is_root
            else np.zeros(size, np.int32)
        )
        return self._sum(mine).astype(np.uint8).tobytes()

    def all_reduce_sum(self, value: float) -> float:
        return float(self._sum(np.array([value], np.float64))[0])


@dataclass(frozen=True)
class MirroredWorld(World):
    """One process holding all ``size`` replicas, one per device: it trains every row of the
    global batch (the engine cuts them per replica) and writes the outputs."""

    strategy: Any = field(default=None, compare=False, repr=False)
    devices: tuple[str, ...] = ()

    @property
    def local_replicas(self) -> int:
        return self.size

    def rows(self, batch: int) -> slice:
        super().rows(batch)  # the same check: the batch splits into ``size`` blocks
        return slice(None)


def join_world(device: str, threads: int | None = None) -> World:
    """The world this process was launched into: N devices of its own (``RNN_TF_DEVICES``, set by rnn/dataparallel/launcher.py), or
    the cluster ``TF_CONFIG`` describes."""
    if os.environ.get(TF_DEVICES_ENV):
        return mirrored_world(int(os.environ[TF_DEVICES_ENV]), device, threads)
    return multi_worker_world(device, threads)


def mirrored_world(replicas: int, device: str, threads: int | None = None) -> MirroredWorld:
    """A ``MirroredStrategy`` over ``replicas`` GPUs, or (on CPU) as many logical devices split
    from the host. Both must be set before TensorFlow's runtime starts: a process runs this
    first, as ``rnn train`` launched by the stage does."""

    set_threads(threads or replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if device in ("gpu", "cuda") or (device == "auto" and gpus):
        if len(gpus) < replicas:
            raise PipelineError(
                f"train.data_parallel={replicas} over devices, but TensorFlow sees "
                f"{len(gpus)} GPU(s)",
                f"set train.data_parallel to at most {len(gpus)}, or train.device: cpu",
            )
        devices = [f"/GPU:{i}" for i in range(replicas)]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
            )
        except RuntimeError as err:  # the runtime started earlier in this process
            raise PipelineError(
                f"cannot split the CPU into {replicas} devices: TensorFlow already started in "
                f"this process ({err})",
                "train through the stage (`rnn train`, dvc repro, the flow), which starts a "
                "fresh process",
            ) from err
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return MirroredWorld(
        rank=0, size=replicas, comm="mirrored", strategy=strategy, devices=tuple(devices)
    )


def multi_worker_world(device: str, threads: int | None = None) -> TFWorld:
    """Join the cluster ``TF_CONFIG`` describes. The strategy starts TensorFlow's runtime, so the
    thread pools are set first."""

    if device not in ("cpu", "auto"):
        raise PipelineError(
            f"TensorFlow data parallelism runs on CPU workers here, not train.device={device}",
            "set train.device: cpu, or train.data_parallel: 1",
        )
    set_threads(threads or 1)
    config = json.loads(os.environ["TF_CONFIG"])
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return TFWorld(
        rank=int(config["task"]["index"]),
        size=strategy.num_replicas_in_sync,
        comm="ring",
        strategy=strategy,
    )
