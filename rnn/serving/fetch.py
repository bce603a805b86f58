"""A registered model fetched onto a machine with no checkout of the project: the commit its
stage's newest assignment names (GTO's ``<name>#<stage>#<n>`` tags on origin), then its run
directory at that commit from the DVC remote (``dvc get``, run as a program), with the ONNX bundle
training wrote into it, checked against the run's record before anything uses it. A model
registered before training wrote bundles is exported here from its verified weights instead.

The remote is the one the project's ``.dvc/config`` names, or the machine's own
(``RNN_DVC_REMOTE``, ``RNN_DVC_REMOTE_ENDPOINT``, the keys in ``AWS_*``): the credentials stay in
the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rnn.data.tokens import VOCAB_FILE
from rnn.errors import PipelineError
from rnn.export.bundle import EXPORT_SHA_KEY, MANIFEST, ExportSummary, export_run, verified_bundle
from rnn.names import DVC_REMOTE_ENDPOINT_ENV, DVC_REMOTE_ENV
from rnn.store import model_tags
from rnn.store.atomic import atomic_dir
from rnn.store.dvc_cli import dvc_command
from rnn.store.record import read_record
from rnn.workspace import Workspace


@dataclass(frozen=True)
class Holder:
    """What a stage of one model holds on origin: the commit, and its version's name."""

    commit: str
    version: str


def _origin_tags(origin: str) -> dict[str, str]:
    """Every tag on ``origin`` -> the commit it names (annotated tags peeled)."""
    listed = subprocess.run(["git", "ls-remote", "--tags", origin], capture_output=True, text=True)
    if listed.returncode != 0:
        raise PipelineError(
            f"cannot read the tags of {origin}: {listed.stderr.strip().splitlines()[-1:]}",
            "check the origin's URL and your access to it",
        )
    tags: dict[str, str] = {}
    for line in sorted(listed.stdout.splitlines(), key=lambda x: x.endswith("^{}")):
        sha, ref = line.split("\t", 1)
        tags[ref.removeprefix("refs/tags/").removesuffix("^{}")] = sha  # peeled last, kept
    return tags


def stage_holders(origin: str, stage: str) -> dict[str, Holder]:
    """Every model whose ``stage`` is assigned on ``origin``: the newest assignment's commit."""
    on_origin = _origin_tags(origin)
    newest: dict[str, tuple[int, str]] = {}
    versions: dict[tuple[str, str], str] = {}
    for tag, sha in on_origin.items():
        if (given := model_tags.parse_assignment(tag)) and given.stage == stage:
            if given.number > newest.get(given.name, (0, ""))[0]:
                newest[given.name] = (given.number, sha)
        elif registered := model_tags.parse_version(tag):
            versions[(registered[0], sha)] = registered[1]
    return {
        name: Holder(sha, versions.get((name, sha), sha[:12]))
        for name, (_, sha) in sorted(newest.items())
    }


def stage_holder(origin: str, name: str, stage: str) -> Holder:
    holder = stage_holders(origin, stage).get(name)
    if holder is None:
        raise PipelineError(
            f"no model {name!r} in stage {stage!r} on {origin}",
            "pick a registered model and stage (`python -m stores.registry list` in a clone)",
        )
    return holder


def _remote_config(dest: Path) -> list[str]:
    """``--config FILE`` naming this machine's remote, or nothing (the project's default)."""
    url = os.environ.get(DVC_REMOTE_ENV)
    if not url:
        return []
    lines = ["[core]", "    remote = machine", "['remote \"machine\"']", f"    url = {url}"]
    endpoint = os.environ.get(DVC_REMOTE_ENDPOINT_ENV)
    if endpoint:
        lines.append(f"    endpointurl = {endpoint}")
    config = dest / "remote.conf"
    config.write_text("\n".join(lines) + "\n")
    return ["--config", str(config)]


def _dvc_get(origin: str, path: str, commit: str, out: Path, config: list[str]) -> None:
    got = subprocess.run(
        [*dvc_command(), "get", origin, path, "--rev", commit, "-o", str(out), "--force", *config],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0:
        reason = (got.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(
            f"could not fetch {path} at {commit[:12]} from {origin}: {reason}",
            f"check the DVC remote ({DVC_REMOTE_ENV}) and its credentials",
        )


def fetch_registered(origin: str, name: str, stage: str, dest: Path) -> Path:
    """Fetch ``name``'s ``stage`` model into ``dest``; returns its verified ONNX bundle."""
    return fetch_at(origin, name, stage_holder(origin, name, stage).commit, dest)


def fetch_at(origin: str, name: str, commit: str, dest: Path) -> Path:
    """Fetch the run ``name`` recorded at ``commit`` into ``dest``; returns its verified ONNX
    bundle."""
    dest.mkdir(parents=True, exist_ok=True)
    config = _remote_config(dest)
    project = Workspace.at(dest)  # the project's layout, for the paths inside origin
    model = dest / "model"
    _dvc_get(origin, (project.models / name).relative_to(dest).as_posix(), commit, model, config)
    if read_record(model).get(EXPORT_SHA_KEY):
        bundle = verified_bundle(model).path
    else:  # registered before training wrote bundles: export its verified weights here
        vocab = (project.vocab / VOCAB_FILE).relative_to(dest).as_posix()
        _dvc_get(origin, vocab, commit, dest / "vocab.json", config)
        export_run(name, model, dest / "vocab.json", dest / "export")
        bundle = dest / "export"
    return bundle


def export_registered(origin: str, name: str, stage: str, out: Path) -> ExportSummary:
    """``name``'s ``stage`` model's verified bundle copied to ``out``, replaced whole."""
    with tempfile.TemporaryDirectory(prefix="rnn-export-") as scratch:
        bundle = fetch_registered(origin, name, stage, Path(scratch))
        with atomic_dir(out) as tmp:
            shutil.copytree(bundle, tmp, dirs_exist_ok=True)
    m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    return ExportSummary(name, str(out), m["cell"], m["num_layers"], m["num_hiddens"],
                         m["vocab_size"], m["files"]["model.onnx"])  # fmt: skip
