"""Keep a flow run and `dvc repro` one pipeline, and make the DVC remote and git the only stores
runs share: ask DVC which stages are stale, restore a stage that any workspace already computed
from the run-cache instead of recomputing it, record what the flow produced in dvc.lock (`dvc
commit`), push outputs and run-cache, and record the run as a DVC experiment in git.

Every function takes the workspace root; none relies on the process's current directory. DVC
runs in this process where its API allows (each `dvc` command would start a Python of its own,
about a second of imports); `dvc exp save` and `exp push` stay commands because DVC's experiment
executor changes the process's working directory.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnn.errors import PipelineError
from rnn.names import DVC_REMOTE_ENDPOINT_ENV, DVC_REMOTE_ENV
from rnn.store.dvc_cli import dvc_command

logger = logging.getLogger(__name__)
SHARED_REMOTE = "shared"
REMOTE_ENV, ENDPOINT_ENV = DVC_REMOTE_ENV, DVC_REMOTE_ENDPOINT_ENV
# What `dvc exp save` must carry beyond dvc.lock: the outputs DVC leaves to git (cache: false).
EXPERIMENT_FILES = (
    "dvc.lock",
    "params.yaml",
    "data/.gitignore",
    "data/models/.gitignore",
    "data/metrics",
    "data/eval",
    "reports",
)


def in_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


def run_dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*dvc_command(), *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise DvcError(f"dvc {' '.join(args[:2])} failed in {root}: {result.stderr.strip()[-500:]}")
    return result


class DvcError(RuntimeError):
    """A DVC command failed; the message carries its error output."""


@contextmanager
def dvc_repo(root: Path, doing: str) -> Iterator:
    """DVC's repository at ``root``, its errors raised as one DvcError naming what failed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            yield repo
    except DvcException as err:
        raise DvcError(f"dvc {doing} failed in {root}: {err}") from err


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def tracked_inputs(root: Path) -> list[str]:
    """The `.dvc` files (`rnn corpus add`) that track the text ``ingest.source`` names in the
    workspace's params.yaml: the file itself, a directory holding it, or files inside it."""
    import yaml

    params = (
        yaml.safe_load((root / "params.yaml").read_text())
        if (root / "params.yaml").is_file()
        else {}
    )
    source = str(((params or {}).get("ingest") or {}).get("source") or "")
    if not source or source.startswith(("http://", "https://")):
        return []
    wanted = (root / source).resolve()
    listed = git(root, "ls-files", "--", "*.dvc", check=False).stdout.split()
    return [
        name
        for name in listed
        if any(
            out == wanted or out in wanted.parents or wanted in out.parents
            for out in _outputs(root, name)
        )
    ]


def _outputs(root: Path, tracker: str) -> list[Path]:
    import yaml

    if not (root / tracker).is_file():
        return []
    record = yaml.safe_load((root / tracker).read_text()) or {}
    base = (root / tracker).parent
    return [(base / out["path"]).resolve() for out in record.get("outs", [])]


def sync_inputs(root: Path) -> list[str]:
    """Bring the tracked source text into the workspace as `dvc repro` needs it: pull it when
    missing (a pool machine's fresh clone has only the `.dvc` file, and may have no network: the
    DVC remote is where every machine reads the same bytes), and record it when edited, as
    `dvc repro` does for a changed data source. Returns the `.dvc` files."""
    targets = tracked_inputs(root)
    missing = [t for t in targets if not all(p.exists() for p in _outputs(root, t))]
    if missing:
        result = run_dvc(root, "pull", "-q", *missing, check=False)
        if result.returncode != 0 or not all(
            p.exists() for t in missing for p in _outputs(root, t)
        ):
            reason = (result.stderr.strip().splitlines() or ["not there"])[-1]
            raise PipelineError(
                f"source text {', '.join(missing)} could not be pulled from the DVC remote "
                f"({reason})",
                "`dvc push` it from the machine where it was added (`rnn corpus add` pushes it)",
            )
    present = [t for t in targets if t not in missing]
    if present:
        with dvc_repo(root, "commit") as repo:
            for tracker in present:
                repo.commit(tracker, force=True)
    return targets


def stale_stages(root: Path) -> set[str]:
    """Stages `dvc repro` would run (changed deps, params or outputs); all-up-to-date -> empty."""
    with dvc_repo(root, "status") as repo:
        return set(repo.status())


def commit(root: Path, stages: list[str]) -> None:
    """Record the workspace's outputs of ``stages`` in dvc.lock (and the run-cache), as `dvc
    repro` would have."""
    if stages:
        with dvc_repo(root, "commit") as repo:
            for stage in stages:
                repo.commit(stage, force=True)


def has_remote(root: Path) -> bool:
    from dvc.config import Config

    return bool(Config(str(root / ".dvc")).get("remote"))


def use_shared_remote(root: Path, url: str, endpoint: str | None = None) -> None:
    """Point this workspace (only: `--local` config, not in git) at the shared remote ``url``.
    Credentials stay in the environment (AWS_* for S3), never in any config file. (DVC's config
    API in this process: each `dvc remote` command would start a Python of its own.)"""
    from dvc.config import Config

    remote = {"url": url, **({"endpointurl": endpoint} if endpoint else {})}
    with Config(str(root / ".dvc")).edit("local") as conf:
        conf["remote"][SHARED_REMOTE] = remote
        conf["core"]["remote"] = SHARED_REMOTE


def connect_remote(root: Path) -> bool:
    """Point the workspace at the pool's shared DVC remote when the machine names one
    (RNN_DVC_REMOTE, optionally RNN_DVC_REMOTE_ENDPOINT for S3-compatible servers); without it,
    the repository's own default remote. True when the workspace has a remote."""
    url = os.environ.get(REMOTE_ENV)
    if url:
        use_shared_remote(root, url, os.environ.get(ENDPOINT_ENV))
    return has_remote(root)


def fetch_run_cache(root: Path) -> bool:
    """Bring the remote's run-cache entries (small records of stage runs, not their outputs)."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo, repo.lock:
            repo.stage_cache.pull(None)
        return True
    except Exception as err:  # an unreachable remote: the run goes on, computing what it needs
        logger.warning("could not fetch the run-cache: %s", err)
        return False


def restore(root: Path, stage: str) -> bool:
    """Check out ``stage``'s outputs from the run-cache (pulling them from the remote) if any
    workspace ran it with these very dependencies and parameters; False when none did."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    try:
        with Repo(str(root)) as repo, repo.lock:
            (target,) = repo.stage.collect(stage)
            repo.stage_cache.restore(target, pull=has_remote(root))
        return True
    except RunCacheNotFoundError:
        return False
    except Exception as err:  # a missing object, an unreachable remote: compute it instead
        logger.warning("could not restore %s from the run-cache: %s", stage, err)
        return False


PUSH_ATTEMPTS, PUSH_BACKOFF_S = 3, 2.0


def push(root: Path, stages: list[str]) -> str:
    """Push ``stages``' outputs and the run-cache to the default remote, retrying a failing
    remote (a dropped connection, a server restarting) with backoff; what was pushed before a
    failure stays pushed (objects are content-addressed), so a retry sends only the rest. When
    every attempt fails the outputs are still in the workspace and in dvc.lock, so a rerun
    pushes without recomputing anything."""
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        try:
            return _push(root, stages)
        except Exception as err:  # DVC, fsspec and botocore each raise their own
            if attempt == PUSH_ATTEMPTS:
                raise DvcError(
                    f"dvc push to the remote failed {PUSH_ATTEMPTS} times ({err}); the results "
                    f"are kept in {root} and dvc.lock: rerun once the remote is reachable, "
                    "nothing is recomputed"
                ) from err
            logger.warning("dvc push failed (attempt %d of %d): %s", attempt, PUSH_ATTEMPTS, err)
            time.sleep(PUSH_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _push(root: Path, stages: list[str]) -> str:
    """Push ``stages``' outputs and the run-cache to the default remote, including the
    outputs left to git (`cache: false`: metrics, evaluations, the report), which `dvc push
    --run-cache` skips although the run-cache needs them to restore a stage elsewhere."""
    from dvc_data.hashfile.transfer import transfer

    with dvc_repo(root, "push") as repo:
        pushed = repo.push([*tracked_inputs(root), *stages], run_cache=True)
        with repo.lock:
            uncached = set()
            for stage in repo.index.stages:
                if stage.addressing not in stages:
                    continue
                for out in stage.outs:
                    if not out.use_cache and out.hash_info and out.hash_info.value:
                        uncached |= _objects(repo, out.hash_info)
            # not DataCloud.push: its remote index counts a directory as pushed once its
            # listing is
            transfer(repo.cache.local, repo.cloud.get_remote_odb(None, "push"), uncached)
    return f"{pushed} file(s) pushed" if pushed else "everything is up to date"


def _objects(repo, hash_info) -> set:
    """An object and, for a directory, every file object it lists."""
    if not hash_info.isdir:
        return {hash_info}
    from dvc_data.hashfile.tree import Tree

    tree = Tree.load(repo.cache.local, hash_info)
    return {hash_info} | {child for _, _, child in tree if child is not None}


def git_origin(root: Path) -> str | None:
    result = git(root, "remote", "get-url", "origin", check=False)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def record_experiment(root: Path, name: str, stages: list[str]) -> bool:
    """Save the workspace as DVC experiment ``name`` (params, dvc.lock, metrics, report; the
    outputs of ``stages``, this run's) and push it to git ``origin`` (outputs go to the DVC
    remote), where every machine can list it. False when there is no origin to push to."""
    if not git(root, "config", "user.email", check=False).stdout.strip():
        git(root, "config", "user.email", "rnn-pipeline@localhost")
        git(root, "config", "user.name", "rnn-pipeline")
    include = [arg for f in EXPERIMENT_FILES if (root / f).exists() for arg in ("-I", f)]
    run_dvc(root, "exp", "save", "--force", "--name", name, *include, *stages)
    if not git_origin(root):
        return False
    run_dvc(root, "exp", "push", "--force", "origin", name)
    return True
