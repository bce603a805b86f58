"""The flows under prefect_test_harness, and the flow/`dvc repro` equivalence in a real DVC repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.workspace import copy_project, tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def repo(tmp_path):
    """A copy of the project's working tree as a fresh git + DVC repository with tiny params."""
    return copy_project(tmp_path / "repo")


def task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {
        r.name.rsplit("-", 1)[0] if r.name.count("-") == 1 else r.name: r.state.name for r in runs
    }


def test_pipeline_flow_outputs_artifacts_and_content_cache(harness, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.pipeline import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    state = pipeline(return_state=True)
    result = state.result()
    assert sorted(result["runs"]) == [
        "tf-concise-rnn",
        "tf-scratch-rnn",
        "torch-concise-rnn",
        "torch-scratch-rnn",
    ]
    assert (tmp_path / "reports/report.md").is_file()
    for run in result["runs"]:
        assert (tmp_path / "data/models" / run / "model.safetensors").is_file()
        assert (tmp_path / "data/eval" / run / "eval.json").is_file()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_key = {a.key: a for a in arts}
    table = json.loads(by_key["rnn-comparison"].data)
    assert {row["run"] for row in table} == set(result["runs"])
    assert "time traveller" in by_key["rnn-samples"].data
    # A second run with the same inputs is served from the content-keyed cache.
    second = pipeline(return_state=True)
    states = task_states(second.state_details.flow_run_id)
    print("STATES", states)
    assert all(states[f"train-{r}"] == "Cached" for r in result["runs"]), states
    # Changing a training parameter invalidates training but not the data stages.
    third = pipeline(overrides={"train": {"lr": 0.5}}, return_state=True)
    states = task_states(third.state_details.flow_run_id)
    assert states["partition"] == "Cached" and states["train-torch-scratch-rnn"] == "Completed"


def test_invalid_flow_parameter_is_rejected(harness, tmp_path, monkeypatch):
    from flows.pipeline import pipeline
    from rnn.errors import PipelineError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    with pytest.raises(PipelineError, match=r"train\.lr"):
        pipeline(overrides={"train": {"lr": -1}})


def run_flow(repo: Path, store: Path) -> str:
    """The pipeline flow in its own process (as a worker runs it), against the test server."""
    from prefect.settings import PREFECT_API_URL

    code = "from flows.pipeline import pipeline; print(pipeline(return_state=True).state_details.flow_run_id)"
    extra = {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOCAL_STORAGE_PATH": str(store),
        "PYTHONPATH": str(repo),
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        env={**env(), **extra},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def lock_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        o["path"]: o["md5"]
        for s in lock["stages"].values()
        for o in s.get("outs", [])
        if o["path"].startswith("data/") and not o["path"].startswith("data/metrics")  # timings
    }


def test_dvc_repro_and_flow_are_one_pipeline(harness, repo):
    """`dvc repro`, its metrics, plots, remote and experiments; then the flow reuses what it
    made, and after the flow `dvc repro` has nothing to do, with the same hashes. (Each
    framework's scratch model: the concise ones go through the same stages and tasks, in
    test_every_cell_through_dvc_repro_and_the_flow and tests/e2e/test_pool.py.)"""
    params = tiny_params()
    params["train"]["variants"] = ["scratch"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = sh("dvc", "repro", cwd=repo).stdout
    assert "Running stage 'train@torch-scratch-rnn'" in first
    again = sh("dvc", "repro", cwd=repo).stdout
    assert "Running stage" not in again  # nothing to do the second time
    repro_hashes = lock_hashes(repo)
    dvc_metrics_and_plots(repo)
    # One training parameter changed, as an experiment: only the stages downstream of it rerun.
    changed = sh("dvc", "exp", "run", "-S", "train.lr=0.5", cwd=repo).stdout
    exps = sh("dvc", "exp", "show", "--json", cwd=repo).stdout
    assert "0.5" in exps and "perplexity" in exps
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 0.5
    ran = {line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage")}
    assert ran == {
        f"{s}@{b}-scratch-rnn" for s in ("train", "evaluate") for b in ("torch", "tf")
    } | {"report"}
    # After dvc repro, the flow with the same parameters reuses everything...
    from uuid import UUID

    states = task_states(UUID(run_flow(repo, harness)))
    assert states and all(s in ("Completed", "Cached") for s in states.values())
    assert sh("dvc", "status", "--json", cwd=repo).stdout.strip() in ("{}", "")
    # ...and after a flow run (back to lr 1.0), dvc status is clean and repro has nothing to do,
    # with the very hashes `dvc repro` produced for the same parameters, models included.
    params["train"]["lr"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_flow(repo, harness)
    assert sh("dvc", "status", "--json", cwd=repo).stdout.strip() in ("{}", "")
    assert "Running stage" not in sh("dvc", "repro", cwd=repo).stdout
    assert lock_hashes(repo) == repro_hashes
    the_default_remote_takes_a_push_and_gives_it_back(repo)


def test_every_cell_through_dvc_repro_and_the_flow(harness, repo):
    """GRU and LSTM (two layers, dropout, Adam with a cosine schedule) in both implementations:
    `dvc repro` trains them; the flow trains the LSTMs with another rate, and `dvc repro`
    afterwards has nothing to do. (That the flow reuses what `dvc repro` made is
    test_dvc_repro_and_flow_are_one_pipeline's; it does not depend on the cell. PyTorch only:
    the stages and tasks do not depend on the framework; TensorFlow's cells train and evaluate in
    tests/integration/test_train_pipeline.py.)"""
    params = tiny_params()
    params["train"].update(
        backends=["torch"],
        models=["gru", "lstm"],
        epochs=1,
        optimizer={**params["train"]["optimizer"], "name": "adam"},
        lr=0.01,
        schedule={**params["train"]["schedule"], "name": "cosine", "warmup_steps": 2},
    )
    params["models"] = {
        "gru": {"cell": "gru", "num_hiddens": 8, "num_layers": 1, "dropout": 0.0},
        "lstm": {"cell": "lstm", "num_hiddens": 8, "num_layers": 2, "dropout": 0.2},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = sh("dvc", "repro", cwd=repo).stdout
    runs = [f"torch-{v}-{m}" for v in ("scratch", "concise") for m in ("gru", "lstm")]
    assert all(f"Running stage 'train@{r}'" in first for r in runs)
    # the flow's tasks call the same stage functions whatever the cell: the stacked LSTMs with
    # dropout (the most involved models) through the flow, at another rate
    params["train"].update(lr=0.02, models=["lstm"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_flow(repo, harness)
    for r in runs:
        record = json.loads((repo / "data/models" / r / "run.json").read_text())
        assert record["model_args"]["cell"] in r
        assert record["params"]["train"]["lr"] == (0.02 if r.endswith("lstm") else 0.01)
    assert "Running stage" not in sh("dvc", "repro", cwd=repo).stdout
    assert "lstm, 2 x 8" in (repo / "reports/report.md").read_text()


def test_data_parallel_through_dvc_repro_and_the_flow(harness, repo):
    """train.data_parallel: 2: `dvc repro`'s train stage and the flow's train task each launch
    two ranks (torchrun's); the records say so, and `dvc repro` after the flow has nothing to
    do. (The stage and the task hand off to the same launcher whatever the framework; its
    TensorFlow workers: tests/e2e/test_data_parallel.py.)"""
    params = tiny_params()
    params["train"].update(backends=["torch"], variants=["scratch"], data_parallel=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", cwd=repo)
    runs = ["torch-scratch-rnn"]

    def records() -> list[dict]:
        return [json.loads((repo / "data/models" / r / "run.json").read_text()) for r in runs]

    assert [r["data_parallel"] for r in records()] == [{"world_size": 2, "comm": "gloo"}]
    params["train"]["lr"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_flow(repo, harness)
    assert all(
        r["params"]["train"]["lr"] == 0.5 and r["data_parallel"]["world_size"] == 2
        for r in records()
    )
    assert "Running stage" not in sh("dvc", "repro", cwd=repo).stdout


def dvc_metrics_and_plots(repo: Path) -> None:
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo).stdout)
    assert "train" in json.dumps(metrics) and "perplexity" in json.dumps(metrics)
    sh("dvc", "plots", "show", "-o", "plots_out", cwd=repo)
    assert (repo / "plots_out" / "index.html").is_file()
    shutil.rmtree(repo / "plots_out")


def the_default_remote_takes_a_push_and_gives_it_back(repo: Path) -> None:
    """The default remote (a local directory): pushed to, then a pull brings back what was
    deleted, cache and workspace alike."""
    sh("dvc", "push", cwd=repo)
    assert any((repo / ".dvc-remote").rglob("*"))
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "data" / "corpus.parquet").unlink()
    sh("dvc", "pull", cwd=repo)
    assert (repo / "data" / "corpus.parquet").is_file()


def fake_better_prod(repo: Path, run: str) -> None:
    """Give prod a version registered at a commit whose eval.json claims perplexity 1 (and
    whose dvc.lock names another model, as a better model's run would)."""
    from stores import registry

    commit = registry.current(repo, run, registry.PROD)[0].commit
    path = f"data/eval/{run}/eval.json"
    record = json.loads(sh("git", "show", f"{commit}:{path}", cwd=repo).stdout)
    record["perplexity"] = {k: 1.0 for k in record["perplexity"]}
    lock = sh("git", "show", f"{commit}:dvc.lock", cwd=repo).stdout
    model_md5 = registry.model_hash(repo, run, commit)
    env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / "fake-index")}
    subprocess.run(["git", "read-tree", commit], cwd=repo, env=env, check=True)
    for name, text in (
        (path, json.dumps(record)),
        ("dvc.lock", lock.replace(model_md5, "0" * 32 + ".dir")),
    ):
        fake = repo / "fake-file"
        fake.write_text(text)
        blob = sh("git", "hash-object", "-w", str(fake), cwd=repo).stdout.strip()
        fake.unlink()
        subprocess.run(
            ["git", "update-index", "--cacheinfo", f"100644,{blob},{name}"],
            cwd=repo, env=env, check=True,
        )  # fmt: skip
    tree = subprocess.run(
        ["git", "write-tree"], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    better = sh("git", *ident, "commit-tree", tree, "-p", commit, "-m", "better", cwd=repo)
    version = registry.register(repo, run, better.stdout.strip())
    assert registry.assign(repo, run, version, registry.PROD)


def test_retrain_promotes_only_what_is_better(harness, repo, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.retrain import retrain
    from stores import registry

    monkeypatch.chdir(repo)
    first = retrain(backend="torch", return_state=True).result()
    assert {d["decision"] for d in first["decisions"]} == {"promoted"}
    # A promotion is a registered version holding prod: GTO tags on the run's experiment commit
    scratch = "torch-scratch-rnn"
    holder, tag = registry.current(repo, scratch, registry.PROD)
    assert (holder.version, tag) == ("v1.0.0", f"{scratch}#prod#1")
    lock = sh("git", "show", f"{holder.commit}:dvc.lock", cwd=repo).stdout
    assert f"data/models/{scratch}" in lock
    assert registry.eval_at(repo, holder)["run"] == scratch
    # Pretend prod holds a model better than anything retraining can produce.
    fake_better_prod(repo, scratch)
    state = retrain(backend="torch", return_state=True)
    decisions = {d["run"]: d["decision"] for d in state.result()["decisions"]}
    # Same data and parameters: the models are restored, not retrained, and are the versions
    # that first recorded them; prod keeps what it holds, the better fake and the same concise
    assert decisions == {
        scratch: "kept current",
        "torch-concise-rnn": "kept current (prod holds this model)",
    }
    held = registry.current(repo, scratch, registry.PROD)[0]
    assert registry.eval_at(repo, held)["perplexity"]["valid"] == 1.0
    # the history keeps every version and assignment; a restored model is no new version
    events = [(e["event"], e["version"], e["stage"]) for e in registry.history(repo, scratch)]
    assert events == [
        ("registration", "v1.0.0", None),
        ("assignment", "v1.0.0", "prod"),
        ("registration", "v2.0.0", None),
        ("assignment", "v2.0.0", "prod"),
    ]
    assert [v.version for v in registry.versions(repo, "torch-concise-rnn")] == ["v1.0.0"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    table = json.loads(next(a for a in arts if a.key == "rnn-promotion").data)
    assert {(row["run"], row["decision"]) for row in table} == set(decisions.items())
