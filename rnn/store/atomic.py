"""Write-then-rename helpers: a failed stage leaves no partial output and keeps the last good one."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rnn.faults import kill_point


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be readable like any file
    try:
        yield tmp
        kill_point(f"write:{final.name}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` as a whole if the block succeeds.

    The old directory is moved aside first and deleted only after the new one is in place,
    so a crash between the two renames still leaves one complete copy on disk.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():  # a crash between the two renames: put it back
        os.replace(old, final)
    _sweep(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        kill_point(f"write:{final.name}")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        kill_point(f"swap:{final.name}")
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def _sweep(final: Path) -> None:
    """Remove temporaries a killed writer of ``final`` left behind (its pid is gone); a live
    writer's are left alone."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        _remove_if_orphaned(stale)


def sweep_temporaries(directory: Path) -> None:
    """Every orphaned temporary under ``directory`` (a killed run's half-written outputs)."""
    if directory.is_dir():
        for stale in list(directory.rglob(".*.tmp")):
            _remove_if_orphaned(stale)


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _remove_if_orphaned(path: Path) -> None:
    match = _TEMP_NAME.match(path.name)
    if not match or _alive(int(match.group(1))):
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
