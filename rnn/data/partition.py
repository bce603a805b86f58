"""Stage 3, partition: contiguous splits, and the chapter's two minibatch schemes.

Both schemes return a whole epoch as arrays ``X, Y`` of shape (num_batches, batch_size, num_steps)
with ``Y`` the next token of ``X``; they are vectorised (one gather), deterministic given
``(seed, epoch)``, and reproduce ``seq_data_iter_random`` / ``seq_data_iter_sequential`` exactly.

Sequential partitioning, batch_size=2, num_steps=3, offset=1 on tokens 0..14::

    corpus   0 | 1 2 3 4 5 6 | 7 8 9 10 11 12 | 13 14     (offset dropped; tail dropped)
    rows     row 0: 1 2 3 | 4 5 6        minibatch 0 = columns 0..2, minibatch 1 = 3..5
             row 1: 7 8 9 | 10 11 12
    Row r of minibatch i+1 continues row r of minibatch i, so the hidden state can carry over.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnn.config import PartitionConfig
from rnn.data.vocab import ids_file
from rnn.errors import PipelineError
from rnn.store import npyfile
from rnn.store.atomic import atomic_dir

SPLITS = ("train", "valid", "test")
SUMMARY_FILE = "partition.json"


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """One independent stream per (seed, epoch): epochs can be replayed in any order on resume."""
    return np.random.default_rng([seed, epoch])


def random_sampling(
    ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Drop a random prefix of 0..num_steps-1 tokens, cut non-overlapping subsequences and
    shuffle their starts; adjacent minibatches are unrelated, so state is reset each time."""
    corpus = ids[int(rng.integers(0, num_steps)) :]
    num_subseqs = (len(corpus) - 1) // num_steps
    num_batches = num_subseqs // batch_size
    starts = rng.permutation(num_subseqs)[: num_batches * batch_size] * num_steps
    index = starts.reshape(num_batches, batch_size, 1) + np.arange(num_steps)
    return np.asarray(corpus[index]), np.asarray(corpus[index + 1])


def sequential_partitioning(
    ids: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Drop a random prefix of 0..num_steps tokens (inclusive), lay the rest out as batch_size rows
    and cut the rows into adjacent column slices (see the module docstring)."""
    return sequential_at(ids, batch_size, num_steps, int(rng.integers(0, num_steps + 1)))


def sequential_at(
    ids: np.ndarray, batch_size: int, num_steps: int, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    num_tokens = ((len(ids) - offset - 1) // batch_size) * batch_size
    xs = np.asarray(ids[offset : offset + num_tokens]).reshape(batch_size, -1)
    ys = np.asarray(ids[offset + 1 : offset + 1 + num_tokens]).reshape(batch_size, -1)
    num_batches = xs.shape[1] // num_steps
    width = num_batches * num_steps

    def cut(a: np.ndarray) -> np.ndarray:
        return a[:, :width].reshape(batch_size, num_batches, num_steps).transpose(1, 0, 2)

    return cut(xs), cut(ys)


def evaluation_minibatches(
    ids: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out minibatches: sequential from offset 0, fewer rows if the split is short."""
    rows = max(1, min(batch_size, (len(ids) - 1) // num_steps))
    return sequential_at(ids, rows, num_steps, 0)


SCHEMES = {"random": random_sampling, "sequential": sequential_partitioning}


def epoch_minibatches(
    ids: np.ndarray, batch_size: int, num_steps: int, sampling: str, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    return SCHEMES[sampling](ids, batch_size, num_steps, epoch_rng(seed, epoch))


def iter_minibatches(ids, batch_size, num_steps, sampling, seed, epoch):
    """The chapter's iterator interface: yields (X, Y) pairs of shape (batch_size, num_steps)."""
    xs, ys = epoch_minibatches(ids, batch_size, num_steps, sampling, seed, epoch)
    yield from zip(xs, ys, strict=True)


def min_tokens(batch_size: int, num_steps: int) -> int:
    """Fewest tokens that give one minibatch under either scheme, whatever the random offset."""
    return batch_size * num_steps + num_steps + 1


def num_minibatches(n: int, batch_size: int, num_steps: int, sampling: str, offset: int) -> int:
    if sampling == "random":
        return ((n - offset - 1) // num_steps) // batch_size
    return ((n - offset - 1) // batch_size) // num_steps


@dataclass(frozen=True)
class PartitionSummary:
    out_dir: str
    sizes: dict[str, int]
    minibatches_per_epoch: int


def split_sizes(n: int, cfg: PartitionConfig) -> dict[str, int]:
    valid, test = int(n * cfg.valid), int(n * cfg.test)
    return {"train": n - valid - test, "valid": valid, "test": test}


def partition(ids_path: str | Path, cfg: PartitionConfig, out_dir: str | Path) -> PartitionSummary:
    """Write train/valid/test .npy files (contiguous, in corpus order) and partition.json."""
    out_dir = Path(out_dir)
    with open(ids_file(ids_path), "rb") as ids:  # one handle: sizes and bytes from one file
        return _partition(ids, cfg, out_dir)


def _partition(ids: BinaryIO, cfg: PartitionConfig, out_dir: Path) -> PartitionSummary:
    total, dtype, data_start = npyfile.read_header(ids)
    n = total if cfg.max_tokens is None else min(total, cfg.max_tokens)
    sizes = split_sizes(n, cfg)
    need = min_tokens(cfg.batch_size, cfg.num_steps)
    if sizes["train"] < need:
        raise PipelineError(
            f"the training split has {sizes['train']} tokens, fewer than one minibatch of "
            f"batch_size={cfg.batch_size} x num_steps={cfg.num_steps} needs ({need})",
            "use a longer corpus, raise partition.max_tokens or partition.train, "
            "or lower partition.batch_size / num_steps",
        )
    for name in ("valid", "test"):
        if 0 < sizes[name] <= cfg.num_steps:
            raise PipelineError(
                f"the {name} split has {sizes[name]} tokens, too few for one sequence of "
                f"num_steps={cfg.num_steps}",
                f"raise partition.{name} or set it to 0",
            )
    bounds = np.cumsum([0, *sizes.values()])
    summary = PartitionSummary(
        str(out_dir),
        sizes,
        num_minibatches(sizes["train"], cfg.batch_size, cfg.num_steps, cfg.sampling, 0),
    )
    with atomic_dir(out_dir) as tmp:  # the splits and their summary are replaced together
        for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
            _save_slice(
                ids, dtype, data_start + int(lo) * dtype.itemsize, int(hi - lo), tmp / f"{name}.npy"
            )
        # not out_dir: the file's content must not depend on where the workspace is
        record = {k: v for k, v in asdict(summary).items() if k != "out_dir"}
        (tmp / SUMMARY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return summary


_COPY_BLOCK = 1 << 22


def _save_slice(src: BinaryIO, dtype: np.dtype, start: int, count: int, path: Path) -> None:
    """Write ``count`` elements of ``src`` from byte ``start`` as a ``.npy``, copying the bytes
    file to file: a memory map would count the whole corpus against the process."""
    size = count * dtype.itemsize
    with open(path, "wb") as out:
        npyfile.write_header(out, dtype, count)
        out.flush()
        copied = _copy_in_kernel(src, out, start, size)
        src.seek(start + copied)
        remaining = size - copied
        while remaining:
            block = src.read(min(_COPY_BLOCK, remaining))
            if not block:
                raise PipelineError(
                    f"{src.name} is shorter than its header says", "rerun `rnn vocab`"
                )
            out.write(block)
            remaining -= len(block)


def _copy_in_kernel(src: BinaryIO, out: BinaryIO, start: int, size: int) -> int:
    """Bytes copied with ``copy_file_range`` (Linux: no trip through user memory, 2-4x faster
    than reads and writes); 0 where the platform or file system cannot, and the caller copies."""
    copy = getattr(os, "copy_file_range", None)
    done = 0
    while copy is not None and done < size:
        try:
            n = copy(src.fileno(), out.fileno(), size - done, start + done)
        except OSError:  # EXDEV, ENOSYS, EINVAL, ...: fall back for the rest
            break
        if n == 0:  # end of the source: the caller's read reports the short file
            break
        done += n
    return done


def load_split(out_dir: str | Path, name: str) -> np.ndarray:
    path = Path(out_dir) / f"{name}.npy"
    if not path.is_file():
        raise PipelineError(f"split {path} not found", "run `rnn partition` first")
    return np.load(path, mmap_mode="r")
