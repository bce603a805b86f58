"""The model registry's git tag names (GTO's), in one place for the registry that writes them
(stores/registry.py) and the machines that only read them from origin (rnn/serving/fetch.py):
``<name>@v<N>.0.0`` registers a version, ``<name>#<stage>#<n>`` is the model's n-th assignment
(of any stage), here of ``stage``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assignment:
    name: str
    stage: str
    number: int


def version_tag(name: str, version: str) -> str:
    return f"{name}@{version}"


def version_pattern(name: str) -> str:
    """A git ref pattern for every version tag of ``name``."""
    return f"{name}@v*"


def assignment_tag(name: str, stage: str, number: int) -> str:
    return f"{name}#{stage}#{number}"


def assignment_pattern(name: str, stage: str) -> str:
    """A git ref pattern for every assignment of ``stage`` (``*``: of any stage) to a version of
    ``name``. The number counts all of ``name``'s assignments, whatever their stage (GTO's)."""
    return f"{name}#{stage}#*"


def parse_version(tag: str) -> tuple[str, str] | None:
    """(name, version) of a version tag, or None."""
    name, sep, version = tag.partition("@")
    return (name, version) if sep and version.startswith("v") else None


def parse_assignment(tag: str) -> Assignment | None:
    """The assignment a tag records, or None."""
    parts = tag.rsplit("#", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return Assignment(parts[0], parts[1], int(parts[2]))
