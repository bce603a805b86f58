"""The DVC internals the flows rely on where DVC has no public API or command for the job, each
checked by name and signature so that a DVC or dvc-data release that moves one fails here,
loudly, not in a pool run. The lock (constraints/*.lock) pins both packages exactly; a refresh
that moves one of these fails this test before anything ships.

- ``Repo.stage_cache.pull`` / ``.restore`` (stores/dvc_sync.py): restore one stage from the
  run-cache. `dvc repro --pull` restores, but runs every stale stage with it; `dvc pull
  --run-cache` fetches every output, not one stage's.
- ``dvc_data.hashfile.transfer.transfer`` with ``Repo.cloud.get_remote_odb`` and
  ``Tree.load``: push the `cache: false` outputs the run-cache needs, which `dvc push` skips.
- ``Repo.cloud.get_remote`` (stores/checkpoints.py): the remote's filesystem, for checkpoints.
- ``dvc.repo.experiments.utils.resolve_name`` (stores/recorded.py).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.workspace import ROOT


def locked(name: str) -> str:
    for line in (ROOT / "constraints/cpu.lock").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1].split()[0].rstrip(" \\")
    raise AssertionError(f"{name} is not pinned in constraints/cpu.lock")


@pytest.mark.parametrize("package", ["dvc", "dvc-data", "dvc-objects"])
def test_the_dvc_packages_installed_are_the_locked_ones(package):
    assert version(package) == locked(package)


def params_of(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_run_cache_internals_are_where_the_flows_call_them():
    from dvc.stage.cache import RunCacheNotFoundError, StageCache

    assert issubclass(RunCacheNotFoundError, Exception)
    assert params_of(StageCache.pull)[:2] == ["self", "remote"]
    assert params_of(StageCache.restore)[:2] == ["self", "stage"]
    assert "pull" in params_of(StageCache.restore)


def test_the_transfer_internals_are_where_the_flows_call_them(tmp_path: Path):
    from dvc.repo import Repo
    from dvc_data.hashfile.transfer import transfer
    from dvc_data.hashfile.tree import Tree

    assert params_of(transfer)[:3] == ["src", "dest", "obj_ids"]
    assert callable(Tree.load)
    repo = Repo.init(str(tmp_path), no_scm=True)
    try:
        assert hasattr(repo.cache, "local") and hasattr(repo, "stage_cache")
        assert params_of(repo.cloud.get_remote_odb)[:2] == ["name", "command"]
        assert params_of(repo.cloud.get_remote)[:2] == ["name", "command"]
        assert hasattr(repo.index, "stages") and hasattr(repo.stage, "collect")
    finally:
        repo.close()


def test_the_experiment_name_resolver_is_where_the_flows_call_it():
    from dvc.repo.experiments.utils import resolve_name

    assert params_of(resolve_name)[:2] == ["scm", "exp_names"]
