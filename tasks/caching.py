"""Content-keyed caching for the stage tasks.

Prefect 3's default policy includes the run id (no reuse across runs) and ``INPUTS`` hashes a path
as a string; this policy hashes what the paths contain, the parameters and the library's source.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

import rnn
from rnn.store.record import file_sha256
from rnn.workspace import Workspace


def _hash_path(path: Path) -> str:
    """A file's sha256, or a directory's: its files' relative names and sha256s, sorted."""
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(str(f.relative_to(path)), file_sha256(f)) for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


@lru_cache(maxsize=1)
def library_source_hash() -> str:
    """Every module of the ``rnn`` library: a code change invalidates the cached results."""
    root = Path(rnn.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def _task_source(task_ctx) -> str:
    try:
        return inspect.getsource(task_ctx.task.fn)
    except (OSError, TypeError, AttributeError):
        return getattr(getattr(task_ctx, "task", None), "name", "")


@dataclass
class StageFiles(CachePolicy):
    """Key = hash(content of the files the stage ``reads`` in its workspace, the arguments (the
    workspace root among them: a hit never hands one workspace's summary to another; sharing
    across workspaces is DVC's run-cache's job), library and task source).

    Outputs are not part of the key; the flow refreshes a task whose outputs are missing
    (``with_outputs``), so a cache hit always has its files on disk."""

    reads: Callable[[Workspace, dict[str, Any]], list[Path]] = lambda ws, args: []
    # the parameter sections the stage reads (None: all), so a training change keeps data cached
    sections: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = field(default=("reuse",))

    def compute_key(
        self, task_ctx, inputs: dict[str, Any], flow_parameters, **kwargs
    ) -> str | None:
        # The task's own source is hashed here rather than by combining with TASK_SOURCE: a
        # compound policy drops a None part and would cache on the task source alone.
        parts: dict[str, Any] = {"code": library_source_hash(), "task": _task_source(task_ctx)}
        for name, value in sorted(inputs.items()):
            if name == "params" and self.sections is not None:
                value = {k: value[k] for k in self.sections}
            if name not in self.ignore:
                parts[name] = json.dumps(value, sort_keys=True, default=str)
        ws = Workspace(Path(inputs["workdir"]))
        parts["reads"] = [
            _hash_path(p) if p.exists() else "missing" for p in self.reads(ws, inputs)
        ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def with_outputs(task, *outputs: str | Path, stale: bool = False):
    """The task itself, or a copy that recomputes (and re-caches) when any output is missing or
    the caller knows the outputs on disk are stale (DVC says so): a cache hit returns a summary,
    it does not restore files."""
    if not stale and all(Path(o).exists() for o in outputs):
        return task
    return task.with_options(refresh_cache=True)
