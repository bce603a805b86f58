"""Stage 2, vocabulary: cleaned text -> token list (vocab.json) + the corpus as integer ids (ids.npy).

Tokens are counted and encoded with NumPy/Arrow kernels, never a per-token Python loop. The order is
the book's: ``<unk>`` at 0, reserved tokens next, then corpus tokens by descending frequency with
ties broken by first occurrence (what ``sorted(Counter(...).items(), ...)`` does, being stable).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnn.config import VocabConfig
from rnn.data.corpus import iter_text_rows, read_provenance, read_text_rows
from rnn.data.threadmap import ordered_map
from rnn.data.tokens import UNK, VOCAB_FILE, Vocab
from rnn.errors import PipelineError
from rnn.store import npyfile
from rnn.store.atomic import atomic_dir

IDS_FILE = "ids.npy"
_ASCII_SPAN, _UNICODE_SPAN = 128, 0x110000
_BLOCK = 1 << 20
_NEVER = np.iinfo(np.int64).max
# Arrow's default allocator (mimalloc) keeps each thread's freed pages; word splitting frees many.
_ARROW_POOL = pa.system_memory_pool()


@dataclass(frozen=True)
class VocabSummary:
    out_dir: str
    size: int
    num_tokens: int
    unk_count: int
    dtype: str


@dataclass
class _Counted:
    """Corpus tokens as provisional ids, with each provisional id's string, count and first index."""

    ids: list[np.ndarray]
    strings: list[str]
    counts: np.ndarray
    first: np.ndarray


def _count_chars(rows: list[np.ndarray]) -> _Counted:
    """Provisional id = code point; ASCII text is used byte for byte, with no decoding."""
    if all(r.size == 0 or r.max() < _ASCII_SPAN for r in rows):
        span, codes = _ASCII_SPAN, rows
    else:
        span = _UNICODE_SPAN
        codes = [np.frombuffer(r.tobytes().decode().encode("utf-32-le"), np.uint32) for r in rows]
    counts = np.zeros(span, dtype=np.int64)
    first = np.full(span, _NEVER)
    offset = 0
    for c in codes:
        for start in range(0, c.size, _BLOCK):
            # Blocks keep bincount's int64 copy of its input small (and cache-resident).
            block = c[start : start + _BLOCK]
            block_counts = _histogram(block, span)
            unseen = np.flatnonzero((block_counts > 0) & (first == _NEVER))
            if unseen.size:
                first[unseen] = offset + start + _first_indices(block, unseen)
            counts += block_counts
        offset += c.size
    present = np.flatnonzero(counts)
    strings = [""] * span
    for cp in present:
        strings[cp] = chr(cp)
    return _Counted(list(codes), strings, counts, first)


def _first_indices(block: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value's first occurrence in ``block`` (every value occurs)."""
    if block.dtype == np.uint8:  # memchr per value beats sorting the block
        raw = block.tobytes()
        return np.array([raw.find(bytes([int(v)])) for v in values], dtype=np.int64)
    vals, idx = np.unique(block, return_index=True)
    return idx[np.searchsorted(vals, values)]


def _histogram(block: np.ndarray, span: int) -> np.ndarray:
    """``np.bincount(block, minlength=span)``; bytes are counted two at a time (as uint16), which
    halves bincount's work, and the 256 x 256 pair table is folded back to single bytes."""
    if block.dtype != np.uint8 or block.size < 2:
        return np.bincount(block, minlength=span)
    even = block.size & ~1
    pairs = np.bincount(block[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    counts = pairs.sum(0) + pairs.sum(1)  # each byte is one half of one pair
    if even < block.size:
        counts[block[-1]] += 1
    return counts[:span]


def _count_words(rows: Iterable[np.ndarray], normalization: str) -> _Counted:
    """Split on whitespace with Arrow and dictionary-encode; the dictionary is in first-seen order.
    Rows are read, split and encoded on two threads (Arrow releases the GIL) and merged here in
    order; each row's text is dropped once encoded, and its ids kept in the smallest dtype."""
    dictionary = pa.array([], type=pa.large_string())
    ids: list[np.ndarray] = []
    counts = np.zeros(0, dtype=np.int64)
    for local, indices in ordered_map(lambda r: _encode_row(r, normalization), rows):
        # Map this row's dictionary into the global one, appending words not seen before.
        where = pc.index_in(local, value_set=dictionary, memory_pool=_ARROW_POOL)
        where = where.to_numpy(zero_copy_only=False)
        missing = np.isnan(where) if where.dtype.kind == "f" else np.zeros(len(where), bool)
        new_words = pc.filter(local, pa.array(missing), memory_pool=_ARROW_POOL)
        dictionary = pa.concat_arrays([dictionary, new_words], memory_pool=_ARROW_POOL)
        remap = np.where(missing, 0, where).astype(smallest_uint(len(dictionary)))
        remap[missing] = np.arange(len(dictionary) - len(new_words), len(dictionary))
        ids.append(remap[indices])
        # Count row by row (no concatenated copy of all ids); the dictionary only grows.
        row_counts = np.bincount(ids[-1], minlength=len(dictionary))
        counts = np.concatenate([counts, np.zeros(len(row_counts) - len(counts), np.int64)])
        counts += row_counts
    first = np.arange(len(dictionary))  # dictionary order is first-seen order
    return _Counted(ids, dictionary.to_pylist(), counts, first)


def _encode_row(row: np.ndarray, normalization: str) -> tuple[pa.Array, np.ndarray]:
    """One row's words as (its dictionary in first-seen order, indices into it)."""
    # 32-bit offsets (our rows are at most a few MiB): the split's per-word offsets take half the
    # room; a row of 2 GiB or more (another writer's file) keeps 64-bit ones.
    small = row.size < 2**31
    array = pa.StringArray if small else pa.LargeStringArray
    offsets = np.array([0, row.size], dtype=np.int32 if small else np.int64)
    text = array.from_buffers(1, pa.py_buffer(offsets), pa.py_buffer(row))
    pool = _ARROW_POOL
    if normalization == "d2l":
        lists = pc.split_pattern(text, " ", memory_pool=pool)
    else:
        lists = pc.utf8_split_whitespace(text, memory_pool=pool)
    words = _drop_empty(pc.list_flatten(lists, memory_pool=pool), normalization)
    encoded = pc.dictionary_encode(words, memory_pool=pool)
    return encoded.dictionary.cast(pa.large_string(), memory_pool=pool), encoded.indices.to_numpy()


def _drop_empty(words: pa.Array, normalization: str) -> pa.Array:
    """d2l text has single spaces and no leading one, so only a row's last word can be empty
    (rows end at a space); raw text needs a full filter."""
    if normalization == "d2l":
        n = len(words)
        return words.slice(0, n - 1) if n and words[n - 1].as_py() == "" else words
    non_empty = pc.not_equal(pc.binary_length(words), 0, memory_pool=_ARROW_POOL)
    return pc.filter(words, non_empty, memory_pool=_ARROW_POOL)


def order_tokens(counted: _Counted, cfg: VocabConfig) -> tuple[list[str], np.ndarray]:
    """The vocabulary, and the table mapping provisional ids to final ids (0 = <unk>)."""
    specials = [UNK, *cfg.reserved_tokens]
    present = np.flatnonzero(counted.counts)
    order = present[np.lexsort((counted.first[present], -counted.counts[present]))]
    frequent = order[counted.counts[order] >= cfg.min_freq]
    if frequent.size == 0:
        top = int(counted.counts.max()) if counted.counts.size else 0
        raise PipelineError(
            f"vocab.min_freq={cfg.min_freq} removes every token (the most frequent occurs {top} "
            "times)",
            f"lower vocab.min_freq to at most {top}",
        )
    special_index = {t: i for i, t in enumerate(specials)}
    # A corpus token equal to a reserved one shares its id instead of being listed twice.
    tokens = list(specials)
    lut = np.zeros(counted.counts.size, dtype=np.int64)
    for prov in frequent:
        s = counted.strings[prov]
        if s in special_index:
            lut[prov] = special_index[s]
        elif cfg.max_size is None or len(tokens) < cfg.max_size:
            lut[prov] = len(tokens)
            tokens.append(s)
    return tokens, lut


def smallest_uint(n: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def build_vocab(corpus: str | Path, cfg: VocabConfig, out_dir: str | Path) -> VocabSummary:
    """Write ``vocab.json`` and ``ids.npy`` (smallest unsigned dtype, memory-mappable) to out_dir."""
    out_dir = Path(out_dir)
    provenance = read_provenance(corpus)
    if cfg.token == "char":  # read whole: counted, then encoded
        counted = _count_chars(read_text_rows(corpus))
    else:  # streamed: each row is encoded to ids once
        counted = _count_words(iter_text_rows(corpus), provenance["normalization"])
    tokens, lut = order_tokens(counted, cfg)
    lut = lut.astype(smallest_uint(len(tokens)))
    num_tokens = int(sum(c.size for c in counted.ids))
    final_counts = np.bincount(lut, weights=counted.counts, minlength=len(tokens)).astype(np.int64)
    vocab = Vocab(tuple(tokens), tuple(int(c) for c in final_counts), cfg.token)
    record = vocab.to_json(
        min_freq=cfg.min_freq,
        reserved_tokens=list(cfg.reserved_tokens),
        max_size=cfg.max_size,
        corpus_sha256=provenance["sha256"],
        num_tokens=num_tokens,
        dtype=str(lut.dtype),
    )
    # one directory swap: the ids and the vocabulary that reads them are replaced together
    with atomic_dir(out_dir) as tmp:
        _save_encoded(tmp / IDS_FILE, counted.ids, lut, num_tokens)
        (tmp / VOCAB_FILE).write_text(
            json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
    return VocabSummary(str(out_dir), len(tokens), num_tokens, int(final_counts[0]), str(lut.dtype))


def _save_encoded(path: Path, chunks: list[np.ndarray], lut: np.ndarray, total: int) -> None:
    """Encode row by row with a table lookup and append each row to one .npy, so the encoded
    corpus is never held whole in memory."""
    with open(path, "wb") as f, ThreadPoolExecutor(1) as writer:
        npyfile.write_header(f, lut.dtype, total)
        pending = None
        byte_table = _byte_table(lut)
        for c in chunks:
            if byte_table is not None and c.dtype == np.uint8:
                # bytes -> bytes: C's translate is ~2.4x faster than NumPy's fancy indexing.
                encoded = np.frombuffer(c.tobytes().translate(byte_table), dtype=np.uint8)
            else:
                encoded = lut[c]
            if pending is not None:
                pending.result()
            pending = writer.submit(encoded.tofile, f)  # writes while the next row is encoded
        if pending is not None:
            pending.result()


def _byte_table(lut: np.ndarray) -> bytes | None:
    """``lut`` as a 256-byte translation table, when every id it maps to fits in a byte. The
    padding is never looked up: ``lut`` has an entry for every provisional id (``_Counted``), and
    uint8 rows hold provisional ids only (ASCII rows are checked to be below its 128 entries)."""
    if lut.dtype != np.uint8 or lut.size > 256:
        return None
    return np.pad(lut, (0, 256 - lut.size)).tobytes()


def ids_file(path: str | Path) -> Path:
    """The ``ids.npy`` at ``path`` (the file, or the vocabulary directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / IDS_FILE
    if not path.is_file():
        raise PipelineError(f"token ids {path} not found", "run `rnn vocab` first")
    return path


def load_ids(path: str | Path) -> np.ndarray:
    return np.load(ids_file(path), mmap_mode="r")
