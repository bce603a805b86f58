"""TensorFlow's side of data parallelism (see ``rnn/distributed.py``): a
``MultiWorkerMirroredStrategy`` set up from ``TF_CONFIG`` (one process per worker, one replica
each, ring all-reduce), whose replica context sums the gradients inside the epoch graph, and
checkpoints broadcast from rank 0 through the same collectives.

Each process keeps its own (unmirrored) variables: with one replica per process every rank
applies the same summed gradient, so they stay equal without the strategy's variable syncing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from rnn.distributed import World
from rnn.errors import PipelineError


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


def join_world(device: str, threads: int | None = None) -> TFWorld:
    """Join the cluster ``TF_CONFIG`` describes. The strategy starts TensorFlow's runtime, so the
    thread pools are set first."""
    from rnn.tf.train import set_threads

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
