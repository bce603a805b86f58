"""Start a data-parallel training from the pipeline and follow its ranks (rnn/dataparallel/rank.py).

``train.data_parallel: N`` makes the train stage (the CLI that ``dvc.yaml`` calls, and the
Prefect task) launch N processes with the framework's own launcher: ``torchrun --standalone``
for PyTorch (``python -m torch.distributed.run``, so the project's interpreter runs it), and N
``rnn train`` processes with a ``TF_CONFIG`` each for TensorFlow's MultiWorkerMirroredStrategy,
or (``train.data_parallel_over: devices``) one ``rnn train`` process whose MirroredStrategy
holds the N replicas, one per device.
Every rank runs ``rnn train`` (``train_as_rank``); rank 0 writes the outputs and reports each
epoch, each checkpoint and its summary as JSON lines in an events file, which the launcher turns
into the caller's progress lines, checkpoint pushes and return value. The launcher holds the
workspace lock for its ranks, and they die with it (``PR_SET_PDEATHSIG``), so a killed stage
leaves no orphan training behind.

Across machines, start the ranks yourself: ``torchrun --nnodes M --nproc-per-node K
--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m rnn.cli train ...`` on each
(docs/how-to/data-parallel.md); ``rnn train`` inside a launched world trains as its rank.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rnn.backends.engine import resolve_threads
from rnn.dataparallel.rank import die_with_parent
from rnn.errors import PipelineError
from rnn.names import LAUNCHER_ENV, TF_DEVICES_ENV, THREADS_ENV
from rnn.ports import free_port
from rnn.registry import RunKey
from rnn.workspace import Workspace

POLL_S = 0.5


class EventReader:
    """The launcher's side: hands each new event to the caller's hooks."""

    def __init__(self, path: Path, ckpt_dir: Path, on_epoch, checkpoint_sync) -> None:
        self.path, self.ckpt_dir = path, ckpt_dir
        self.on_epoch, self.checkpoint_sync = on_epoch, checkpoint_sync
        self.offset = 0
        self.summary: dict | None = None

    def drain(self) -> None:
        with self.path.open("rb") as src:
            src.seek(self.offset)
            data = src.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            event = json.loads(line)
            if event["kind"] == "epoch" and self.on_epoch is not None:
                self.on_epoch(event["run"], event["row"], event["total"])
            elif event["kind"] == "checkpoint" and self.checkpoint_sync is not None:
                self.checkpoint_sync.push(event["key"], self.ckpt_dir)
            elif event["kind"] == "summary":
                self.summary = event["summary"]


def rank_threads(params, size: int) -> int:
    """Each rank's threads: on the pool ($RNN_THREADS, a slot's share) a training holds one slot
    per rank (flows/train.py), so each rank gets a slot's threads; otherwise the ranks split the
    cores the run may use (train.threads, else all)."""
    if params.train.threads is None and os.environ.get(THREADS_ENV, "").strip():
        return resolve_threads(None)
    return max(1, resolve_threads(params.train.threads) // size)


def rank_commands(
    backend: str, size: int, args: list[str], over_devices: bool = False
) -> list[tuple[list[str], dict]]:
    """The processes to start, each with its extra environment: one torchrun (which starts the
    ranks), one process per TensorFlow worker, or (``over_devices``) one TensorFlow process
    with a replica per device."""
    if backend == "tf" and over_devices:
        return [([sys.executable, "-m", "rnn.cli", *args], {TF_DEVICES_ENV: str(size)})]
    if backend == "torch":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        return [([*torchrun, f"--nproc-per-node={size}", "-m", "rnn.cli", *args], {})]
    workers = [f"127.0.0.1:{free_port()}" for _ in range(size)]
    return [
        (
            [sys.executable, "-m", "rnn.cli", *args],
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                )
            },
        )
        for i in range(size)
    ]


RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")  # torchrun's per-rank line prefix
EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Interrupt): ")


def error_from_log(log: str, returncode: int) -> PipelineError:
    """A rank's own one-line error if it printed one, else the exception a rank died of, else
    the log's last line."""
    lines = [RANK_PREFIX.sub("", line).strip() for line in log.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith("error: ") and "; fix: " in line:
            problem, fix = line.removeprefix("error: ").split("; fix: ", 1)
            return PipelineError(problem, fix)
    raised = [line for line in lines if EXCEPTION_LINE.match(line) and "ChildFailed" not in line]
    last = raised[0] if raised else lines[-1] if lines else "no output"
    return PipelineError(
        f"data-parallel training failed (exit {returncode}): {last}",
        "rerun it; if it fails again, train.data_parallel: 1 trains in one process",
    )


def train_data_parallel(
    ws: Workspace,
    params,
    run: RunKey,
    epoch_budget: int | None = None,
    progress: bool = True,
    on_epoch=None,
    checkpoint_sync=None,
):
    """Train ``run`` with ``train.data_parallel`` processes; returns rank 0's ``TrainSummary``."""
    from rnn.training.identity import run_identity
    from rnn.training.loop import TrainSummary

    size = params.train.data_parallel
    over_devices = run.backend == "tf" and params.train.data_parallel_over == "devices"
    # one MirroredStrategy process trains every replica: it gets all the ranks' threads
    threads = rank_threads(params, size) * (size if over_devices else 1)
    ranked = params.model_copy(
        update={"train": params.train.model_copy(update={"threads": threads})}
    )
    if checkpoint_sync is not None:
        key = run_identity(run, params, ws.partition, ws.vocab).fingerprint
        checkpoint_sync.fetch(key, ws.checkpoint(run))
    if on_epoch is None and progress:
        from rnn.training.progress import epoch_line

        def on_epoch(name: str, row: dict, total: int) -> None:
            print(epoch_line(name, row, total), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="rnn-dp-") as tmp:
        params_file, events = Path(tmp) / "params.yaml", Path(tmp) / "events.jsonl"
        params_file.write_text(yaml.safe_dump(ranked.model_dump(mode="json"), sort_keys=False))
        events.touch()
        args = ["train", "-b", run.backend, "-v", run.variant, "-m", run.model]
        args += ["--workdir", str(ws.root), "--params", str(params_file), "--events", str(events)]
        if epoch_budget is not None:
            args += ["--epoch-budget", str(epoch_budget)]
        env = {**os.environ, LAUNCHER_ENV: str(os.getpid()), "OMP_NUM_THREADS": str(threads)}
        reader = EventReader(events, ws.checkpoint(run), on_epoch, checkpoint_sync)
        returncode, log = _run_ranks(
            rank_commands(run.backend, size, args, over_devices), env, ws, reader, tmp
        )
        if returncode != 0:
            raise error_from_log(log, returncode)
    if reader.summary is None:
        raise PipelineError(
            "data-parallel training ended without a summary from rank 0", "rerun the stage"
        )
    return TrainSummary(**reader.summary)


def _run_ranks(commands, env: dict, ws: Workspace, reader: EventReader, tmp: str):
    """Start the processes, relay events while they run; the first failure stops the rest."""
    procs, logs = [], []
    try:
        for i, (cmd, extra) in enumerate(commands):
            log = open(Path(tmp) / f"rank{i}.log", "w+b")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ws.root,
                    env={**env, **extra},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
            )
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            reader.drain()
            time.sleep(POLL_S)
        reader.drain()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    text = ""
    for log in logs:
        log.seek(0)
        text += log.read().decode("utf-8", "replace")
        log.close()
    failed = [p.returncode for p in procs if p.returncode != 0]
    return (failed[0] if failed else 0), text
