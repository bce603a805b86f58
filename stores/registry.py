"""The model registry: GTO's git tags, on origin where every machine sees them.

A model is an artifact declared in dvc.yaml's ``artifacts:`` (``rnn artifacts --write`` generates
them: one per backend x variant x model of params.yaml). A version is a tag ``<name>@v<N>`` on
the commit that recorded the run (its experiment commit: parameters, dvc.lock, evaluation; the
weights in the DVC remote by the hash dvc.lock names). A stage is assigned with a tag
``<name>#<stage>#<n>``, a new one for every assignment, so the whole history stays
(``gto history``) and the current holder of a stage is the newest assignment's version.

Assigning is a compare-and-swap: the next assignment's number is taken from origin's tags, and
git refuses to push a tag that exists, so of two runs assigning a stage at once one wins and the
other learns that it lost (``assign`` returns False) instead of overriding a choice it never
compared against. ``dvc artifacts get ORIGIN NAME --stage prod`` fetches the model on a machine
with no checkout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from stores import dvc_sync

STAGES = ("dev", "staging", "prod")
AUTHOR = {"author": "rnn-pipeline", "author_email": "rnn-pipeline@localhost"}


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    commit: str


def declared(root: Path) -> set[str]:
    """The artifact names dvc.yaml declares."""
    data = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    return set(data.get("artifacts") or {})


def fetch_tags(root: Path) -> None:
    """Origin's registry tags here (a tag moved or removed on origin follows)."""
    if dvc_sync.git_origin(root):
        dvc_sync.git(root, "fetch", "-q", "--force", "--tags", "--prune-tags", "origin",
                     check=False)  # fmt: skip


def _tags(root: Path, pattern: str) -> dict[str, str]:
    """Tags matching ``pattern`` -> the commit each points at."""
    out = dvc_sync.git(
        root,
        "for-each-ref",
        f"refs/tags/{pattern}",
        "--format=%(refname:strip=2) %(*objectname) %(objectname)",
    ).stdout
    found = {}
    for line in out.splitlines():
        tag, *shas = line.split()
        found[tag] = shas[0] if len(shas) == 2 else shas[-1]  # annotated: the peeled commit
    return found


def versions(root: Path, name: str) -> list[Version]:
    """Every registered version of ``name``, oldest first."""
    found = [
        Version(name, tag.split("@", 1)[1], commit)
        for tag, commit in _tags(root, f"{name}@v*").items()
    ]
    return sorted(found, key=lambda v: _number(v.version))


def _number(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.lstrip("v").split("."))


def register(root: Path, name: str, commit: str) -> Version:
    """The version of ``name`` recorded at ``commit``: the existing one, or the next major
    version, tagged and pushed to origin."""
    _check_declared(root, name)
    existing = [v for v in versions(root, name) if v.commit == commit]
    if existing:
        return existing[0]
    import gto.api

    known = versions(root, name)
    number = (_number(known[-1].version)[0] + 1) if known else 1
    version = f"v{number}.0.0"
    gto.api.register(str(root), name, commit, version=version, **AUTHOR)
    _push_tag(root, f"{name}@{version}")
    return Version(name, version, commit)


def current(root: Path, name: str, stage: str) -> tuple[Version, str] | None:
    """The version ``stage`` holds now and the tag of that assignment, or None."""
    assignments = sorted(
        _tags(root, f"{name}#{stage}#*").items(), key=lambda item: int(item[0].rsplit("#", 1)[1])
    )
    if not assignments:
        return None
    tag, commit = assignments[-1]
    holder = next((v for v in versions(root, name) if v.commit == commit), None)
    return (holder, tag) if holder else None


def assign(root: Path, name: str, version: Version, stage: str) -> bool:
    """Assign ``stage`` to ``version``: a new assignment tag pushed to origin. False when another
    run assigned the stage first (the tags here then follow origin's)."""
    import gto.api

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    number = len(_tags(root, f"{name}#{stage}#*")) + 1
    tag = f"{name}#{stage}#{number}"
    gto.api.assign(str(root), name, stage, version=version.version, **AUTHOR)
    if not _tags(root, tag):  # GTO numbered it otherwise: keep to the count origin has
        raise RuntimeError(f"GTO did not create {tag}")
    if not _push_tag(root, tag):
        dvc_sync.git(root, "tag", "-d", tag, check=False)
        fetch_tags(root)
        return False
    return True


def _push_tag(root: Path, tag: str) -> bool:
    if not dvc_sync.git_origin(root):
        return True
    pushed = dvc_sync.git(root, "push", "-q", "origin", f"refs/tags/{tag}", check=False)
    return pushed.returncode == 0


def _check_declared(root: Path, name: str) -> None:
    from rnn.errors import PipelineError

    if name not in declared(root):
        raise PipelineError(
            f"{name} is not an artifact of dvc.yaml",
            "declare it (`rnn artifacts --write` after adding its model to params.yaml)",
        )


def eval_at(root: Path, version: Version) -> dict | None:
    """The evaluation record of the run at ``version``'s commit (from git), or None."""
    shown = dvc_sync.git(
        root, "show", f"{version.commit}:data/eval/{version.name}/eval.json", check=False
    )
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def history(root: Path, name: str) -> list[dict]:
    """Registrations and assignments of ``name``, oldest first (GTO's history)."""
    import gto.api

    return list(reversed(gto.api.history(str(root), name)))
