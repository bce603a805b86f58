"""The locks (constraints/cpu.lock, gpu.lock, compiled by constraints/lock.py): fresh against
pyproject.toml and the pins, the staleness check catching each kind of drift, and the venv that
setup.sh made holding exactly its lock. Offline and quick: nothing here runs uv."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("tomllib")  # Python 3.11+, as the locks are


def load_lock_module():
    spec = importlib.util.spec_from_file_location("rnn_lock", ROOT / "constraints" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lock = load_lock_module()


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A copy of what the locks are compiled from, and the locks, to edit."""
    (tmp_path / "constraints").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for path in (ROOT / "constraints").glob("*.txt"):
        shutil.copy(path, tmp_path / "constraints")
    for path in (ROOT / "constraints").glob("*.lock"):
        shutil.copy(path, tmp_path / "constraints")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_lock_is_fresh(name):
    assert lock.check(lock.LOCKS[name]) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"typer>=0.12"', '"typer>=0.13"'),  # a range
        ('"rich>=13",', '"rich>=13",\n  "tqdm",'),  # a new dependency
        ('"ruff>=0.6",', ""),  # a dependency gone
        ('requires-python = ">=3.10"', 'requires-python = ">=3.11"'),
    ],
)
def test_an_edit_to_the_dependencies_makes_both_locks_stale(inputs, old, new):
    edit(inputs / "pyproject.toml", old, new)
    for name in ("cpu", "gpu"):
        (problem,) = lock.check(lock.LOCKS[name], inputs)
        assert "stale" in problem and "./setup.sh --lock" in problem


def test_other_edits_to_pyproject_leave_the_locks_fresh(inputs):
    edit(inputs / "pyproject.toml", "line-length = 100", "line-length = 99")
    edit(inputs / "pyproject.toml", 'version = "0.1.0"', 'version = "0.1.1"')
    assert lock.check(lock.CPU, inputs) == lock.check(lock.GPU, inputs) == []


def test_a_changed_pin_makes_its_lock_stale(inputs):
    edit(inputs / "constraints" / "cpu.txt", "moto==5.2.5", "moto==5.2.4")
    assert "stale" in lock.check(lock.CPU, inputs)[0]
    edit(inputs / "constraints" / "cpu.txt", "moto==5.2.4", "moto==5.2.5")
    edit(inputs / "constraints" / "cpu.txt", "\n", "\n# a comment only\n")
    assert lock.check(lock.CPU, inputs) == []


def test_a_refreshed_cpu_lock_makes_the_gpu_lock_stale(inputs):
    edit(inputs / "constraints" / "cpu.lock", "\nrich==15.0.0 ", "\nrich==14.0.0 ")
    assert lock.check(lock.CPU, inputs) == []
    assert "stale" in lock.check(lock.GPU, inputs)[0]


def test_versions_against_the_ranges_are_reported(inputs):
    edit(inputs / "constraints" / "cpu.lock", "\ntyper==0.29.2 ", "\ntyper==0.11.0 ")
    edit(inputs / "constraints" / "cpu.lock", "\nmoto==5.2.5 ", "\nmoto==5.2.4 ")
    edit(inputs / "constraints" / "cpu.lock", "\npooch==", "\nnot-pooch==")
    problems = lock.check(lock.CPU, inputs)
    assert any("typer==0.11.0, against typer>=0.12" in problem for problem in problems)
    assert any("moto==5.2.4, against moto==5.2.5" in problem for problem in problems)
    assert any("lacks pooch" in problem for problem in problems)


def test_the_builds_of_torch():
    cpu = lock.pins((ROOT / lock.CPU.path).read_text())
    gpu = lock.pins((ROOT / lock.GPU.path).read_text())
    assert cpu["torch"].endswith("+cpu") and "tensorflow" not in cpu
    assert "+" not in gpu["torch"] and "tensorflow-cpu" not in gpu
    shared = set(cpu) & set(gpu) - {"torch"}
    assert {name: cpu[name] for name in shared} == {name: gpu[name] for name in shared}


def test_uv_comes_from_the_lock_with_its_hashes():
    entry = lock.requirement_block(lock.CPU, "uv")
    first, *hashes = entry.splitlines()
    assert first == f"uv=={lock.pins(entry)['uv']} \\"
    assert hashes and all(line.strip().startswith("--hash=sha256:") for line in hashes)
    assert not hashes[-1].endswith("\\") and "#" not in entry


def test_the_environment_is_the_lock():
    """The venv setup.sh made holds exactly its lock's versions: nothing more (the venv's own pip
    and the project aside), nothing less, nothing else."""
    marker = Path(sys.prefix) / "rnn-lock"
    if not marker.is_file():
        pytest.skip("not a venv that setup.sh made")
    locked = lock.pins((ROOT / marker.read_text().strip()).read_text())
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {
        lock.normalize(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions(path=site)
    }
    assert installed.pop(lock.PROJECT, None) is not None  # editable, from the checkout
    installed.pop("pip", None)
    assert installed == locked
