"""The model registry: GTO's git tags, on origin where every machine sees them.

A model is an artifact declared in dvc.yaml's ``artifacts:`` (``rnn artifacts --write`` generates
them: one per backend x variant x model of params.yaml). A version is a tag ``<name>@v<N>`` on
the commit that recorded the run that trained it (its experiment commit: parameters, dvc.lock,
evaluation; the weights, with their ONNX export, in the DVC remote by the hash dvc.lock names).
Every recorded pipeline run registers the models it trained; a model is one version however many
runs restored it (the same hash in dvc.lock is the same version). A stage is assigned with a tag
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

from rnn.store import model_tags as tags
from stores import dvc_sync

STAGES = ("dev", "staging", "prod")
PROD = "prod"
LEGACY_TAGS = "refs/tags/promoted/"  # the promotions before the registry: promoted/<run>
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
        dvc_sync.git(root, "fetch", "-q", "--force", "--tags", "origin", check=False)


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
        Version(name, parsed[1], commit)
        for tag, commit in _tags(root, tags.version_pattern(name)).items()
        if (parsed := tags.parse_version(tag))
    ]
    return sorted(found, key=lambda v: _number(v.version))


def _number(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.lstrip("v").split("."))


def model_hash(root: Path, name: str, commit: str) -> str | None:
    """The hash dvc.lock at ``commit`` names for ``name``'s model directory, or None."""
    shown = dvc_sync.git(root, "show", f"{commit}:dvc.lock", check=False)
    if shown.returncode != 0:
        return None
    path = f"data/models/{name}"
    for stage in (yaml.safe_load(shown.stdout) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == path:
                return out.get("md5")
    return None


def register(root: Path, name: str, commit: str) -> Version:
    """The version of ``name`` whose model ``commit`` records: the existing one (registered at
    this commit, or at another whose dvc.lock names the same model), or the next major version,
    tagged and pushed to origin."""
    _check_declared(root, name)
    known = versions(root, name)
    same = [v for v in known if v.commit == commit]
    if not same:
        trained = model_hash(root, name, commit)
        same = [v for v in known if trained and model_hash(root, name, v.commit) == trained]
    if same:
        return same[0]
    import gto.api

    number = (_number(known[-1].version)[0] + 1) if known else 1
    version = f"v{number}.0.0"
    gto.api.register(str(root), name, commit, version=version, **AUTHOR)
    _push_tag(root, tags.version_tag(name, version))
    return Version(name, version, commit)


def current(root: Path, name: str, stage: str) -> tuple[Version, str] | None:
    """The version ``stage`` holds now and the tag of that assignment, or None."""
    assignments = sorted(
        (
            (tag, commit)
            for tag, commit in _tags(root, tags.assignment_pattern(name, stage)).items()
            if tags.parse_assignment(tag)
        ),
        key=lambda item: tags.parse_assignment(item[0]).number,  # type: ignore[union-attr]
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
    # GTO counts one model's assignments across its stages: the next number after the largest
    given = [tags.parse_assignment(t) for t in _tags(root, tags.assignment_pattern(name, "*"))]
    number = max((a.number for a in given if a), default=0) + 1
    tag = tags.assignment_tag(name, stage, number)
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

    events = gto.api.history(str(root), name)
    # tags carry whole seconds: within one, a version's registration before its assignments
    return sorted(
        events, key=lambda e: (e["timestamp"], _number(e["version"]), e["event"] != "registration")
    )


def experiment_commit(root: Path, name: str) -> str:
    """The commit of the recorded run (DVC experiment) ``name``."""
    refs = dvc_sync.git(root, "for-each-ref", "refs/exps", "--format=%(objectname) %(refname)")
    for line in refs.stdout.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.endswith(f"/{name}"):
            return sha
    raise LookupError(f"no experiment {name} in {root}")


def models(root: Path) -> list[dict]:
    """Every declared model with its versions and what each stage holds now."""
    rows = []
    for name in sorted(declared(root)):
        known = versions(root, name)
        if not known:
            continue
        held = {stage: current(root, name, stage) for stage in STAGES}
        rows.append({
            "model": name,
            "versions": [v.version for v in known],
            **{stage: h[0].version if h else None for stage, h in held.items()},
        })  # fmt: skip
    return rows


def migrate_promotions(root: Path) -> list[str]:
    """Each ``promoted/<run>`` tag (the promotions before the registry) as a registered version
    holding ``prod``, unless prod already holds that commit; the old tags are left as they were.
    Returns one line per model."""
    if dvc_sync.git_origin(root):
        dvc_sync.git(root, "fetch", "-q", "--force", "origin",
                     f"+{LEGACY_TAGS}*:{LEGACY_TAGS}*", check=False)  # fmt: skip
    fetch_tags(root)
    lines = []
    for tag, commit in sorted(_tags(root, "promoted/*").items()):
        name = tag.removeprefix("promoted/")
        version = register(root, name, commit)
        held = current(root, name, PROD)
        if held and held[0] == version:
            lines.append(f"{name}: prod already holds {version.version}")
        elif assign(root, name, version, PROD):
            lines.append(f"{name}: {tag} is {version.version}, now in prod")
        else:
            lines.append(f"{name}: another run assigned prod meanwhile; run this again")
    return lines


def _clone(workdir: Path) -> Path:
    """``workdir`` once it is a clone of the project (git, and dvc.yaml's artifacts)."""
    from rnn.errors import PipelineError

    root = workdir.resolve()
    if not (root / "dvc.yaml").is_file() or not (root / ".git").exists():
        raise PipelineError(
            f"{root} is not a clone of the project (no dvc.yaml or no .git)",
            "run it in a clone of the project, or pass --workdir",
        )
    return root


def _cli():
    import typer

    from rnn.errors import PipelineError
    from stores.cli import run

    app = typer.Typer(help="The model registry (GTO tags on origin).", no_args_is_help=True,
                      pretty_exceptions_enable=False, add_completion=False)  # fmt: skip
    workdir_opt = typer.Option(Path("."), "--workdir", "-w", help="a clone of the project")

    @app.command("list")
    def list_command(workdir: Path = workdir_opt) -> None:
        """Every registered model: its versions and the version each stage holds."""
        root = _clone(workdir)
        fetch_tags(root)
        for row in models(root):
            stages = ", ".join(f"{s}: {row[s]}" for s in STAGES if row[s])
            typer.echo(f"{row['model']}  {' '.join(row['versions'])}  {stages or 'no stage'}")

    @app.command("history")
    def history_command(name: str, workdir: Path = workdir_opt) -> None:
        """Registrations and assignments of one model, oldest first."""
        root = _clone(workdir)
        _check_declared(root, name)
        fetch_tags(root)
        for e in history(root, name):
            stage = f" {e['stage']}" if e.get("stage") else ""
            typer.echo(f"{e['timestamp']}  {e['event']}  {e['version']}{stage}")

    @app.command("assign")
    def assign_command(name: str, version: str, stage: str, workdir: Path = workdir_opt) -> None:
        """Assign STAGE (dev, staging, prod) to VERSION (v2.0.0) of a model, on origin."""
        root = _clone(workdir)
        _check_declared(root, name)
        fetch_tags(root)
        chosen = next((v for v in versions(root, name) if v.version == version), None)
        if chosen is None:
            raise PipelineError(f"{name} has no version {version}", "see `list` for its versions")
        if stage not in STAGES:
            raise PipelineError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        if not assign(root, name, chosen, stage):
            raise PipelineError(f"another run assigned {stage} meanwhile", "run this again")
        typer.echo(f"{name} {version} is now in {stage}")

    @app.command("migrate")
    def migrate_command(workdir: Path = workdir_opt) -> None:
        """Turn the promoted/<run> tags into registered versions holding prod, on origin."""
        for line in migrate_promotions(_clone(workdir)):
            typer.echo(line)

    from gto.exceptions import GTOException
    from scmrepo.exceptions import SCMError

    return lambda: run(app, (GTOException, SCMError))


if __name__ == "__main__":
    _cli()()
