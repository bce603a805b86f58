"""Stage 1, ingest: source -> cleaned text in a Parquet file with provenance metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rnn.config import IngestConfig
from rnn.data.fetch import resolve_source
from rnn.data.text import iter_normalize_d2l, normalize_raw, strip_gutenberg, to_utf8
from rnn.errors import PipelineError
from rnn.faults import kill_point
from rnn.store.atomic import atomic_path

PROVENANCE_KEY = b"rnn.provenance"
ROW_BYTES = 1 << 21  # rows of ~2 MiB keep Arrow temporaries (word splitting) small
_SCHEMA = pa.schema([("text", pa.large_string())])


@dataclass(frozen=True)
class IngestSummary:
    path: str
    num_chars: int
    num_bytes_in: int
    sha256: str
    normalization: str
    files: int


def _digest(data: bytes, alg: str) -> str:
    return hashlib.new(alg, data).hexdigest()


def _verify_local_checksum(cfg: IngestConfig, path: Path, data: bytes) -> None:
    """A pinned checksum on a single local file is honoured, as it is for a URL."""
    for alg, expected in (("sha256", cfg.sha256), ("sha1", cfg.sha1)):
        if expected and (actual := _digest(data, alg)) != expected:
            raise PipelineError(
                f"checksum mismatch for {path}: {alg} is {actual}, params pin {expected}",
                f"pin the file's real checksum in ingest.{alg}, or set it to null",
            )


def clean(data: bytes, name: str, cfg: IngestConfig) -> Iterator[bytes]:
    """Validate one source's bytes and yield its normalised UTF-8 text, in consecutive pieces."""
    data = to_utf8(data, name, cfg.encoding)
    if cfg.strip_gutenberg:
        data = strip_gutenberg(data)
    if cfg.normalization == "d2l":
        yield from iter_normalize_d2l(data)
    else:
        yield normalize_raw(data)


class _CorpusWriter:
    """Streams cleaned text into the Parquet corpus as it is produced, so the whole text is never
    held in memory: rows of about ROW_BYTES, each ending at a separator so that no token
    straddles two rows; the provenance goes into the file's footer when it is known, at the end."""

    def __init__(self, path: Path, normalization: str) -> None:
        # d2l text has single spaces only; raw text is cut at line ends, else at spaces.
        self._seps = (b" ",) if normalization == "d2l" else (b"\n", b" ")
        self._parts: list[bytes] = []
        self._size = 0
        self.sha256 = hashlib.sha256()
        self.num_chars = 0
        self.has_text = False
        # Uncompressed and without statistics: writing is then ~10x faster than zstd, and DVC's
        # cache deduplicates whole files anyway. One ~2 MiB row per group: bounded chunks to read.
        self._writer = pq.ParquetWriter(
            path, _SCHEMA, compression="none", use_dictionary=False, write_statistics=False
        )

    def __enter__(self) -> _CorpusWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def add(self, piece: bytes) -> None:
        """Append the next piece of text (valid UTF-8 on its own)."""
        self.sha256.update(piece)
        self.num_chars += len(piece) if piece.isascii() else len(piece.decode("utf-8"))
        self.has_text = self.has_text or (bool(piece) and not piece.isspace())
        self._parts.append(piece)
        self._size += len(piece)
        if self._size >= ROW_BYTES:
            self._write_rows(final=False)

    def finish(self, provenance: dict) -> None:
        self._write_rows(final=True)
        self._writer.add_key_value_metadata(
            {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}
        )

    def _write_rows(self, final: bool) -> None:
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        start = 0
        while start < len(data):
            left = len(data) - start
            if left < ROW_BYTES and not final:
                break  # too short for a row yet: wait for more text
            cut = len(data) if final and left <= ROW_BYTES else self._cut(data, start)
            if cut is None:  # no separator to end the row at
                if not final:
                    break
                cut = len(data)
            self._write_row(memoryview(data)[start:cut])
            start = cut
        rest = data[start:]
        self._parts, self._size = ([rest] if rest else []), len(rest)

    def _cut(self, data: bytes, start: int) -> int | None:
        """End of the row starting at ``start``: just after the last separator within ROW_BYTES,
        else the first one within twice that; a row is never longer, so text with no separator
        that long is cut at a UTF-8 character boundary (a "token" megabytes long is split)."""
        end, limit = start + ROW_BYTES, start + 2 * ROW_BYTES
        for sep in self._seps:
            if (at := data.rfind(sep, start, end)) >= 0:
                return at + 1
        beyond = [at for sep in self._seps if (at := data.find(sep, end, limit)) >= 0]
        if beyond:
            return min(beyond) + 1
        if len(data) < limit:
            return None
        while data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back off to a char start
            end -= 1
        return end

    def _write_row(self, row: memoryview) -> None:
        offsets = pa.py_buffer(np.array([0, len(row)], dtype=np.int64))
        column = pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(row))
        self._writer.write_table(pa.Table.from_arrays([column], schema=_SCHEMA))
        kill_point("ingest:row")  # mid-write: rows on disk, the file not finished


def ingest(cfg: IngestConfig, out: str | Path, root: str | Path = "") -> IngestSummary:
    """Read the source, clean it and write ``out`` (Parquet); nothing is written on error. A
    relative local source is relative to ``root`` and recorded so (the same on every machine)."""
    root = Path(root)
    files = resolve_source(cfg, root)
    file_records = []
    # hashlib and most NumPy work release the GIL: the source is hashed on one thread while it is
    # cleaned on others, and each cleaned piece is hashed and written while later ones are cleaned.
    with (
        atomic_path(out) as tmp,
        _CorpusWriter(tmp, cfg.normalization) as writer,
        ThreadPoolExecutor(1) as hasher,
    ):
        for path in files:
            data = path.read_bytes()
            name = cfg.source if cfg.is_url else _recorded_name(path, root)
            if not cfg.is_url and len(files) == 1:
                _verify_local_checksum(cfg, path, data)
            digest = hasher.submit(_digest, data, "sha256")
            for piece in clean(data, name, cfg):
                writer.add(piece)
            file_records.append({"path": name, "bytes": len(data), "sha256": digest.result()})
            del data
        if not writer.has_text:
            raise PipelineError(
                f"{cfg.source} holds no text after cleaning ({cfg.normalization} normalisation)",
                "use a source with letters in it, or set ingest.normalization: raw",
            )
        provenance = {
            "source": cfg.source,
            "files": file_records,
            "bytes_in": sum(r["bytes"] for r in file_records),
            "sha256_in": _digest("".join(r["sha256"] for r in file_records).encode(), "sha256")
            if len(file_records) > 1
            else file_records[0]["sha256"],
            "sha256": writer.sha256.hexdigest(),
            "normalization": cfg.normalization,
            "strip_gutenberg": cfg.strip_gutenberg,
            "num_chars": writer.num_chars,
        }
        writer.finish(provenance)
    return IngestSummary(
        path=str(out),
        num_chars=provenance["num_chars"],
        num_bytes_in=provenance["bytes_in"],
        sha256=provenance["sha256"],
        normalization=cfg.normalization,
        files=len(files),
    )


def _recorded_name(path: Path, root: Path) -> str:
    """A file's name in the provenance: relative to the workspace when inside it, so the corpus
    hashes the same in every checkout."""
    if not path.is_absolute() or not root.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _require_corpus(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"corpus {path} not found", "run `rnn ingest` first")
    return path


def read_provenance(path: str | Path) -> dict:
    path = _require_corpus(path)
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except pa.ArrowInvalid:
        raise PipelineError(f"{path} is not a Parquet corpus", "re-run `rnn ingest`") from None
    if PROVENANCE_KEY not in metadata:
        raise PipelineError(f"{path} has no provenance metadata", "re-run `rnn ingest`")
    return json.loads(metadata[PROVENANCE_KEY])


def iter_text_rows(path: str | Path) -> Iterator[np.ndarray]:
    """The corpus as UTF-8 byte arrays, one per stored row group, each read when it is asked for
    (rows are at most 2 x ROW_BYTES). Not memory-mapped: decoding copies the bytes into Arrow
    buffers, so a mapping would count the text twice."""
    with pq.ParquetFile(_require_corpus(path), memory_map=False) as corpus:
        for group in range(corpus.num_row_groups):
            for chunk in corpus.read_row_group(group, columns=["text"]).column("text").chunks:
                if len(chunk) == 0:
                    continue
                offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
                data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
                yield data[offsets[chunk.offset] : offsets[chunk.offset + len(chunk)]]


def read_text_rows(path: str | Path) -> list[np.ndarray]:
    """All of ``iter_text_rows``, held in memory, for passes that need the text more than once
    (characters: counted, then encoded)."""
    return list(iter_text_rows(path))
