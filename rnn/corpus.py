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

from rnn.atomic import atomic_path
from rnn.config import IngestConfig
from rnn.errors import PipelineError
from rnn.fetch import resolve_source
from rnn.text import check_text, iter_normalize_d2l, normalize_raw, strip_gutenberg

PROVENANCE_KEY = b"rnn.provenance"
ROW_BYTES = 1 << 22  # rows of ~4 MiB keep Arrow temporaries (word splitting) small


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
    check_text(data, name, cfg.encoding)
    if cfg.encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "ascii"):
        data = data.decode(cfg.encoding).encode("utf-8")
    if cfg.strip_gutenberg:
        data = strip_gutenberg(data)
    if cfg.normalization == "d2l":
        yield from iter_normalize_d2l(data)
    else:
        yield normalize_raw(data)


def _row_bounds(text: bytes, sep: bytes) -> list[int]:
    """Cut ``text`` into rows of about ROW_BYTES, each ending at ``sep`` so no token is split."""
    bounds = [0]
    while len(text) - bounds[-1] > ROW_BYTES:
        cut = text.rfind(sep, bounds[-1], bounds[-1] + ROW_BYTES) + 1
        bounds.append(cut if cut > bounds[-1] else bounds[-1] + ROW_BYTES)
    bounds.append(len(text))
    return bounds


def to_table(text: bytes, provenance: dict) -> pa.Table:
    sep = b" " if provenance["normalization"] == "d2l" else b"\n"
    offsets = np.asarray(_row_bounds(text, sep), dtype=np.int64)
    column = pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(text)
    )
    table = pa.table({"text": column})
    return table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})


def ingest(cfg: IngestConfig, out: str | Path) -> IngestSummary:
    """Read the source, clean it and write ``out`` (Parquet); nothing is written on error."""
    files = resolve_source(cfg)
    pieces, file_records = [], []
    text_sha256 = hashlib.sha256()
    # hashlib and most NumPy work release the GIL: the source is hashed on one thread while it is
    # cleaned on others, and each cleaned piece is hashed here while later ones are cleaned.
    with ThreadPoolExecutor(1) as hasher:
        for path in files:
            data = path.read_bytes()
            name = cfg.source if cfg.is_url else str(path)
            if not cfg.is_url and len(files) == 1:
                _verify_local_checksum(cfg, path, data)
            digest = hasher.submit(_digest, data, "sha256")
            for piece in clean(data, name, cfg):
                text_sha256.update(piece)
                pieces.append(piece)
            file_records.append({"path": name, "bytes": len(data), "sha256": digest.result()})
    text = b"".join(pieces)
    if not text.strip():
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
        "sha256": text_sha256.hexdigest(),
        "normalization": cfg.normalization,
        "strip_gutenberg": cfg.strip_gutenberg,
        "num_chars": len(text.decode("utf-8")) if not text.isascii() else len(text),
    }
    with atomic_path(out) as tmp:
        # Uncompressed and without statistics: writing is then ~10x faster than zstd, and DVC's
        # cache deduplicates whole files anyway.
        pq.write_table(
            to_table(text, provenance),
            tmp,
            compression="none",
            use_dictionary=False,
            write_statistics=False,
            row_group_size=1,  # one ~4 MiB row per group: readers get bounded chunks
        )
    return IngestSummary(
        path=str(out),
        num_chars=provenance["num_chars"],
        num_bytes_in=provenance["bytes_in"],
        sha256=provenance["sha256"],
        normalization=cfg.normalization,
        files=len(files),
    )


def _require_corpus(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"corpus {path} not found", "run `rnn ingest` first")
    return path


def read_provenance(path: str | Path) -> dict:
    path = _require_corpus(path)
    try:
        metadata = pq.read_schema(path).metadata or {}
    except pa.ArrowInvalid:
        raise PipelineError(f"{path} is not a Parquet corpus", "re-run `rnn ingest`") from None
    if PROVENANCE_KEY not in metadata:
        raise PipelineError(f"{path} has no provenance metadata", "re-run `rnn ingest`")
    return json.loads(metadata[PROVENANCE_KEY])


def read_text_rows(path: str | Path) -> list[np.ndarray]:
    """The corpus as UTF-8 byte arrays, one per stored row group chunk, without copying rows."""
    path = _require_corpus(path)
    column = pq.read_table(path, columns=["text"], memory_map=True).column("text")
    rows = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        rows.append(data[offsets[chunk.offset] : offsets[chunk.offset + len(chunk)]])
    return rows
