"""Data parallelism's shared facts: which process of how many this is, and which rows it trains.

A data-parallel run trains one model with ``size`` processes. Every minibatch of the global batch
(batch x steps) is cut into ``size`` contiguous blocks of rows, one per rank, so under sequential
partitioning each rank carries the hidden state of its own text streams from minibatch to
minibatch. Each rank's loss is its block's mean divided by ``size``; the gradients are summed over
the ranks (the global batch's mean) before global-norm clipping, then every rank takes the same
step. Dropout masks are drawn for the global batch and cut the same way, so the maths is the
single process's: the weights agree to rounding (the sums run in another order), and a
single-process checkpoint resumes under data parallelism and back.

The frameworks' runtimes do the communication (``rnn/backends/torch/distributed.py``: torch.distributed,
launched by torchrun; ``rnn/backends/tf/distributed.py``: tf.distribute); this module knows neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from rnn.errors import PipelineError
from rnn.names import TF_DEVICES_ENV

# Set by the launcher (rnn/dataparallel/launcher.py) for the processes it starts: it holds the workspace lock
# for them, and reads their events.

# The replicas of a one-process MirroredStrategy run (TensorFlow over devices, rnn/backends/tf/distributed.py).


@dataclass(frozen=True)
class World:
    """One process's place in a data-parallel run; the default is the single process. The
    frameworks' subclasses implement the collectives."""

    rank: int = 0
    size: int = 1
    # the collectives' backend: gloo, nccl (PyTorch); ring (TensorFlow across processes), mirrored
    # (TensorFlow across one process's devices)
    comm: str = "none"

    @property
    def local_replicas(self) -> int:
        """Replicas this process trains: one, or one per device (TensorFlow's MirroredStrategy)."""
        return 1

    @property
    def is_root(self) -> bool:
        """Rank 0 writes weights, records, metrics and checkpoints; the others only train."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's contiguous block of a global minibatch's ``batch`` rows."""
        if batch % self.size:
            raise PipelineError(
                f"partition.batch_size={batch} does not split into {self.size} equal blocks",
                f"make partition.batch_size a multiple of train.data_parallel={self.size}",
            )
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (checkpoints to resume from)."""
        assert data is not None
        return data

    def all_reduce_sum(self, value: float) -> float:
        return value

    def close(self) -> None:
        """Leave the process group."""


SINGLE = World()


def shard_rows(minibatches: np.ndarray, world: World) -> np.ndarray:
    """An epoch's minibatches (num_batches, batch, steps) -> this rank's rows of each."""
    return minibatches[:, world.rows(minibatches.shape[1])]


def launched_world_size() -> int | None:
    """The world size a launcher (torchrun, or the TensorFlow worker launch) gave this process;
    None outside one."""
    size = os.environ.get("WORLD_SIZE") or os.environ.get(TF_DEVICES_ENV)
    if size is None and "TF_CONFIG" in os.environ:
        import json

        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        size = str(sum(len(v) for v in cluster.values()))
    return int(size) if size else None


def inside_launch() -> bool:
    """Whether this process is one rank of a launched data-parallel run."""
    size = launched_world_size()
    return size is not None and size > 1
