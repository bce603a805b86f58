"""Simulated machines for the distributed tests: each is its own directory (home, git clone,
Prefect home and result storage, DVC caches) and its own process tree, and shares with the others
only what real machines share: the bare git origin, the DVC remote and the Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.workspace import copy_project, spawn_logged, tail

BIN = Path(sys.executable).parent
RESULT = "RESULT "
FLOW_CHILD = f"""
import json, sys
from flows.pipeline import pipeline
kwargs = json.loads(sys.argv[1])
print({RESULT!r} + json.dumps(pipeline(**kwargs)), flush=True)
"""


def make_origin(base: Path, params: dict) -> Path:
    """A bare repository holding the project with ``params`` as params.yaml, branch main."""
    work = copy_project(base / "origin-work", params)
    origin = base / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=base)
    git("push", "-q", str(origin), "HEAD:main", cwd=work)
    return origin


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


@dataclass
class Machine:
    base: Path
    origin: Path
    api_url: str
    remote_env: dict[str, str]
    started: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = self.base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.base / "logs"
        self.logs.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        """Nothing of this process's Prefect, DVC or git settings: a machine of its own."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
        keep.pop("PYTHONPATH", None)
        return {
            **keep,
            "HOME": str(self.home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "prefect-storage"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "DO_NOT_TRACK": "1",
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(self.home / "dvc-site-cache"),
            "DVC_GLOBAL_CONFIG_DIR": str(self.home / "dvc-config"),
            **self.remote_env,
        }

    def clone(self, name: str = "work") -> Path:
        dest = self.base / name
        git("clone", "-q", "-b", "main", str(self.origin), str(dest), cwd=self.base, env=self.env())
        return dest

    def run(self, *cmd: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            cmd, cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        return result

    def start_flow(self, cwd: Path, log_name: str, **kwargs) -> subprocess.Popen:
        """The pipeline flow in its own process group, as a worker would run it in ``cwd``."""
        proc = spawn_logged(
            [sys.executable, "-c", FLOW_CHILD, json.dumps(kwargs)],
            cwd,
            self.env(),
            self.logs / f"{log_name}.log",
        )
        self.started.append(proc)
        return proc

    def finish_flow(self, proc: subprocess.Popen, log_name: str, timeout: float = 600) -> dict:
        proc.wait(timeout)
        log = tail(self.logs / f"{log_name}.log", 6000)
        assert proc.returncode == 0, log
        line = next(x for x in log.splitlines()[::-1] if x.startswith(RESULT))
        return json.loads(line[len(RESULT) :])

    def flow(self, cwd: Path, log_name: str, **kwargs) -> dict:
        return self.finish_flow(self.start_flow(cwd, log_name, **kwargs), log_name)


def model_hashes(checkout: Path) -> dict[str, str]:
    """dvc.lock's hashes of the data and model outputs (metrics hold timings, so differ)."""
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    return {
        o["path"]: o["md5"]
        for s in lock["stages"].values()
        for o in s.get("outs", [])
        if o["path"].startswith("data/") and not o["path"].startswith("data/metrics")
    }
