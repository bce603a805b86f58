import errno
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn.config import IngestConfig, PartitionConfig, VocabConfig
from rnn.data.corpus import ingest
from rnn.data.partition import (
    epoch_minibatches,
    iter_minibatches,
    load_split,
    partition,
    random_sampling,
    sequential_partitioning,
)
from rnn.data.vocab import build_vocab
from rnn.errors import PipelineError
from tests.support import book
from tests.support.workspace import TIME_MACHINE


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p")
    ingest(IngestConfig(source=str(TIME_MACHINE)), tmp / "c.parquet")
    build_vocab(tmp / "c.parquet", VocabConfig(), tmp / "v")
    return tmp / "v"


class FixedDraws:
    """A Generator stand-in that records the two draws, to replay them in the book's code."""

    def __init__(self, seed, offset=None):
        self.rng = np.random.default_rng(seed)
        self.fixed_offset = offset  # when given, drawn every time (and checked to be in range)
        self.offset = None
        self.order = None

    def integers(self, lo, hi):
        if self.fixed_offset is None:
            self.offset = int(self.rng.integers(lo, hi))
        else:
            assert lo <= self.fixed_offset < hi
            self.offset = self.fixed_offset
        return self.offset

    def permutation(self, n):
        self.order = self.rng.permutation(n)
        return self.order


@pytest.mark.parametrize("n, expected", [(170_580, 152), (10_000, 8)])
@pytest.mark.parametrize("scheme", ["random", "sequential"])
def test_books_minibatch_counts_for_every_offset(n, expected, scheme):
    ids = np.arange(n)
    fn = random_sampling if scheme == "random" else sequential_partitioning
    offsets = range(35) if scheme == "random" else range(36)  # the book's randint ranges
    for offset in offsets:
        x, y = fn(ids, 32, 35, FixedDraws(offset, offset=offset))
        assert x.shape == y.shape == (expected, 32, 35)
        assert x.min() >= offset and np.array_equal(y, x + 1)


def test_book_mode_partition_on_the_canonical_text(vocab_dir, tmp_path):
    full = partition(vocab_dir, PartitionConfig(), tmp_path / "full")
    assert full.sizes == {"train": 170_580, "valid": 0, "test": 0}
    assert full.minibatches_per_epoch == 152
    book_mode = partition(vocab_dir, PartitionConfig(max_tokens=10_000), tmp_path / "book")
    assert book_mode.sizes["train"] == 10_000 and book_mode.minibatches_per_epoch == 8
    train = load_split(tmp_path / "book", "train")
    assert np.array_equal(train, np.load(vocab_dir / "ids.npy")[:10_000])
    assert (
        json.loads((tmp_path / "book" / "partition.json").read_text())["sizes"]["train"] == 10_000
    )


@pytest.fixture(params=["copy_file_range", "read-write"])
def copy_mode(request, monkeypatch):
    """Splits are copied in the kernel where the platform can, else through reads and writes;
    the kernel case yields the bytes it copied, to show that path really did the copying."""
    copied: list[int] = []
    if request.param == "read-write":
        monkeypatch.delattr("os.copy_file_range", raising=False)
    elif not hasattr(os, "copy_file_range"):
        pytest.skip("this platform has no copy_file_range")
    else:
        real = os.copy_file_range

        def counted(*args):
            copied.append(real(*args))
            return copied[-1]

        monkeypatch.setattr("os.copy_file_range", counted)
    return copied


def test_contiguous_splits_cover_the_corpus_in_order(vocab_dir, tmp_path, copy_mode):
    summary = partition(vocab_dir, PartitionConfig(train=0.8, valid=0.1, test=0.1), tmp_path)
    ids = np.load(vocab_dir / "ids.npy")
    parts = [load_split(tmp_path, s) for s in ("train", "valid", "test")]
    assert [len(p) for p in parts] == [136_464, 17_058, 17_058] == list(summary.sizes.values())
    assert np.array_equal(np.concatenate(parts), ids)
    assert sum(copy_mode) == (170_580 if copy_mode else 0)  # every byte by the kernel, or none


def test_a_kernel_copy_that_fails_midway_is_finished_by_reads(vocab_dir, tmp_path, monkeypatch):
    real, calls = os.copy_file_range, []

    def fails_after_one_call(src, dst, count, offset_src):
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, min(count, 1000), offset_src)

    monkeypatch.setattr("os.copy_file_range", fails_after_one_call, raising=False)
    partition(vocab_dir, PartitionConfig(train=0.8, valid=0.1, test=0.1), tmp_path)
    parts = [load_split(tmp_path, s) for s in ("train", "valid", "test")]
    assert np.array_equal(np.concatenate(parts), np.load(vocab_dir / "ids.npy"))
    # train: 1,000 bytes by the kernel, then the error; valid, test: the error at once; the rest
    # of each split by reads.
    assert calls == [136_464, 135_464, 17_058, 17_058]


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_splits_are_copied_from_either_npy_header_version(tmp_path, version):
    ids = (np.arange(5000) % 251).astype(np.uint8)
    with open(tmp_path / "ids.npy", "wb") as f:
        np.lib.format.write_array(f, ids, version=version)
    partition(
        tmp_path / "ids.npy",
        PartitionConfig(max_tokens=4000, train=0.5, valid=0.25, test=0.25),
        tmp_path / "p",
    )
    parts = [load_split(tmp_path / "p", s) for s in ("train", "valid", "test")]
    assert [p.dtype for p in parts] == [np.uint8] * 3
    assert np.array_equal(np.concatenate(parts), ids[:4000])


def test_an_ids_file_shorter_than_its_header_is_one_clear_error(tmp_path, copy_mode):
    with open(tmp_path / "ids.npy", "wb") as f:
        np.lib.format.write_array(f, np.zeros(5000, np.uint8))
    with open(tmp_path / "ids.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 2000)  # 3,000 of 5,000 ids left
    with pytest.raises(PipelineError, match="shorter than its header says"):
        partition(tmp_path / "ids.npy", PartitionConfig(max_tokens=4000), tmp_path / "p")
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_an_ids_file_that_is_not_npy_is_one_clear_error(tmp_path):
    (tmp_path / "ids.npy").write_bytes(b"not numpy at all")
    with pytest.raises(PipelineError, match="not a NumPy token-id file"):
        partition(tmp_path / "ids.npy", PartitionConfig(), tmp_path / "p")
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(50, 3000),
    batch=st.integers(1, 8),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_schemes_match_the_book_exactly(n, batch, steps, seed):
    ids = np.arange(n) * 7 % 101  # distinct-ish values so shifted copies are detectable
    draws = FixedDraws(seed)
    x, y = random_sampling(ids, batch, steps, draws)
    ref = list(book.seq_data_iter_random(ids.tolist(), batch, steps, draws.offset, draws.order))
    assert [[a.tolist(), b.tolist()] for a, b in zip(x, y, strict=True)] == [
        [rx, ry] for rx, ry in ref
    ]
    draws = FixedDraws(seed)
    x, y = sequential_partitioning(ids, batch, steps, draws)
    ref = list(book.seq_data_iter_sequential(ids.tolist(), batch, steps, draws.offset))
    assert [[a.tolist(), b.tolist()] for a, b in zip(x, y, strict=True)] == [
        [rx, ry] for rx, ry in ref
    ]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), epoch=st.integers(0, 1000))
def test_properties_under_many_seeds(seed, epoch):
    ids = np.arange(5000)  # position == value makes the structure visible
    steps, batch = 35, 8
    x, y = epoch_minibatches(ids, batch, steps, "sequential", seed, epoch)
    assert np.array_equal(y, x + 1)  # Y is X shifted by one
    # Row r of minibatch i+1 continues row r of minibatch i.
    assert np.array_equal(x[1:, :, 0], x[:-1, :, -1] + 1)
    assert 0 <= x[0, 0, 0] <= steps
    x, y = epoch_minibatches(ids, batch, steps, "random", seed, epoch)
    assert np.array_equal(y, x + 1)
    starts = x[:, :, 0].ravel()
    assert len(set(starts.tolist())) == starts.size  # subsequences do not overlap
    assert len(set((starts - starts.min()) % steps)) == 1  # all on one grid from one offset
    assert np.all(np.diff(x, axis=2) == 1)
    # Deterministic given (seed, epoch); another epoch draws differently.
    again = epoch_minibatches(ids, batch, steps, "random", seed, epoch)
    assert np.array_equal(again[0], x)
    other = epoch_minibatches(ids, batch, steps, "random", seed, epoch + 1)
    assert not np.array_equal(other[0], x)


def test_iterator_interface_yields_batch_major_pairs():
    pairs = list(iter_minibatches(np.arange(1000), 4, 5, "sequential", 0, 0))
    assert all(x.shape == (4, 5) and np.array_equal(y, x + 1) for x, y in pairs)


def test_corpus_shorter_than_one_minibatch(vocab_dir, tmp_path):
    partition(vocab_dir, PartitionConfig(max_tokens=10_000), tmp_path)
    before = (tmp_path / "train.npy").read_bytes()
    with pytest.raises(PipelineError, match="fewer than one minibatch") as err:
        partition(vocab_dir, PartitionConfig(max_tokens=1000), tmp_path)
    assert "batch_size=32 x num_steps=35" in str(err.value)
    assert (tmp_path / "train.npy").read_bytes() == before
    with pytest.raises(PipelineError, match="valid split has 10 tokens"):
        partition(vocab_dir, PartitionConfig(max_tokens=10_000, train=0.999, valid=0.001), tmp_path)
