"""A run's checkpoints as the training loop sees them: resume from the newest generation whose
bytes verify (on every rank of a data-parallel run alike), save a generation, and the store that
shares them beyond the workspace (``CheckpointSync``; the flows' DVC remote)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Protocol

from rnn.backends.world import World
from rnn.training.checkpoints import (
    Generation,
    newest_good,
    save_generation,
    sidecar,
    sidecar_name,
    weights_name,
)

logger = logging.getLogger("rnn.training.loop")  # the loop's logger: its warnings, its name


class CheckpointSync(Protocol):
    """A store that checkpoints are shared through, keyed by the run's fingerprint, so that a
    training interrupted in one workspace resumes in another (the flows' DVC-remote store)."""

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """Bring the store's newest good generation for ``key`` into ``ckpt_dir`` if it is
        further along than the newest good one there (verified before it is installed)."""

    def push(self, key: str, ckpt_dir: Path) -> None:
        """Publish ``ckpt_dir``'s newest generation under ``key``, keeping the store to the
        generations resuming needs."""


def _load_checkpoint(engine, ckpt_dir: Path, run_fp: str) -> tuple[list[dict], dict]:
    """History of the epochs already done and the best weights so far, from the newest
    generation whose bytes match their checksum, or ([], {}) if there is none. Each damaged
    generation passed over is one warning line naming its file and where training goes on."""
    found = _newest_good(ckpt_dir, run_fp)
    if found is None:
        return [], {}
    return found.history, engine.load_checkpoint(found.data)


def _newest_good(ckpt_dir: Path, run_fp: str) -> Generation | None:
    found, problems = newest_good(ckpt_dir, run_fp)
    outcome = f"resuming from epoch {found.epoch}" if found else "training from the start"
    for problem in problems.values():
        logger.warning("%s; %s", problem, outcome)
    return found


def resume(engine, ckpt_dir: Path, run_fp: str, world: World) -> tuple[list[dict], dict]:
    """``_load_checkpoint`` on rank 0's files, on every rank: ranks on other machines have no
    checkpoint of their own, and all must resume from the same epoch. Rank 0 chooses the
    generation and sends its bytes and checksum; every rank verifies them before loading."""
    if world.size == 1:
        return _load_checkpoint(engine, ckpt_dir, run_fp)
    found = _newest_good(ckpt_dir, run_fp) if world.is_root else None
    record = sidecar(run_fp, found.epoch, hashlib.sha256(found.data).hexdigest()) if found else {}
    sent = json.dumps(record).encode() if world.is_root else None
    record = json.loads(world.broadcast_bytes(sent))
    data = world.broadcast_bytes((found.data if found else b"") if world.is_root else None)
    with tempfile.TemporaryDirectory(prefix="rnn-resume-") as tmp:
        if record:
            (Path(tmp) / sidecar_name(record["epoch"])).write_text(json.dumps(record))
            (Path(tmp) / weights_name(record["epoch"])).write_bytes(data)
        return _load_checkpoint(engine, Path(tmp), run_fp)


def save_checkpoint(
    engine,
    ckpt_dir: Path,
    run_fp: str,
    history: list[dict],
    best: dict,
    sync: CheckpointSync | None,
) -> None:
    meta = {"epoch": str(len(history)), "fingerprint": run_fp, "history": json.dumps(history)}
    save_generation(
        ckpt_dir,
        run_fp,
        len(history),
        lambda tmp: engine.save_checkpoint(tmp, metadata=meta, extra=best),
    )
    if sync is not None:
        sync.push(run_fp, ckpt_dir)
