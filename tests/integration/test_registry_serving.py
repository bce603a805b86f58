"""Using the registry's model on a machine with no checkout: a project trained and recorded on a
bare origin with a DVC remote, its model registered and given `prod`; `rnn generate --from` in an
empty directory writes the prod model's text; `rnn serve --from` serves what prod holds and,
when a retrained version takes prod, swaps it in while a request streams (that request ends on
the version it began with)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rnn.export.bundle import MANIFEST, verified_bundle
from rnn.serving.runtime import OnnxModel
from stores import registry
from tests.support.machines import git, make_origin
from tests.support.serving import rnn_serve
from tests.support.workspace import ROOT, tiny_params

NAME = "torch-scratch-rnn"
DVC = str(Path(sys.executable).with_name("dvc"))
SAMPLED = {"temperature": 1.0, "seed": 3}
# `dvc repro` runs `python -m rnn.cli`: this environment's Python
PATH_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def sh(cwd: Path, *cmd: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=PATH_ENV)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"
    return done.stdout


def train_and_promote(work: Path, lr: float) -> registry.Version:
    """`dvc repro` at ``lr``, pushed, committed to origin, registered and given prod."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["lr"] = lr
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(work, DVC, "repro", "-q")
    sh(work, DVC, "push", "-q")
    git("add", "-A", cwd=work)
    git("commit", "-qm", f"lr {lr}", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    version = registry.register(work, NAME, git("rev-parse", "HEAD", cwd=work).strip())
    assert registry.assign(work, NAME, version, registry.PROD)
    return version


def local_export(work: Path, dest: Path) -> OnnxModel:
    """The ONNX bundle training left in the model directory, copied aside (and checked)."""
    shutil.copytree(verified_bundle(work / "data/models" / NAME).path, dest)
    return OnnxModel(dest)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("registry-serving")
    params = tiny_params()
    params["train"].update(backends=["torch"], variants=["scratch"])
    origin = make_origin(base, params)
    work, remote = base / "work", base / "remote"
    git("clone", "-q", str(origin), str(work), cwd=base)
    for key, value in (("user.name", "t"), ("user.email", "t@t")):
        git("config", key, value, cwd=work)
    sh(work, DVC, "remote", "add", "--local", "-d", "shared", str(remote))
    first = train_and_promote(work, 1.0)
    # the machines that use the model know the remote, nothing else of the project
    env = {**PATH_ENV, "RNN_DVC_REMOTE": str(remote), "PYTHONPATH": str(ROOT)}
    return {"base": base, "origin": origin, "work": work, "env": env, "first": first}


def test_generate_from_the_registry_in_an_empty_directory(project):
    evaluated = json.loads((project["work"] / f"data/eval/{NAME}/eval.json").read_text())
    expected = evaluated["samples"]["time traveller"]
    empty = project["base"] / "empty"
    empty.mkdir()
    generated = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "generate", "--from", str(project["origin"]),
         "--artifact", NAME, "--prefix", "time traveller",
         "--num-preds", str(len(expected) - len("time traveller"))],
        cwd=empty, env=project["env"], capture_output=True, text=True,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip("\n") == expected
    assert not any(empty.iterdir())
    unknown = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "generate", "--from", str(project["origin"]),
         "--artifact", "tf-scratch-rnn"],
        cwd=empty, env=project["env"], capture_output=True, text=True,
    )  # fmt: skip
    assert unknown.returncode != 0 and unknown.stderr.count("\n") == 1
    assert "no model 'tf-scratch-rnn' in stage 'prod'" in unknown.stderr
    # `rnn export --from`: the prod model's bundle, as training wrote it, byte for byte
    exported = subprocess.run(
        [sys.executable, "-m", "rnn.cli", "export", "--from", str(project["origin"]),
         "--artifact", NAME, "--out", "bundle"],
        cwd=empty, env=project["env"], capture_output=True, text=True,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    trained = verified_bundle(project["work"] / "data/models" / NAME).path
    assert sorted(p.name for p in (empty / "bundle").iterdir()) == sorted(
        p.name for p in trained.iterdir()
    )
    for name in (MANIFEST, "model.onnx", "vocab.json"):
        assert (empty / "bundle" / name).read_bytes() == (trained / name).read_bytes()


def test_serve_follows_prod_without_dropping_a_request(project, tmp_path):
    work, origin = project["work"], project["origin"]
    old_model = local_export(work, tmp_path / "v1")
    old_text = "".join(old_model.stream_text("the", 60_000, **SAMPLED))
    args = ["--from", str(origin), "--reload-every", "0.3", "--max-length", "100000"]
    with rnn_serve(args, tmp_path, tmp_path, project["env"], up_within=90) as url:
        listed = httpx.get(f"{url}/models").json()
        assert [(m["name"], m["stage"], m["version"]) for m in listed] == [
            (NAME, "prod", project["first"].version)
        ]
        body = {"model": NAME, "prefix": "the", "length": 60_000, **SAMPLED}
        with httpx.stream("POST", f"{url}/generate", json=body, timeout=120) as response:
            pieces = response.iter_text()
            first = next(pieces)
            second = train_and_promote(work, 0.5)  # a retrained version takes prod
            deadline = time.monotonic() + 120
            while httpx.get(f"{url}/models").json()[0]["version"] != second.version:
                assert time.monotonic() < deadline, [
                    p.read_text() for p in tmp_path.glob("serve-*")
                ]
                time.sleep(0.3)
            rest = "".join(pieces)
        assert response.headers["x-model-version"] == project["first"].version
        assert first + rest == old_text
        new_text = "".join(local_export(work, tmp_path / "v2").stream_text("the", 300, **SAMPLED))
        after = httpx.post(f"{url}/generate", json={**body, "length": 300}).text
        assert after == new_text != old_text[:300]
