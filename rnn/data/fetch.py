"""Resolve ``ingest.source`` to local files: a checksummed, cached, retried download or local paths."""

from __future__ import annotations

import glob
import logging
import stat
from pathlib import Path
from urllib.parse import urlparse

import pooch
import requests

from rnn.config import IngestConfig
from rnn.errors import PipelineError


def known_hash(cfg: IngestConfig) -> str:
    return f"sha256:{cfg.sha256}" if cfg.sha256 else f"sha1:{cfg.sha1}"


def cached_name(cfg: IngestConfig) -> str:
    """Name the cached file by its checksum, so two sources with one file name never collide."""
    digest = cfg.sha256 or cfg.sha1
    base = Path(urlparse(cfg.source).path).name or "download"
    return f"{digest}-{base}"


def download(cfg: IngestConfig) -> Path:
    """Fetch a URL into the cache (a hit needs no network), verifying the pinned checksum.

    pooch retries transient failures with a growing wait and re-downloads a cached file whose
    hash no longer matches.
    """
    name = cached_name(cfg)
    fetcher = pooch.create(
        path=cfg.cache_dir,
        base_url="",
        registry={name: known_hash(cfg)},
        urls={name: cfg.source},
        retry_if_failed=cfg.retries,
    )
    pooch.get_logger().setLevel(logging.WARNING)  # its INFO lines would clutter the CLI
    try:
        return Path(fetcher.fetch(name, downloader=pooch.HTTPDownloader(timeout=cfg.timeout_s)))
    except ValueError as err:  # pooch reports a checksum mismatch as ValueError
        raise PipelineError(
            f"checksum mismatch for {cfg.source}: {' '.join(str(err).split())[:200]}",
            "check the URL, or pin the file's real checksum in ingest.sha1/sha256",
        ) from None
    except requests.exceptions.Timeout:
        raise PipelineError(
            f"download of {cfg.source} timed out after {cfg.timeout_s:g} s "
            f"({cfg.retries + 1} attempts)",
            "check the network or raise ingest.timeout_s",
        ) from None
    except requests.exceptions.HTTPError as err:
        raise PipelineError(
            f"download of {cfg.source} failed: HTTP {err.response.status_code}",
            "check the URL in ingest.source",
        ) from None
    except requests.exceptions.RequestException as err:
        raise PipelineError(
            f"download of {cfg.source} failed: {type(err).__name__}",
            "check the network, or seed the cache with `rnn fetch --from-file FILE`",
        ) from None


def seed_cache(cfg: IngestConfig, local_file: Path) -> Path:
    """Put a local copy of a URL source in the cache after verifying it against the pinned hash."""
    if not local_file.is_file():
        problem = (
            f"{local_file} is a {special_kind(local_file)}, not a regular file"
            if local_file.exists() and not local_file.is_dir()
            else f"{local_file} is not a file"
            if local_file.exists()
            else f"{local_file} not found"
        )
        raise PipelineError(problem, "pass an existing regular file to --from-file")
    actual = pooch.file_hash(str(local_file), alg="sha256" if cfg.sha256 else "sha1")
    expected = cfg.sha256 or cfg.sha1
    if actual != expected:
        raise PipelineError(
            f"{local_file} has checksum {actual}, not the pinned {expected}",
            "use the file the checksum in params.yaml was taken from",
        )
    target = Path(cfg.cache_dir) / cached_name(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(local_file.read_bytes())
    return target


def local_files(source: str, root: Path) -> list[Path]:
    """A file, every regular file in a directory (sorted, recursive), or the matches of a glob;
    a relative ``source`` is relative to ``root`` (the workspace)."""
    path = root / source
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PipelineError(f"directory {source} holds no files", "add text files to it")
        return files
    if glob.has_magic(source):
        matches = (root / p for p in glob.glob(source, root_dir=root, recursive=True))
        files = sorted(p for p in matches if p.is_file())
        if not files:
            raise PipelineError(f"pattern {source} matches no files", "check the glob pattern")
        return files
    if path.exists():  # a FIFO, a device, a socket: there, but no text to read to its end
        raise PipelineError(
            f"source {source} is a {special_kind(path)}, not a regular file or directory",
            "set ingest.source to a regular file (copy the stream to one first), a directory, "
            "a glob or an http(s) URL",
        )
    if path.with_name(path.name + ".dvc").is_file():
        raise PipelineError(
            f"source {source} is tracked by DVC but not in this checkout",
            "`dvc pull` it (or `rnn fetch`, which also takes --from-file COPY)",
        )
    raise PipelineError(
        f"source {source} not found",
        "set ingest.source to an existing file, directory, glob or http(s) URL",
    )


def special_kind(path: Path) -> str:
    """What a path that is neither a regular file nor a directory is, in words."""
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


def resolve_source(cfg: IngestConfig, root: Path) -> list[Path]:
    return [download(cfg)] if cfg.is_url else local_files(cfg.source, root)
