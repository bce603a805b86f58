"""Promotions recorded where every machine sees them: a git tag ``promoted/<run>`` on the
experiment commit of the run that trained the model (its parameters, dvc.lock, evaluation and
metrics in git; its weights in the DVC remote by the hash dvc.lock names), pushed to origin.

From any clone: ``git fetch origin 'refs/tags/promoted/*:refs/tags/promoted/*'``, then
``git show promoted/tf-concise:data/eval/tf-concise/eval.json`` reads its perplexities and
``git checkout promoted/tf-concise && dvc pull train@tf-concise`` brings its weights
(``python -m stores.recorded promoted`` lists them). The tag moves with a compare-and-swap push
(``--force-with-lease``), so of two retraining runs promoting at once, one wins and the other
reports that it lost, instead of silently overwriting a promotion it never compared against.
"""

from __future__ import annotations

import json
from pathlib import Path

from stores import dvc_sync

TAGS = "refs/tags/promoted/"


def tag_ref(run: str) -> str:
    return f"{TAGS}{run}"


def fetch_promotions(root: Path) -> None:
    if dvc_sync.git_origin(root):
        dvc_sync.git(root, "fetch", "-q", "--force", "origin", f"+{TAGS}*:{TAGS}*", check=False)


def promoted_commit(root: Path, run: str) -> str | None:
    result = dvc_sync.git(
        root, "rev-parse", "-q", "--verify", f"{tag_ref(run)}^{{commit}}", check=False
    )
    return result.stdout.strip() or None


def promoted_eval(root: Path, run: str) -> dict | None:
    """The evaluation record of the promoted ``run`` (from git), or None if none is promoted."""
    commit = promoted_commit(root, run)
    if commit is None:
        return None
    shown = dvc_sync.git(root, "show", f"{commit}:data/eval/{run}/eval.json", check=False)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def experiment_commit(root: Path, name: str) -> str:
    refs = dvc_sync.git(root, "for-each-ref", "refs/exps", "--format=%(objectname) %(refname)")
    for line in refs.stdout.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.endswith(f"/{name}"):
            return sha
    raise LookupError(f"no experiment {name} in {root}")


def promote(root: Path, run: str, commit: str, expected: str | None) -> bool:
    """Point ``promoted/<run>`` at ``commit`` here and on origin, if origin's tag is still
    ``expected`` (None: absent). False when another run moved it first (the local tag then
    follows origin's)."""
    dvc_sync.git(root, "tag", "-f", f"promoted/{run}", commit)
    if not dvc_sync.git_origin(root):
        return True
    lease = f"--force-with-lease={tag_ref(run)}:{expected or ''}"
    pushed = dvc_sync.git(
        root, "push", "-q", lease, "origin", f"{commit}:{tag_ref(run)}", check=False
    )
    if pushed.returncode != 0:
        fetch_promotions(root)
        return False
    return True
