"""Source texts as DVC-tracked inputs under ``data/raw/``: the corpus is versioned from its raw
bytes on, pushed to the remote with everything else, and a dependency of the ingest stage
(``dvc.yaml`` lists ``${ingest.source}``), so changing it reruns ingest and all after it.

``rnn corpus add`` puts a file, a directory or a checksum-pinned URL there and tracks it
(`dvc add`); ``rnn fetch`` brings a tracked corpus back to a checkout that lacks it: from the DVC
remote, a verified local copy, or the URL it came from. DVC is driven through its command line
(as ``rnn repro`` does): the library never imports it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import yaml

from rnn.config import IngestConfig, validate_params
from rnn.data.fetch import special_kind
from rnn.errors import PipelineError
from rnn.store.atomic import atomic_dir, atomic_path
from rnn.store.dvc_cli import dvc_command
from rnn.workspace import Workspace

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_./-]+$")


def dvc_file(path: Path) -> Path:
    """The `.dvc` file that tracks ``path`` (beside it, as `dvc add` writes it)."""
    return path.with_name(path.name + ".dvc")


def is_dvc_repo(ws: Workspace) -> bool:
    return (ws.root / ".dvc").is_dir()


def run_dvc(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*dvc_command(), *args], cwd=ws.root, capture_output=True, text=True, check=False
    )


def _dvc_or_fail(ws: Workspace, *args: str) -> None:
    result = run_dvc(ws, *args)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"dvc {' '.join(args)} failed: {reason}", "fix the cause and rerun")


def corpus_name(source: str, name: str | None) -> str:
    """The name under data/raw/: given, or the source's last path component."""
    chosen = name or Path(urlparse(source).path if "://" in source else source).name
    if not SAFE_NAME.match(chosen or ""):
        raise PipelineError(
            f"{chosen!r} is not a plain file name for data/raw/",
            "pass --name NAME (letters, digits, '.', '_', '-')",
        )
    return chosen


def _place_local(source: Path, target: Path) -> None:
    """Copy a file or a directory into place; a reader never sees half of it."""
    if source.is_dir():
        with atomic_dir(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return
    if not source.exists():
        raise PipelineError(f"{source} not found", "pass an existing file, directory or URL")
    if not source.is_file():
        raise PipelineError(
            f"{source} is a {special_kind(source)}, not a regular file or directory",
            "copy the stream to a regular file first",
        )
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _place_url(ws: Workspace, url: str, pins: dict[str, str | None], target: Path) -> None:
    from rnn.data.fetch import download

    if not (pins.get("sha1") or pins.get("sha256")):
        raise PipelineError(
            f"{url} has no pinned checksum", "pass --sha256 HASH (or --sha1 HASH) of the file"
        )
    cfg = IngestConfig(source=url, cache_dir=str(ws.resolve("data/cache")), **pins)
    with atomic_path(target) as tmp:
        shutil.copyfile(download(cfg), tmp)


def add_corpus(
    ws: Workspace,
    params_file: Path,
    source: str,
    name: str | None = None,
    sha1: str | None = None,
    sha256: str | None = None,
) -> dict:
    """Put ``source`` (a file, a directory or an http(s) URL with a pinned checksum) at
    data/raw/NAME, track it with DVC, point ``ingest.source`` at it and push it when the
    workspace has a remote. A URL's pin stays in the parameters (and in the `.dvc` file's meta,
    so ``rnn fetch`` can download it again); a local text is versioned by DVC's hash alone."""
    is_url = source.startswith(("http://", "https://"))
    target = ws.raw / corpus_name(source, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    pins = {"sha1": sha1, "sha256": sha256} if is_url else {"sha1": None, "sha256": None}
    if is_url:
        _place_url(ws, source, pins, target)
    else:
        _place_local(ws.resolve(source), target)
    relative = target.relative_to(ws.root).as_posix()
    set_ingest_keys(params_file, {"source": relative, **pins})
    summary: dict = {"corpus": relative, "bytes": _size(target), "tracked": False}
    if not is_dvc_repo(ws):
        summary["next"] = "not a DVC repository: the corpus is in place but not versioned"
        return summary
    _dvc_or_fail(ws, "add", "-q", relative)
    if is_url:
        _write_meta(dvc_file(target), {"source": source, **{k: v for k, v in pins.items() if v}})
    pushed = run_dvc(ws, "push", "-q", f"{relative}.dvc").returncode == 0
    summary.update(
        tracked=True,
        pushed=pushed,
        next=f"git add {relative}.dvc {Path(relative).parent.as_posix()}/.gitignore "
        f"{params_file.name} && git commit" + ("" if pushed else "; then `dvc push`"),
    )
    return summary


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _write_meta(tracker: Path, meta: dict) -> None:
    record = yaml.safe_load(tracker.read_text())
    record["meta"] = meta
    with atomic_path(tracker) as tmp:
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))


def _render(value: str | None) -> str:
    if value is None:
        return "null"
    return value if PLAIN_SCALAR.match(value) else json.dumps(value)


def set_ingest_keys(params_file: Path, values: dict[str, str | None]) -> None:
    """Set keys of the ``ingest`` section in place, keeping every other line and comment; the
    result must validate before it replaces the file."""
    text = params_file.read_text() if params_file.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^ingest:\s*(#.*)?$", line)), None)
    if start is None:
        lines += ["\n" if lines and not lines[-1].endswith("\n") else "", "ingest:\n"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i])), len(lines))
    for key, value in values.items():
        pattern = re.compile(rf"^(\s+){key}:[ \t]*([^#\n]*?)([ \t]*#.*)?$")
        found = next(
            (i for i in range(start + 1, end) if pattern.match(lines[i].rstrip("\n"))), None
        )
        if found is None:
            lines.insert(start + 1, f"  {key}: {_render(value)}\n")
            end += 1
            continue
        match = pattern.match(lines[found].rstrip("\n"))
        indent, comment = match.group(1), match.group(3) or ""
        lines[found] = f"{indent}{key}: {_render(value)}{comment}\n"
    edited = "".join(lines)
    validate_params(yaml.safe_load(edited), str(params_file))  # invalid: the old file stays
    with atomic_path(params_file) as tmp:
        tmp.write_text(edited)


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def restore_tracked(ws: Workspace, cfg: IngestConfig, from_file: Path | None = None) -> Path:
    """Bring the DVC-tracked ``ingest.source`` into a checkout that lacks it: from the DVC
    remote, else from ``from_file`` or the URL in its `.dvc` meta, each checked against the
    hash DVC recorded before it is put in place (and into DVC's cache, so `dvc push` has it)."""
    target = ws.resolve(cfg.source)
    tracker = dvc_file(target)
    if target.exists():
        return target
    if not tracker.is_file():
        raise PipelineError(
            f"ingest.source {cfg.source} not found and not tracked by DVC",
            "add your text with `rnn corpus add FILE`",
        )
    relative = tracker.relative_to(ws.root).as_posix()
    if run_dvc(ws, "pull", "-q", relative).returncode == 0 and target.exists():
        return target
    record = yaml.safe_load(tracker.read_text())
    expected = record["outs"][0].get("md5", "")
    meta = record.get("meta") or {}
    if from_file is None and not meta.get("source"):
        raise PipelineError(
            f"{cfg.source} is in neither this checkout nor the DVC remote",
            "`dvc push` it from the machine where it was added, or pass --from-file COPY",
        )
    copy = Path(from_file) if from_file is not None else _download_meta(ws, meta)
    if not copy.is_file() or md5_of(copy) != expected:
        raise PipelineError(
            f"{copy} is not the text {relative} tracks (md5 {expected})",
            "use the very file that was added, or `dvc pull` from the remote that has it",
        )
    with atomic_path(target) as tmp:
        shutil.copyfile(copy, tmp)
    _dvc_or_fail(ws, "commit", "-f", "-q", relative)
    return target


def _download_meta(ws: Workspace, meta: dict) -> Path:
    from rnn.data.fetch import download

    pins = {k: meta.get(k) for k in ("sha1", "sha256")}
    return download(
        IngestConfig(source=meta["source"], cache_dir=str(ws.resolve("data/cache")), **pins)
    )
