"""The model registry (stores/registry.py) with real git, GTO and DVC: a bare origin, clones
standing for machines, a local directory as the DVC remote. Versions and stage assignments are
tags on origin with their history; two assignments at once, one wins; `dvc artifacts get` fetches
the stage's model into an empty directory; dvc.yaml's artifacts are what `rnn artifacts` makes of
params.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnn.errors import PipelineError
from stores import registry
from tests.support.workspace import ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
NAME = "torch-scratch-rnn"
MODEL = f"data/models/{NAME}"
DVC_YAML = {
    "artifacts": {NAME: {"path": MODEL, "type": "model"}},
    "stages": {
        "train": {
            "cmd": f"{sys.executable} -c \"import pathlib, sys; p = pathlib.Path('{MODEL}'); "
            "p.mkdir(parents=True, exist_ok=True); "
            "(p / 'model.safetensors').write_text(open('weights.txt').read())\"",
            "deps": ["weights.txt"],
            "outs": [MODEL],
        }
    },
}


def sh(cwd: Path, *cmd: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
    return done.stdout


def clone(origin: Path, dest: Path, remote: Path) -> Path:
    sh(dest.parent, "git", "clone", "-q", str(origin), str(dest))
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        sh(dest, "git", "config", key, value)
    sh(dest, DVC, "remote", "add", "--local", "-d", "shared", str(remote))
    return dest


def train_and_record(ws: Path, weights: str) -> str:
    """A 'training' whose model is ``weights``, pushed to the remote; returns its commit."""
    (ws / "weights.txt").write_text(weights)
    sh(ws, DVC, "repro", "-q")
    sh(ws, DVC, "push", "-q")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", f"model {weights}")
    sh(ws, "git", "push", "-q", "origin", "HEAD:main")
    return sh(ws, "git", "rev-parse", "HEAD").strip()


@pytest.fixture
def origin(tmp_path) -> tuple[Path, Path]:
    origin, remote, work = tmp_path / "origin.git", tmp_path / "remote", tmp_path / "first"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    sh(tmp_path, "git", "init", "-q", "-b", "main", str(work))
    sh(work, DVC, "init", "-q")
    (work / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (work / "weights.txt").write_text("first")
    sh(work, "git", "add", "-A")
    sh(work, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sh(work, "git", "push", "-q", str(origin), "HEAD:main")
    return origin, remote


def test_versions_stages_history_and_a_fetch_on_an_empty_machine(origin, tmp_path):
    origin, remote = origin
    a = clone(origin, tmp_path / "a", remote)
    first = registry.register(a, NAME, train_and_record(a, "weights one"))
    assert first.version == "v1.0.0"
    assert registry.register(a, NAME, first.commit) == first  # the same commit: no new version
    assert registry.assign(a, NAME, first, "prod")
    second = registry.register(a, NAME, train_and_record(a, "weights two"))
    assert second.version == "v2.0.0"
    assert registry.assign(a, NAME, second, "prod")
    # a later run that records the first model again (restored, not trained): the same version
    assert registry.register(a, NAME, train_and_record(a, "weights one")) == first

    b = clone(origin, tmp_path / "b", remote)  # another machine sees it all on origin
    registry.fetch_tags(b)
    holder, tag = registry.current(b, NAME, "prod")
    assert (holder, tag) == (second, f"{NAME}#prod#2")
    events = [(e["event"], e["version"], e["stage"]) for e in registry.history(b, NAME)]
    assert events == [
        ("registration", "v1.0.0", None),
        ("assignment", "v1.0.0", "prod"),
        ("registration", "v2.0.0", None),
        ("assignment", "v2.0.0", "prod"),
    ]

    # a machine with no checkout: the prod model from origin and the remote
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "remote.conf"  # what that machine knows: where the remote is
    config.write_text(f"[core]\n    remote = shared\n['remote \"shared\"']\n    url = {remote}\n")
    sh(empty, DVC, "artifacts", "get", str(origin), NAME, "--stage", "prod", "-o", "model",
       "--config", str(config))  # fmt: skip
    assert (empty / "model/model.safetensors").read_text() == "weights two"


def test_two_assignments_at_once_one_wins(origin, tmp_path):
    origin, remote = origin
    a = clone(origin, tmp_path / "a", remote)
    v1 = registry.register(a, NAME, train_and_record(a, "one"))
    v2 = registry.register(a, NAME, train_and_record(a, "two"))
    b, c = clone(origin, tmp_path / "b", remote), clone(origin, tmp_path / "c", remote)
    for ws in (b, c):
        registry.fetch_tags(ws)
    assert registry.assign(b, NAME, v1, "staging")
    assert not registry.assign(c, NAME, v2, "staging")  # it counted without b's assignment
    assert registry.current(c, NAME, "staging") == (v1, f"{NAME}#staging#1")
    assert registry.assign(c, NAME, v2, "staging")  # having seen it, c may assign after it
    registry.fetch_tags(a)
    assert registry.current(a, NAME, "staging")[0] == v2


def test_an_undeclared_name_is_refused(origin, tmp_path):
    origin, remote = origin
    a = clone(origin, tmp_path / "a", remote)
    with pytest.raises(PipelineError, match=r"not an artifact of dvc\.yaml"):
        registry.register(a, "tf-scratch-gru", sh(a, "git", "rev-parse", "HEAD").strip())


def test_dvc_yaml_declares_every_run_of_params_yaml():
    """dvc.yaml's artifacts are generated from params.yaml's models and the registry of backends
    and variants (`rnn artifacts --write`): they cannot drift from the matrix."""
    shown = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "artifacts", "--workdir", str(ROOT)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    generated = yaml.safe_load(shown.stdout)
    assert generated == yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    assert set(generated) == {
        f"{b}-{v}-rnn" for b in ("torch", "tf") for v in ("scratch", "concise")
    }


def test_promoted_tags_migrate_into_the_registry(origin, tmp_path):
    """`python -m stores.registry migrate`: each promoted/<run> tag becomes a version holding
    prod, on origin; a second migration changes nothing; `list` shows it."""
    origin, remote = origin
    a = clone(origin, tmp_path / "a", remote)
    commit = train_and_record(a, "promoted weights")
    sh(a, "git", "tag", f"promoted/{NAME}", commit)
    sh(a, "git", "push", "-q", "origin", f"refs/tags/promoted/{NAME}")
    b = clone(origin, tmp_path / "b", remote)
    cli = [sys.executable, "-m", "stores.registry"]
    migrated = sh(ROOT, *cli, "migrate", "-w", str(b))
    assert f"promoted/{NAME} is v1.0.0, now in prod" in migrated
    assert "prod already holds v1.0.0" in sh(ROOT, *cli, "migrate", "-w", str(b))
    c = clone(origin, tmp_path / "c", remote)
    assert sh(ROOT, *cli, "list", "-w", str(c)).split() == [NAME, "v1.0.0", "prod:", "v1.0.0"]
    # a person assigns staging; what the command line is given wrong is one line, status 2
    assert "v1.0.0 is now in staging" in sh(c, *cli, "assign", NAME, "v1.0.0", "staging")
    listed = sh(ROOT, *cli, "list", "-w", str(c)).split()
    assert listed == [NAME, "v1.0.0", "staging:", "v1.0.0,", "prod:", "v1.0.0"]
    for args, says in (
        (["assign", NAME, "v9.0.0", "prod"], "has no version v9.0.0"),
        (["assign", NAME, "v1.0.0", "qa"], "unknown stage 'qa'"),
        (["history", "tf-scratch-gru"], "is not an artifact of dvc.yaml"),
        (["list", "-w", str(tmp_path)], "is not a clone of the project"),
    ):
        done = subprocess.run([*cli, *args], cwd=c, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert says in done.stderr
