from __future__ import annotations

import os
import tempfile

import pytest

# Prefect and DVC keep state under $HOME and phone home; tests get a private, offline home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="rnn-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from tests.support.s3 import s3_remote  # noqa: F401  (the S3 server fixture, for every module)
from tests.support.workspace import CORPORA, TIME_MACHINE


def pytest_configure(config: pytest.Config) -> None:
    if not TIME_MACHINE.is_file():
        raise pytest.UsageError(f"test corpora not found under {CORPORA}; set RNN_SHARED")


# The end-to-end modules, longest first (on 2 cores: pool 10 minutes, sweep pool 4, flows 12 over
# 7 tests, machines 6, e2e 1, data_parallel 5 over many short tests). (Measured: starting the
# other process on end-to-end modules too, two lanes of them side by side, took 2,374 s against
# 2,025: two stacks of servers and workers at once oversubscribe two cores.)
E2E_ORDER = (
    "test_pool", "test_sweep_pool", "test_flows", "test_machines", "test_e2e", "test_data_parallel"
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: end-to-end (the pool's test first), then integration, then unit, slow ones
    first within a tier, so that the test processes side by side (pytest-xdist) finish together
    instead of one waiting on a late end-to-end test. (Measured on 2 cores: a third process, or
    the end-to-end tests dealt out to every process at once, made the suite slower: they are
    CPU-bound too.)"""
    tiers = {"e2e": 0, "integration": 2, "unit": 4}

    def rank(item: pytest.Item) -> tuple[int, int]:
        tier = tiers.get(item.path.parent.name, 4)
        slow = item.get_closest_marker("e2e") or item.get_closest_marker("slow")
        module = item.path.stem
        order = E2E_ORDER.index(module) if module in E2E_ORDER else len(E2E_ORDER)
        return tier + (0 if slow else 1), order

    items.sort(key=rank)


@pytest.fixture(scope="session")
def time_machine_text() -> str:
    return TIME_MACHINE.read_text(encoding="utf-8")


@pytest.fixture(params=["gather", "one_hot"])
def scratch_inputs(request, monkeypatch) -> str:
    """Run a test on both input paths of the PyTorch scratch RNN's first layer (see
    rnn/backends/torch/recurrences.py: the vocabulary size picks one; the tests' 28 tokens x 16 units
    would otherwise pick gather)."""
    import rnn.backends.torch.recurrences

    share = 0.0 if request.param == "gather" else float("inf")
    monkeypatch.setattr(rnn.backends.torch.recurrences, "ONE_HOT_MAX_SHARE", share)
    return request.param


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """One Prefect API for the session's flow tests (a real server, SQLite), and its result
    storage; child processes reach it through PREFECT_API_URL."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    store = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(
            {PREFECT_LOCAL_STORAGE_PATH: store, PREFECT_SERVER_ANALYTICS_ENABLED: False}
        ),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield store


@pytest.fixture(scope="session")
def tiny_repro_hashes(tmp_path_factory, worker_id) -> dict[str, str]:
    """`dvc repro` with the tiny parameters in a plain clone of an origin: the model and data
    hashes every workspace, machine and pool run with those parameters must match. Computed once
    per test session, by whichever test process asks first (pytest-xdist's processes share the
    session's base temporary directory; the other waits on the lock instead of repeating it)."""
    import json

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base if worker_id == "master" else base.parent) / "tiny-repro-hashes.json"
    with FileLock(f"{shared}.lock"):
        if shared.is_file():
            return json.loads(shared.read_text())
        hashes = _tiny_repro_hashes(tmp_path_factory.mktemp("plain"))
        shared.write_text(json.dumps(hashes))
        return hashes


def _tiny_repro_hashes(base) -> dict[str, str]:
    from tests.support.machines import Machine, make_origin, model_hashes
    from tests.support.workspace import tiny_params

    m = Machine(base, make_origin(base, tiny_params()), "http://127.0.0.1:9/api", {})
    checkout = m.clone()
    m.run("dvc", "repro", cwd=checkout)
    return model_hashes(checkout)
