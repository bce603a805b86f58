"""Checkpoint generations that cannot lie: bytes are used only after their sha256 matched.

A generation is two files in a run's checkpoint directory:
  checkpoint-<epoch>.safetensors   the engine's state and the best weights so far; its header
                                   metadata holds the run's fingerprint and epoch history
  checkpoint-<epoch>.json          fingerprint, epoch and the sha256 of the weights file
The weights are written first and the JSON last (each atomically), so a JSON only ever names
complete weights. The newest ``KEEP`` good generations stay, so a damaged newest one still
resumes from the one before. Resuming reads a weights file once, hashes those bytes and
deserialises the very same bytes: nothing read from disk is trusted before its checksum matched.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnn.store.atomic import atomic_path
from rnn.store.record import file_sha256

KEEP = 2  # the newest generation and the one before it, for when the newest is damaged
_NAME = re.compile(r"^checkpoint-(\d+)\.(safetensors|json)$")
_LEGACY = ("checkpoint.safetensors", "checkpoint.json")  # one unverifiable generation, replaced


def weights_name(epoch: int) -> str:
    return f"checkpoint-{epoch:06d}.safetensors"


def sidecar_name(epoch: int) -> str:
    return f"checkpoint-{epoch:06d}.json"


@dataclass(frozen=True)
class Generation:
    """A verified generation: its epoch, the weights file's bytes and the history they hold."""

    epoch: int
    data: bytes
    history: list[dict]


class Damaged(Exception):
    """A generation whose bytes cannot be trusted; the message names the file and why."""


def sidecar(run_fp: str, epoch: int, sha256: str) -> dict:
    return {"fingerprint": run_fp, "epoch": epoch, "sha256": sha256}


def read_sidecar(path: Path) -> dict:
    """The JSON beside a generation's weights; ``Damaged`` if it is missing or malformed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not (
            isinstance(record["fingerprint"], str)
            and isinstance(record["epoch"], int)
            and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])
        ):
            raise ValueError("unexpected fields")
    except FileNotFoundError:
        raise Damaged(
            f"checkpoint {path.with_suffix('.safetensors')} has no checksum file "
            "(its write was interrupted)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise Damaged(f"checkpoint checksum file {path} is unreadable ({err})") from None
    return record


def header_metadata(data: bytes) -> dict:
    """A safetensors file's ``rnn`` metadata (record.weights_metadata), parsed from its bytes:
    an 8-byte little-endian header length, then the JSON header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return json.loads(header.get("__metadata__", {}).get("rnn", "{}"))


def epochs_on_disk(ckpt_dir: Path) -> list[int]:
    """Every epoch a generation file names, newest first (complete or not, this run's or not)."""
    if not ckpt_dir.is_dir():
        return []
    found = {int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))}
    return sorted(found, reverse=True)


def load_generation(ckpt_dir: Path, epoch: int, run_fp: str) -> Generation | None:
    """Generation ``epoch``'s verified bytes and history; None if it is another configuration's
    (another fingerprint: never resumed, not damage); ``Damaged`` if its bytes are not the
    ones its checksum names."""
    record = read_sidecar(ckpt_dir / sidecar_name(epoch))
    if record["fingerprint"] != run_fp:
        return None
    weights = ckpt_dir / weights_name(epoch)
    try:
        data = weights.read_bytes()
    except OSError as err:
        raise Damaged(f"checkpoint {weights} is unreadable ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"] or record["epoch"] != epoch:
        raise Damaged(
            f"checkpoint {weights} is damaged (its sha256 does not match {sidecar_name(epoch)})"
        )
    try:  # verified bytes: the header is the one that was written
        meta = header_metadata(data)
        history = json.loads(meta["history"])
    except (struct.error, ValueError, KeyError, TypeError):
        history = None
    if history is None or meta.get("fingerprint") != run_fp or len(history) != epoch:
        raise Damaged(f"checkpoint {weights} does not describe epoch {epoch} of this run")
    return Generation(epoch, data, history)


def newest_good(ckpt_dir: Path, run_fp: str) -> tuple[Generation | None, dict[int, str]]:
    """The newest generation of this run whose bytes verify, and a line per damaged generation
    newer than it, by epoch (the caller says what it resumes from instead)."""
    problems: dict[int, str] = {}
    for epoch in epochs_on_disk(ckpt_dir):
        try:
            found = load_generation(ckpt_dir, epoch, run_fp)
        except Damaged as err:
            problems[epoch] = str(err)
            continue
        if found is not None:
            return found, problems
    return None, problems


def save_generation(ckpt_dir: Path, run_fp: str, epoch: int, write: Callable[[Path], None]) -> None:
    """Write generation ``epoch`` (``write`` fills the weights file), then drop all but the
    newest ``KEEP`` good generations."""
    with atomic_path(ckpt_dir / weights_name(epoch)) as tmp:
        write(tmp)
        digest = file_sha256(tmp)
    install_sidecar(ckpt_dir, sidecar(run_fp, epoch, digest))
    prune(ckpt_dir, run_fp, epoch)


def install_sidecar(ckpt_dir: Path, record: dict) -> None:
    with atomic_path(ckpt_dir / sidecar_name(record["epoch"])) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def prune(ckpt_dir: Path, run_fp: str, newest: int) -> None:
    """Keep generation ``newest`` and the ``KEEP - 1`` good ones of this run before it; the rest
    (older ones, damaged ones, other configurations', the old single-file layout) go."""
    keep = {newest}
    for epoch in epochs_on_disk(ckpt_dir):
        if len(keep) >= KEEP:
            break
        if epoch < newest:
            try:
                if load_generation(ckpt_dir, epoch, run_fp) is not None:
                    keep.add(epoch)
            except Damaged:
                pass
    for path in ckpt_dir.iterdir():
        match = _NAME.match(path.name)
        if (match and int(match.group(1)) not in keep) or path.name in _LEGACY:
            path.unlink(missing_ok=True)
