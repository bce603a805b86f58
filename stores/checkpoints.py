"""Training checkpoints shared through the DVC remote, so a training interrupted in one workspace
(a killed worker, a lost machine) resumes in any other from its last pushed checkpoint.

Layout on the remote, beside DVC's own ``files/`` and ``runs/`` (which `dvc gc` alone knows):
``checkpoints/<run fingerprint>/<weights sha256>.safetensors`` and one
``checkpoint-<epoch>.json`` per generation (rnn/training/checkpoints.py's checksum record, and when it was
pushed). The weights go up first under their content hash and the JSON that names them last, so
a reader never sees a JSON whose weights are not there; fetched bytes are verified against it
before they are installed. The fingerprint covers parameters, data and library versions, so a
checkpoint is only ever resumed by the very same run.

The remote does not grow with every run: each push keeps the run's last ``KEEP`` generations;
once a run's model is pushed the flows delete its folder (``collect_finished``); and
``python -m stores.checkpoints gc --older-than-days N`` deletes the folders of runs that nothing
has pushed to for N days (abandoned trainings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from pathlib import Path

from rnn.store.atomic import atomic_path
from rnn.training.checkpoints import (
    KEEP,
    Damaged,
    epochs_on_disk,
    install_sidecar,
    load_generation,
    newest_good,
    sidecar,
    sidecar_name,
    weights_name,
)

logger = logging.getLogger(__name__)

_SIDECAR = re.compile(r"^checkpoint-(\d+)\.json$")
DAY_S = 86_400


class RemoteCheckpoints:
    """``rnn.training.loop.CheckpointSync`` over the default DVC remote of the workspace at ``root``."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            remote = repo.cloud.get_remote(None, "push")
        self.fs, self.base = remote.fs, remote.fs.join(remote.path, "checkpoints")

    def _path(self, key: str, name: str) -> str:
        return self.fs.join(self.base, key, name)

    def _epochs(self, key: str) -> list[int]:
        """The epochs of the generations pushed for ``key``, newest first."""
        folder = self.fs.join(self.base, key)
        if not self.fs.exists(folder):
            return []
        names = (self.fs.name(p) for p in self.fs.ls(folder, detail=False))
        return sorted({int(m.group(1)) for n in names if (m := _SIDECAR.match(n))}, reverse=True)

    def push(self, key: str, ckpt_dir: Path) -> None:
        """Publish the newest local generation (its verified bytes), then drop the remote's
        older ones; a remote that fails only costs this copy (training goes on, and the local
        checkpoint still resumes a crash in this workspace)."""
        epochs = epochs_on_disk(ckpt_dir)
        try:
            found = load_generation(ckpt_dir, epochs[0], key) if epochs else None
        except Damaged as err:
            logger.warning("%s; not pushing it", err)
            return
        if found is None:
            return
        digest = hashlib.sha256(found.data).hexdigest()
        record = {**sidecar(key, found.epoch, digest), "pushed_at": time.time()}
        try:
            self.fs.makedirs(self.fs.join(self.base, key), exist_ok=True)
            self.fs.pipe_file(self._path(key, f"{digest}.safetensors"), found.data)
            self.fs.pipe_file(
                self._path(key, sidecar_name(found.epoch)), json.dumps(record).encode()
            )
            self._prune(key, found.epoch)
        except Exception as err:  # fsspec backends raise their own errors
            logger.warning(
                "could not push the checkpoint at epoch %d (%s); training goes on", found.epoch, err
            )
            return
        logger.info("checkpoint at epoch %d pushed", found.epoch)

    def _prune(self, key: str, newest: int) -> None:
        """Keep generation ``newest`` and the ``KEEP - 1`` before it; JSONs go before the
        weights they name, so no JSON is left naming deleted weights."""
        epochs = self._epochs(key)
        keep = [newest, *[e for e in epochs if e < newest][: KEEP - 1]]
        for epoch in set(epochs) - set(keep):
            self.fs.rm(self._path(key, sidecar_name(epoch)))
        named = set()
        for epoch in keep:
            try:
                named.add(
                    json.loads(self.fs.cat_file(self._path(key, sidecar_name(epoch))))["sha256"]
                )
            except Exception:  # an unreadable JSON names nothing worth keeping
                continue
        for path in self.fs.ls(self.fs.join(self.base, key), detail=False):
            name = self.fs.name(path)
            if name.endswith(".safetensors") and name.removesuffix(".safetensors") not in named:
                self.fs.rm(path)

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """Install the remote's newest good generation when it is further along than the newest
        good local one. A damaged remote copy is one warning line and the one before it is
        tried; an unreachable remote only means training starts from the local checkpoint (or
        afresh)."""
        found, problems = newest_good(Path(ckpt_dir), key)
        have = found.epoch if found else 0
        try:
            epochs = self._epochs(key)
        except Exception as err:  # fsspec backends raise their own errors
            logger.warning(
                "could not read the remote's checkpoints (%s); not resuming from them", err
            )
            return
        for epoch in epochs:
            if epoch <= have:
                return  # this workspace is as far along already
            data = self._fetch_generation(key, epoch)
            if data is not None:
                with atomic_path(Path(ckpt_dir) / weights_name(epoch)) as tmp:
                    tmp.write_bytes(data)
                install_sidecar(
                    Path(ckpt_dir), sidecar(key, epoch, hashlib.sha256(data).hexdigest())
                )
                if epoch in problems:  # the local copy was damaged: say so once, here
                    logger.warning("%s; the remote's good copy replaces it", problems[epoch])
                logger.info("resuming from the pushed checkpoint at epoch %d", epoch)
                return

    def _fetch_generation(self, key: str, epoch: int) -> bytes | None:
        """Generation ``epoch``'s weights if their bytes match the JSON that names them."""
        index = self._path(key, sidecar_name(epoch))
        try:
            record = json.loads(self.fs.cat_file(index))
            weights = self._path(key, f"{record['sha256']}.safetensors")
            data = self.fs.cat_file(weights)
        except Exception as err:  # unreachable, missing, or a malformed JSON
            logger.warning(
                "remote checkpoint %s is unusable (%s); not resuming from it", index, err
            )
            return None
        if (
            hashlib.sha256(data).hexdigest() != record["sha256"]
            or record.get("epoch") != epoch
            or record.get("fingerprint") != key
        ):
            logger.warning(
                "remote checkpoint %s is damaged (its sha256 does not match %s); not resuming "
                "from it",
                weights,
                sidecar_name(epoch),
            )
            return None
        return data

    def collect(self, key: str) -> None:
        """Delete every pushed generation of ``key`` (its run is done: nothing resumes it)."""
        folder = self.fs.join(self.base, key)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)

    def gc(self, older_than_s: float, dry_run: bool = False) -> list[str]:
        """Delete the folders of runs with no push for ``older_than_s`` seconds (or with no
        readable generation at all); returns their fingerprints."""
        if not self.fs.exists(self.base):
            return []
        cutoff, removed = time.time() - older_than_s, []
        for folder in self.fs.ls(self.base, detail=False):
            key = self.fs.name(folder)
            if self._last_push(key) < cutoff:
                removed.append(key)
                if not dry_run:
                    self.collect(key)
        return removed

    def _last_push(self, key: str) -> float:
        latest = 0.0
        for epoch in self._epochs(key):
            try:
                pushed = json.loads(self.fs.cat_file(self._path(key, sidecar_name(epoch))))
                latest = max(latest, float(pushed["pushed_at"]))
            except Exception:  # unreadable: says nothing about when it was pushed
                continue
        return latest


def collect_finished(root: Path, params, runs) -> None:
    """After a flow pushed its outputs: delete the remote checkpoints of ``runs`` whose model is
    in the workspace (a rerun restores it from DVC instead of resuming). A failure only warns;
    `python -m stores.checkpoints gc` collects what is left."""
    from rnn.store.record import RECORD_FILE
    from rnn.training.identity import run_identity
    from rnn.workspace import Workspace

    ws = Workspace(Path(root))
    try:
        store = RemoteCheckpoints(ws.root)
        for run in runs:
            if (ws.model(run) / RECORD_FILE).is_file():
                store.collect(run_identity(run, params, ws.partition, ws.vocab).fingerprint)
    except Exception as err:  # fsspec backends raise their own errors
        logger.warning("could not delete finished runs' checkpoints from the remote (%s)", err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stores.checkpoints",
        description="Delete training checkpoints on the workspace's DVC remote that no run needs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gc = sub.add_parser("gc", help="delete the checkpoints of runs abandoned for N days")
    gc.add_argument("--workdir", type=Path, default=Path("."), help="the DVC workspace")
    gc.add_argument("--older-than-days", type=float, default=7.0)
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    args = parser.parse_args(argv)
    removed = RemoteCheckpoints(args.workdir).gc(args.older_than_days * DAY_S, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} the checkpoints of {len(removed)} run(s): {' '.join(removed) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
