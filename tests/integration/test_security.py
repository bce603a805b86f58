"""Security: nothing is ever unpickled, downloads only over http(s) with a pinned checksum, and
a flow argument cannot reach files outside its workspace. (The API's authentication and secrets
kept out of every output are asserted on the real pool: tests/e2e/test_pool.py.)"""

from __future__ import annotations

import ast
import json

import pytest

from rnn.config import validate_params
from rnn.errors import PipelineError
from tests.support.workspace import ROOT, copy_project

SOURCES = [
    p for d in ("rnn", "flows", "tasks", "pool", "benchmarks") for p in (ROOT / d).rglob("*.py")
]
UNPICKLERS = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_path_can_unpickle(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = {a.name.split(".")[0] for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
            assert not names & UNPICKLERS, f"{path}:{node.lineno} imports {names & UNPICKLERS}"
    for node, func in calls(tree):
        if func.endswith("torch.load"):
            weights_only = keyword(node, "weights_only")
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, (
                f"{path}:{node.lineno}: torch.load without weights_only=True"
            )
        if func.endswith(("np.load", "numpy.load")):
            allow = keyword(node, "allow_pickle")
            assert allow is None or (isinstance(allow, ast.Constant) and allow.value is False)
        if func in ("flow", "task"):  # Prefect's default result serializer is pickle
            serializer = keyword(node, "result_serializer")
            spread = any(k.arg is None for k in node.keywords)  # **JSON_RESULTS
            assert (
                spread
                or (isinstance(serializer, ast.Constant) and serializer.value == "json")
                or keyword(node, "persist_result") is None
            ), f"{path}:{node.lineno}"


@pytest.mark.parametrize(
    "source", ["ftp://example.org/t.txt", "file:///etc/passwd", "s3://bucket/t.txt"]
)
def test_only_http_downloads(source):
    with pytest.raises(PipelineError, match="only http:// and https://"):
        validate_params({"ingest": {"source": source, "sha1": "0" * 40}}, "params.yaml")


def test_a_url_needs_a_pinned_checksum():
    with pytest.raises(PipelineError, match="pinned checksum"):
        validate_params(
            {"ingest": {"source": "https://example.org/t.txt", "sha1": None}}, "params.yaml"
        )


@pytest.mark.parametrize(
    "arguments, says",
    [
        ({"params_file": "../outside.yaml"}, "params_file '../outside.yaml' is outside"),
        ({"params_file": "/etc/hostname"}, "is outside the workspace"),
        ({"overrides": {"ingest": {"source": "/etc/hostname"}}}, "ingest.source"),
        ({"overrides": {"ingest": {"source": "../../secrets.txt"}}}, "ingest.source"),
        ({"overrides": {"ingest": {"cache_dir": "/tmp/elsewhere"}}}, "ingest.cache_dir"),
    ],
)
def test_a_flow_argument_cannot_leave_the_workspace(harness, tmp_path, arguments, says):
    from flows.pipeline import pipeline

    repo = copy_project(tmp_path / "repo", git=False)
    (tmp_path / "outside.yaml").write_text(json.dumps({"ingest": {"source": "/etc/hostname"}}))
    state = pipeline(workdir=str(repo), record=False, return_state=True, **arguments)
    assert state.is_failed()
    with pytest.raises(PipelineError, match="outside the workspace") as err:
        state.result()
    assert says in str(err.value)
    assert not (repo / "data" / "corpus.parquet").exists()


def test_a_worker_machine_directory_is_private(tmp_path):
    """Prefect's process worker writes each job's environment, the API credential included, to
    its scratch directory: the stack keeps the machine's directories to this user."""
    import stat

    from pool.workers import machine_dir

    machine = machine_dir(tmp_path / "stack", "worker-1")
    for path in (machine, machine / "home", machine / "tmp"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
