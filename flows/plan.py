"""What a flow run plans before its tasks run, shared by the pipeline flow and the training flow:
the parameters it adopts (the workspace's params.yaml with the run's overrides), which stages are
stale and what reruns after them, and the data stages run or restored as `dvc repro` would."""

from __future__ import annotations

import os
import socket
from typing import Any

import yaml

from rnn.config import Params, load_params, validate_params
from rnn.names import MACHINE_ENV
from rnn.registry import RunKey
from rnn.store.atomic import atomic_path
from rnn.workspace import Workspace
from stores import dvc_sync
from tasks.caching import with_outputs
from tasks.stages import ingest_task, partition_task, vocab_task


def machine_name() -> str:
    """The machine a run is on, for logs and results: the pool's name for it, or the host's."""
    return os.environ.get(MACHINE_ENV) or socket.gethostname()


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (a nested dict, e.g. {"train": {"lr": 0.5}}) merged into ``base``."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def adopt_params(ws: Workspace, params_file: str, overrides: dict[str, Any] | None) -> Params:
    """This run's parameters: ``params_file`` (relative to the workspace) with ``overrides``.
    They become the workspace's params.yaml, as `dvc exp run -S` does, so that DVC tracks, caches
    and records the run like `dvc repro` with those parameters; invalid ones change nothing."""
    source = ws.inside(params_file, "params_file")
    base = load_params(source)
    _check_override_paths(ws, base, overrides or {})
    params = validate_params(merge(base.model_dump(), overrides or {}), "flow parameters")
    if source != ws.params_file or params != base:
        with atomic_path(ws.params_file) as tmp:
            tmp.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    return params


def _check_override_paths(ws: Workspace, base: Params, overrides: dict[str, Any]) -> None:
    """A flow argument may move the corpus or the download cache only inside the workspace
    (or, for the source, to a URL, which needs a pinned checksum): anyone who can start a flow
    run could otherwise make a worker read its other files into a corpus and push them. The
    committed parameter file's own paths are its author's choice."""
    ingest = overrides.get("ingest") or {}
    for key in ("source", "cache_dir"):
        value = ingest.get(key)
        if value == getattr(base.ingest, key) or not isinstance(value, str):
            continue
        if not value.startswith(("http://", "https://")):
            ws.inside(value, f"the flow argument ingest.{key}")


def downstream(stale: set[str], stages: dict[str, list[str]]) -> set[str]:
    """`dvc status` names only stages whose own inputs changed; everything after them reruns too."""
    out = set(stale)
    data = ["ingest", "vocab", "partition"]
    for i, stage in enumerate(data):
        if any(s in out for s in data[:i]):
            out.add(stage)
    for train, evaluate in zip(stages["train"], stages["evaluate"], strict=True):
        if out & {"vocab", "partition"} or train in out:
            out.update({train, evaluate})
        if evaluate in out:
            out.add("report")
    return out


def stage_names(runs: list[RunKey]) -> dict[str, list[str]]:
    return {
        "train": [f"train@{r.name}" for r in runs],
        "evaluate": [f"evaluate@{r.name}" for r in runs],
    }


class Stages:
    """Runs the pipeline's stages in one workspace the way `dvc repro` would: only stale ones,
    and a stale one that any workspace already computed is restored from the run-cache."""

    def __init__(self, ws: Workspace, stale: set[str] | None) -> None:
        self.ws, self.stale = ws, stale
        self.restored: list[str] = []

    def needs_work(self, stage: str) -> bool:
        return self.stale is not None and stage in self.stale

    def reuse(self, stage: str) -> bool:
        """True when the outputs on disk are current: up to date, or just restored."""
        if self.stale is None:
            return False
        if stage not in self.stale:
            return True
        if dvc_sync.restore(self.ws.root, stage):
            self.restored.append(stage)
            return True
        return False

    def runnable(self, task, stage: str, *outputs):
        return with_outputs(task, *outputs, stale=self.needs_work(stage))


DATA_STAGES = ("ingest", "vocab", "partition")


def run_data_stages(plan: Stages, ws: Workspace, pdict: dict) -> None:
    """ingest -> vocab -> partition, each restored or run as `dvc repro` would."""
    root = str(ws.root)
    plan.runnable(ingest_task, "ingest", ws.corpus)(root, pdict, reuse=plan.reuse("ingest"))
    plan.runnable(vocab_task, "vocab", ws.vocab)(root, pdict, reuse=plan.reuse("vocab"))
    plan.runnable(partition_task, "partition", ws.partition)(
        root, pdict, reuse=plan.reuse("partition")
    )
