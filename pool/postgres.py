"""A private PostgreSQL 15 cluster for the Prefect server, on 127.0.0.1 only.

`initdb` refuses to run as root, so as root the cluster belongs to an unprivileged account
(``postgres``, else ``nobody``) and lives in a directory of its own under /tmp that the account
can reach (pytest's and many homes' parents are mode 700). The password is random, kept in the
stack's private state file (mode 600) and passed to the server in its environment only.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE, USER = "prefect", "prefect"
SWEEPS_DATABASE = "sweeps"  # the sweeps' Optuna studies (flows/sweep.py), beside Prefect's


class StackError(RuntimeError):
    """One line naming what went wrong and what to do."""


@dataclass
class Cluster:
    data_dir: Path
    port: int
    password: str
    os_user: str | None  # None: the current (unprivileged) user

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def sweeps_url(self) -> str:
        """Optuna's RDB storage (synchronous SQLAlchemy, hence psycopg)."""
        return (
            f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{SWEEPS_DATABASE}"
        )

    def create_database(self, name: str, timeout_s: float = 30) -> None:
        """``createdb name`` unless it exists (retried while the server is starting)."""
        env = {**os.environ, "PGPASSWORD": self.password}
        deadline = time.monotonic() + timeout_s
        while True:
            made = subprocess.run(
                ["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
                capture_output=True,
                text=True,
                env=env,
            )
            if made.returncode == 0 or "already exists" in made.stderr:
                return
            if time.monotonic() > deadline:
                raise StackError(f"createdb {name} failed: {made.stderr.strip()[-300:]}")
            time.sleep(0.5)

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *cmd] if self.os_user else list(cmd)

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self._as_owner(*cmd), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise StackError(f"{cmd[0]} failed: {(result.stderr or result.stdout).strip()[-400:]}")
        return result

    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").is_file():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        log = self.data_dir / "server.log"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(log),
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories='{self.data_dir}'",
        )

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def unprivileged_owner() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise StackError(
        "running as root and no unprivileged account (postgres, nobody) exists; "
        "create one, or run the stack as an ordinary user"
    )


def create(port: int) -> Cluster:
    """initdb a new cluster with a random password, start it, create the database."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            raise StackError(
                f"{tool} not found on PATH; install PostgreSQL >= 14 "
                "(or use --db sqlite for a one-machine stack)"
            )
    owner = unprivileged_owner()
    data_dir = Path(tempfile.mkdtemp(prefix="rnn-pool-pg-"))
    cluster = Cluster(data_dir, port, secrets.token_urlsafe(24), owner)
    pwfile = data_dir / "pw"
    pwfile.write_text(cluster.password)
    if owner:
        info = pwd.getpwnam(owner)
        os.chown(data_dir, info.pw_uid, info.pw_gid)
        os.chown(pwfile, info.pw_uid, info.pw_gid)
    pwfile.chmod(0o600)
    cluster._run(
        "initdb",
        "-D",
        str(data_dir / "db"),
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "-E",
        "UTF8",
    )
    pwfile.unlink()
    cluster.data_dir = data_dir / "db"
    cluster.start()
    env = {**os.environ, "PGPASSWORD": cluster.password}
    cluster.create_database(DATABASE)
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            USER,
            "-d",
            DATABASE,
            "-qc",
            "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        ],
        capture_output=True,
        text=True,
        env=env,
    )  # Prefect's migrations create it too; here only to fail early where contrib is missing
    return cluster
