"""Training checkpoints shared through the DVC remote, so a training interrupted in one workspace
(a killed worker, a lost machine) resumes in any other from its last pushed checkpoint.

Layout on the remote, beside DVC's own ``files/`` and ``runs/``:
``checkpoints/<run fingerprint>/<weights sha256>.safetensors`` and ``.../checkpoint.json``. The
weights go up first under their content hash and the small JSON that names them last, so a
reader never sees a record whose weights are not there; the fingerprint covers parameters, data
and library versions, so a checkpoint is only ever resumed by the very same run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rnn.atomic import atomic_path
from rnn.record import file_sha256
from rnn.train import CHECKPOINT, HISTORY, checkpoint_epochs

logger = logging.getLogger(__name__)


class RemoteCheckpoints:
    """``rnn.train.CheckpointSync`` over the default DVC remote of the workspace at ``root``."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            remote = repo.cloud.get_remote(None, "push")
        self.fs, self.base = remote.fs, remote.fs.join(remote.path, "checkpoints")

    def _path(self, key: str, name: str) -> str:
        return self.fs.join(self.base, key, name)

    def push(self, key: str, ckpt_dir: Path) -> None:
        """Publish the checkpoint; a remote that fails only costs this copy (training goes on,
        and the local checkpoint still resumes a crash in this workspace)."""
        record = json.loads((ckpt_dir / HISTORY).read_text())
        epochs = len(record["history"])
        weights = self._path(key, f"{record['weights_sha256']}.safetensors")
        try:
            self.fs.makedirs(self.fs.join(self.base, key), exist_ok=True)
            self.fs.put_file(str(ckpt_dir / CHECKPOINT), weights)
            self.fs.pipe_file(self._path(key, HISTORY), (ckpt_dir / HISTORY).read_bytes())
        except Exception as err:  # fsspec backends raise their own errors
            logger.warning(
                "could not push the checkpoint at epoch %d (%s); training goes on", epochs, err
            )
            return
        logger.info("checkpoint at epoch %d pushed", epochs)

    def fetch(self, key: str, ckpt_dir: Path) -> None:
        """Bring the remote's checkpoint when it is further along; an unreachable remote only
        means training starts from the local checkpoint (or afresh)."""
        remote_record = self._path(key, HISTORY)
        try:
            if not self.fs.exists(remote_record):
                return
            record = json.loads(self.fs.cat_file(remote_record))
        except Exception as err:  # fsspec backends raise their own errors
            logger.warning("could not read the remote's checkpoint (%s); not resuming from it", err)
            return
        if len(record["history"]) <= checkpoint_epochs(ckpt_dir):
            return  # this workspace is as far along already
        try:
            with atomic_path(ckpt_dir / CHECKPOINT) as tmp:
                self.fs.get_file(
                    self._path(key, f"{record['weights_sha256']}.safetensors"), str(tmp)
                )
                if file_sha256(tmp) != record["weights_sha256"]:
                    raise ValueError("damaged")  # leaves the local checkpoint as it was
        except Exception as err:  # unreachable, or damaged (ValueError above)
            logger.warning(
                "pushed checkpoint %s unusable (%s); not resuming from it", key[:12], err
            )
            return
        with atomic_path(ckpt_dir / HISTORY) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        logger.info("resuming from the pushed checkpoint at epoch %d", len(record["history"]))
