"""The locks: every package `setup.sh` installs, transitive ones included, at one version with its
hashes, compiled by uv from `pyproject.toml` and the pins in `constraints/*.txt`.

    ./setup.sh --lock                               # refresh both locks, then install (runs this)
    .venv/bin/python constraints/lock.py            # refresh both locks (keeps every pin it can)
    .venv/bin/python constraints/lock.py --upgrade  # ... moving each package to its newest allowed
    .venv/bin/python constraints/lock.py --check    # exit 1 when a lock is stale (offline, no uv)

`cpu.lock` is `.[all-cpu]` with `cpu.txt`'s pins (torch 2.13.0+cpu, tensorflow-cpu, the S3 stack);
`gpu.lock` is `.[torch,tf,orchestrate,serve,dev,docs]` with `gpu.txt`'s pins (the CUDA builds PyPI serves)
and every other package at `cpu.lock`'s version. Both are for CPython 3.11 on x86_64 Linux.

Each lock's first line records a SHA-256 of what it was compiled from: `pyproject.toml`'s
dependency tables, the pins file, the target (and, for `gpu.lock`, `cpu.lock`'s pins). `--check`
recomputes it, and also checks that the lock's versions satisfy `pyproject.toml`'s requirements and
the pins (with `packaging`, where installed), so an edit to either without a refresh fails CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "rnn-pipeline"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
REFRESH = "./setup.sh --lock"
DIGEST = "# inputs-sha256: "
# Where the CPU build of torch comes from: a local wheel directory when there is one, else
# PyTorch's CPU index (plain PyPI only has the CUDA build for Linux).
WHEELS = os.environ.get("RNN_WHEELS", "/opt/wheels")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...]
    pins: str  # the pins file, relative to the root

    @property
    def path(self) -> str:
        return f"constraints/{self.name}.lock"


CPU = Lock("cpu", ("all-cpu",), "constraints/cpu.txt")
GPU = Lock("gpu", ("torch", "tf", "orchestrate", "serve", "dev", "docs"), "constraints/gpu.txt")
LOCKS = {lock.name: lock for lock in (CPU, GPU)}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(text: str) -> list[str]:
    """A requirements file's requirements, comments, hashes and blank lines dropped."""
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].split(" --hash", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def pins(text: str) -> dict[str, str]:
    """`name==version` lines of a requirements file or lock as {normalized name: version}."""
    found = {}
    for line in requirement_lines(text):
        name, sep, version = line.partition("==")
        if sep:
            found[normalize(name.split("[")[0])] = version.split(";")[0].strip()
    return found


def digest(lock: Lock, root: Path = ROOT) -> str:
    """SHA-256 of everything a lock is compiled from."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project = pyproject["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": pyproject.get("build-system", {}).get("requires", []),
        "extras": lock.extras,
        "pins": requirement_lines((root / lock.pins).read_text()),
        "target": [PYTHON_VERSION, PLATFORM],
    }
    if lock is not CPU:
        inputs["cpu.lock"] = sorted(pins((root / CPU.path).read_text()).items())
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def requirements(lock: Lock, root: Path = ROOT) -> list[str]:
    """pyproject.toml's requirements for a lock's extras, self-references expanded."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    found, todo, seen = list(project.get("dependencies", [])), list(lock.extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            match = re.fullmatch(rf"\s*{PROJECT}\s*\[([^\]]*)\]\s*", requirement)
            if match:
                todo += [e.strip() for e in match.group(1).split(",")]
            else:
                found.append(requirement)
    return found


def check(lock: Lock, root: Path = ROOT) -> list[str]:
    """What is wrong with a lock, as lines for a person (empty: it is fresh)."""
    path = root / lock.path
    if not path.exists():
        return [f"{lock.path} is missing: run {REFRESH}"]
    text = path.read_text()
    first = text.splitlines()[0] if text else ""
    if first != DIGEST + digest(lock, root):
        inputs = f"pyproject.toml's dependencies, {lock.pins}"
        inputs += "" if lock is CPU else f" or {CPU.path}"
        return [
            f"{lock.path} is stale: {inputs} changed since it was compiled; "
            f"run {REFRESH} and commit the locks"
        ]
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a fresh venv before its first install: the digest has to do
        return []
    locked, problems = pins(text), []
    wanted = requirements(lock, root) + requirement_lines((root / lock.pins).read_text())
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = locked.get(normalize(requirement.name))
        if version is None:
            problems.append(f"{lock.path} lacks {requirement.name} ({line})")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{lock.path} has {requirement.name}=={version}, against {line}")
    return problems


def requirement_block(lock: Lock, name: str, root: Path = ROOT) -> str:
    """One package's entry of a lock, with its hashes: what pip installs uv from."""
    entry = []
    for line in (root / lock.path).read_text().splitlines():
        if entry and not line.startswith(" "):
            break
        starts = "==" in line and normalize(line.split("==")[0]) == normalize(name)
        if (entry or starts) and not line.lstrip().startswith("#"):
            entry.append(line)
    if not entry:
        raise SystemExit(f"{lock.path} has no {name}")
    return "\n".join(entry).rstrip(" \\") + "\n"


def compile_lock(lock: Lock, upgrade: bool) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise SystemExit(f"no uv: run ./setup.sh first (it installs uv from {CPU.path})")
    command = [
        uv, "pip", "compile", "pyproject.toml", "--quiet", "--generate-hashes",
        "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
        "--custom-compile-command", REFRESH, "-o", lock.path, "-c", lock.pins,
    ]  # fmt: skip
    for extra in lock.extras:
        command += ["--extra", extra]
    if upgrade:
        command.append("--upgrade")
    with tempfile.TemporaryDirectory() as scratch:
        if lock is CPU:
            if Path(WHEELS).is_dir():
                command += ["--find-links", WHEELS]
            else:
                command += ["--extra-index-url", TORCH_CPU_INDEX]
                command += ["--index-strategy", "unsafe-best-match"]
        else:  # every package this lock shares with cpu.lock at cpu.lock's version
            own = set(pins((ROOT / lock.pins).read_text()))  # its own builds: torch, tensorflow
            shared = Path(scratch, "cpu.lock")
            shared.write_text(
                "".join(
                    f"{name}=={version}\n"
                    for name, version in pins((ROOT / CPU.path).read_text()).items()
                    if name not in own and not version.endswith("+cpu")
                )
            )
            command += ["-c", str(shared)]
        subprocess.run(command, cwd=ROOT, check=True)
        text = (ROOT / lock.path).read_text().replace(str(Path(scratch, "cpu.lock")), CPU.path)
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith(DIGEST)]
    (ROOT / lock.path).write_text(DIGEST + digest(lock) + "\n" + "".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a lock is stale")
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions")
    parser.add_argument("--requirement", metavar="NAME", help="print NAME's entry of --lock")
    parser.add_argument("--lock", choices=LOCKS, default=None, help="one lock (default: both)")
    args = parser.parse_args(argv)
    chosen = [LOCKS[args.lock]] if args.lock else list(LOCKS.values())
    if args.requirement:
        sys.stdout.write(requirement_block(chosen[0], args.requirement))
        return 0
    if args.check:
        problems = [problem for lock in chosen for problem in check(lock)]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for lock in chosen:  # cpu first: gpu.lock takes its versions
        compile_lock(lock, args.upgrade)
        print(f"wrote {lock.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
