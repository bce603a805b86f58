"""Data-parallel training (issue 14): two processes under torchrun (gloo), two TensorFlow
MultiWorkerMirroredStrategy processes, and one TensorFlow process mirrored over two logical CPU
devices each train the weights one process trains at the same global batch, to rounding; a planted mistake (clipping before the
reduce, rows handed to the wrong rank) breaks that; `rnn train` with train.data_parallel: 2
launches the ranks itself, records how it trained, resumes from a single-process checkpoint, and
leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rnn.store.record import read_weights
from tests.support.dp_cases import CASES, Case, train_case
from tests.support.workspace import ROOT, copy_project, free_port, tiny_params

TOLERANCE = 1e-5


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, f"--nproc-per-node={nproc}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def tf_workers(*args: str, workers: int = 2) -> list[subprocess.CompletedProcess]:
    """``workers`` processes of a MultiWorkerMirroredStrategy cluster on 127.0.0.1."""
    from rnn.ports import free_port

    hosts = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    procs = []
    for index in range(workers):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def tf_devices(*args: str, replicas: int = 2) -> subprocess.CompletedProcess:
    """One process whose MirroredStrategy holds ``replicas`` logical CPU devices."""
    env = {**os.environ, "RNN_TF_DEVICES": str(replicas), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


# torchrun's two processes; TensorFlow's two MultiWorkerMirroredStrategy processes; one
# TensorFlow process with a MirroredStrategy over two logical CPU devices.
@pytest.fixture(scope="module", params=["torch", "tf", "tf-mirrored"])
def two_rank_weights(request, tmp_path_factory) -> tuple[str, Path]:
    backend = request.param.removesuffix("-mirrored")
    out = tmp_path_factory.mktemp(f"dp-{request.param}")
    args = ("tests/support/dp_worker.py", str(out), "--backend", backend)
    if request.param == "tf-mirrored":
        procs = [tf_devices(*args)]
    else:
        procs = [torchrun(*args)] if backend == "torch" else tf_workers(*args)
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return backend, out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_two_processes_train_the_weights_of_one(two_rank_weights, case: Case, monkeypatch):
    backend, out = two_rank_weights
    # A data-parallel TensorFlow epoch is a plain graph (XLA cannot compile the collectives);
    # compare it with one process's plain graph: XLA's own rounding, which Adam amplifies, is
    # up to ~1e-5 apart from it after three epochs (measured), with or without parallelism.
    monkeypatch.setenv("RNN_TF_JIT", "0")
    single = train_case(case, backend)
    assert largest_difference(single, train_case(case, backend, epochs=0)) > 1e-3  # it trained
    two = read_weights(out / f"{case.name}.safetensors")
    assert largest_difference(single, two) <= TOLERANCE


# The concise GRU's Glorot and orthogonal weights carry much state from one minibatch to the
# next (the scratch models' N(0, 0.01) ones little, at first): rows fed the wrong state show.
PLANTED = {"clip-first": CASES[0], "rotate-rows": Case("concise", "gru")}


@pytest.mark.parametrize("fault", PLANTED)
def test_a_planted_mistake_breaks_the_equivalence(tmp_path: Path, fault: str):
    case = PLANTED[fault]
    proc = torchrun(
        "tests/support/dp_worker.py", str(tmp_path), "--fault", fault, "--cases", case.name
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_weights(tmp_path / f"{case.name}.safetensors")
    assert largest_difference(train_case(case), two) > 100 * TOLERANCE


def rnn(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=600,
    )


def workspace(base: Path, data_parallel: int, epochs: int = 3, over: str = "processes") -> Path:
    params = tiny_params()
    params["train"].update(
        epochs=epochs,
        data_parallel=data_parallel,
        data_parallel_over=over,
        checkpoint_every=1,
    )
    params["models"]["rnn"]["cell"] = "gru"
    ws = copy_project(base, params, git=False)
    for stage in ("ingest", "vocab", "partition"):
        assert rnn(ws, stage).returncode == 0
    return ws


def set_data_parallel(ws: Path, size: int) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["data_parallel"] = size
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def weights(ws: Path, run: str = "torch-scratch-rnn") -> dict[str, np.ndarray]:
    return read_weights(ws / "data/models" / run / "model.safetensors")


def processes_under(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line]


# A checkpoint resumed across world sizes is the engine's, whatever the model: shown once per
# launcher (torchrun: torch-scratch; TensorFlow's workers: tf-concise), not for every variant.
RESUME_ACROSS_SIZES_SHOWN_BY = {
    ("torch", "concise"): "torch-scratch",
    ("tf", "scratch"): "tf-concise",
}


@pytest.mark.parametrize(
    ("backend", "variant", "comm"),
    [
        ("torch", "scratch", "gloo"),  # the concise models' equivalence: the tests above
        ("tf", "concise", "ring"),
        ("tf", "scratch", "mirrored"),  # train.data_parallel_over: devices
    ],
)
def test_rnn_train_launches_the_ranks_and_resumes_a_single_process_checkpoint(
    tmp_path: Path, backend: str, variant: str, comm: str
):
    run = f"{backend}-{variant}-rnn"
    over = "devices" if comm == "mirrored" else "processes"
    one = workspace(tmp_path / "one", data_parallel=1, over=over)
    assert rnn(one, "train", "-b", backend, "-v", variant).returncode == 0
    two = workspace(tmp_path / "two", data_parallel=2, over=over)
    proc = rnn(two, "train", "-b", backend, "-v", variant)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "epoch 3/3" in proc.stderr  # rank 0's epochs, relayed by the launcher
    record = json.loads((two / "data/models" / run / "run.json").read_text())
    assert record["data_parallel"] == {"world_size": 2, "comm": comm}
    assert (
        record["params"]["train"]
        == json.loads((one / "data/models" / run / "run.json").read_text())["params"]["train"]
    )
    assert largest_difference(weights(one, run), weights(two, run)) <= TOLERANCE
    if (backend, variant) in RESUME_ACROSS_SIZES_SHOWN_BY:
        assert processes_under(tmp_path) == []
        return
    # One epoch in one process, one in two, the last in one: each resumes the one before.
    mixed = workspace(tmp_path / "mixed", data_parallel=1, over=over)
    for size in (1, 2, 1):
        set_data_parallel(mixed, size)
        proc = rnn(mixed, "train", "-b", backend, "-v", variant, "--epoch-budget", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["resumed_from_epoch"] == 2
    assert largest_difference(weights(one, run), weights(mixed, run)) <= TOLERANCE
    assert processes_under(tmp_path) == []


def test_a_failing_rank_gives_one_error_line_and_keeps_earlier_results(tmp_path: Path):
    ws = workspace(tmp_path / "ws", data_parallel=2)
    assert rnn(ws, "train", "-b", "torch", "-v", "scratch").returncode == 0
    before = (ws / "data/models/torch-scratch-rnn/model.safetensors").read_bytes()
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update(device="cuda", epochs=4)  # no GPU here: every rank refuses
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = rnn(ws, "train", "-b", "torch", "-v", "scratch")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: train.device=cuda") and "Traceback" not in proc.stderr
    assert (ws / "data/models/torch-scratch-rnn/model.safetensors").read_bytes() == before
    assert processes_under(tmp_path) == []


def test_batch_rows_must_split_evenly(tmp_path: Path):
    ws = copy_project(tmp_path / "ws", tiny_params(), git=False)
    set_data_parallel(ws, 3)  # batch_size 4
    proc = rnn(ws, "train", "-b", "torch", "-v", "scratch")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: invalid parameters")
    assert "multiple" in proc.stderr


def test_two_machines_meet_through_a_c10d_rendezvous(tmp_path: Path):
    """`torchrun --nnodes 2` by hand on two "machines" (directories of their own, each with its
    own copy of the data), meeting at a c10d rendezvous on 127.0.0.1: whichever becomes rank 0
    writes the model, equal to one process's."""
    one = workspace(tmp_path / "one", data_parallel=1)
    assert rnn(one, "train", "-b", "torch", "-v", "scratch").returncode == 0
    machines = [workspace(tmp_path / f"machine-{i}", data_parallel=2) for i in range(2)]
    endpoint = f"127.0.0.1:{free_port()}"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
              "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
              "--rdzv-id", "rnn-two-machines", "-m", "rnn.cli", "train", "-b", "torch",
              "-v", "scratch"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ranks = [
        subprocess.Popen(
            [*launch, "--workdir", str(machine)],
            cwd=machine,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for machine in machines
    ]
    outputs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    written = [m for m in machines if (m / "data/models/torch-scratch-rnn").is_dir()]
    assert len(written) == 1  # only rank 0 writes
    record = json.loads((written[0] / "data/models/torch-scratch-rnn/run.json").read_text())
    assert record["data_parallel"] == {"world_size": 2, "comm": "gloo"}
    assert largest_difference(weights(one), weights(written[0])) <= TOLERANCE
    assert processes_under(tmp_path) == []
