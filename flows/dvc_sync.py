"""Keep a flow run and `dvc repro` one pipeline: ask DVC which stages are stale before running,
and record what the flow produced in dvc.lock afterwards (`dvc commit`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def _dvc() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else [shutil.which("dvc") or "dvc"]


def in_dvc_repo(root: Path = Path()) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


def run_dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*_dvc(), *args], capture_output=True, text=True, check=check)


def stale_stages() -> set[str]:
    """Stages `dvc repro` would run (changed deps, params or outputs); all-up-to-date -> empty."""
    result = run_dvc("status", "--json")
    return set(json.loads(result.stdout or "{}"))


def commit(stages: list[str]) -> None:
    """Record the workspace's outputs of ``stages`` in dvc.lock, as `dvc repro` would have."""
    if stages:
        run_dvc("commit", "--force", *stages)


def has_remote() -> bool:
    return bool(run_dvc("remote", "list", check=False).stdout.strip())
