"""The `dvc` program of this environment: the library runs DVC as a command, never imports it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def dvc_command() -> list[str]:
    """This environment's `dvc` (beside its Python), else the one on PATH."""
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else [shutil.which("dvc") or "dvc"]
