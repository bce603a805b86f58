"""Data-parallel training against one process, at the same global batch, side by side in one
invocation: tokens/s of one process with ``--cores`` threads against ``--cores`` processes of one
thread each (torchrun, gloo), the share of each step the gradient all-reduce takes, and the
same processes with the all-reduce skipped: the bound no way of communicating can beat.

Two models, both on the full canonical text (The Time Machine) with the book's batch of 32 x 35,
sequential partitioning, SGD lr 1, theta 1:
- ``char``: the book's scratch RNN, 512 hidden units, 28 characters;
- ``word``: a scratch GRU of 256 units on word tokens (min_freq 2: ~2,400 words), where the
  output layer and its gradient are large: the case data parallelism is for.

Each measurement is a fresh process (``python benchmarks/data_parallel.py --worker``), started
plain for world size 1 (today's path) or by torchrun; the two alternate over ``--repeats``. Per
measurement: ``--epochs`` timed epochs after one warm-up epoch; rank 0 reports tokens/s and the
seconds spent inside the all-reduce (communication, including waiting for the slower rank).

    .venv/bin/python benchmarks/data_parallel.py [--models char word] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, TIME_MACHINE

MODELS = {
    "char": {"token": "char", "min_freq": 0, "cell": "rnn", "hiddens": 512},
    "word": {"token": "word", "min_freq": 2, "cell": "gru", "hiddens": 256},
}


def build_data(model: str, workdir: Path) -> tuple[Path, int]:
    from rnn.config import IngestConfig, PartitionConfig, VocabConfig
    from rnn.data.corpus import ingest
    from rnn.data.partition import load_split, partition
    from rnn.data.vocab import Vocab, build_vocab

    spec = MODELS[model]
    ingest(IngestConfig(source=str(TIME_MACHINE)), workdir / "corpus.parquet")
    vocab_cfg = VocabConfig(token=spec["token"], min_freq=spec["min_freq"])
    build_vocab(workdir / "corpus.parquet", vocab_cfg, workdir / "vocab")
    partition(workdir / "vocab", PartitionConfig(), workdir / "partition")
    ids = workdir / "train_ids.npy"
    import numpy as np

    np.save(ids, np.asarray(load_split(workdir / "partition", "train")))
    return ids, len(Vocab.load(workdir / "vocab"))


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): train and report on rank 0."""
    import numpy as np

    from rnn.backends.engine import make_engine
    from rnn.backends.world import SINGLE, inside_launch
    from rnn.data.partition import epoch_minibatches

    world = SINGLE
    if inside_launch():
        import rnn.backends.torch.distributed as tdist
        import rnn.backends.torch.engine as ttrain

        world = ttrain.join_world(args.device)  # gloo on CPU, NCCL on CUDA
        reduce = tdist.all_reduce_gradients
        spent = [0.0]

        def timed(params):  # the all-reduce, timed: communication plus waiting for the peer
            t0 = time.perf_counter()
            reduce(params)
            spent[0] += time.perf_counter() - t0

        tdist.all_reduce_gradients = (lambda params: None) if args.no_comm else timed
    spec = MODELS[args.model]
    ids = np.load(args.ids)
    engine = make_engine(
        "torch",
        "scratch",
        args.vocab,
        spec["hiddens"],
        cell=spec["cell"],
        threads=args.threads,
        device=args.device,
        world=world,
    )
    rows = []
    for epoch in range(args.epochs + 1):
        xs, ys = epoch_minibatches(ids, 32, 35, "sequential", 0, epoch)
        if world.size > 1:
            spent[0] = 0.0
        t0 = time.perf_counter()
        engine.train_epoch(xs, ys, "sequential", epoch=epoch)
        seconds = time.perf_counter() - t0
        if epoch:  # the first epoch warms up
            comm = spent[0] if world.size > 1 else 0.0
            rows.append({"tokens_per_s": xs.size / seconds, "comm_share": comm / seconds})
    if world.is_root:
        print(
            json.dumps(
                {
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                    "comm_share": statistics.median(r["comm_share"] for r in rows),
                }
            ),
            flush=True,
        )
    world.close()


def measure(
    model: str,
    ids: Path,
    vocab: int,
    procs: int,
    cores: int,
    epochs: int,
    device: str = "cpu",
    launch: bool = False,
    no_comm: bool = False,
) -> dict:
    """``launch``: start even one process through torchrun (the distributed path: NCCL on a
    GPU), not plain. ``no_comm``: the ranks skip the gradient all-reduce (their weights drift
    apart): the speed data parallelism would have if communication were free."""
    args = [
        str(Path(__file__).resolve()),
        "--worker",
        "--model",
        model,
        "--ids",
        str(ids),
        "--vocab",
        str(vocab),
        "--epochs",
        str(epochs),
        "--threads",
        str(cores // procs),
        "--device",
        device,
        *(["--no-comm"] if no_comm else []),
    ]
    if procs == 1 and not launch:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        cmd += [f"--nproc-per-node={procs}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(cores // procs)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="char", help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--no-comm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    report = {"cores": args.cores, "models": {}}
    with tempfile.TemporaryDirectory(prefix="rnn-dpbench-") as tmp:
        for model in args.models:
            ids, vocab = build_data(model, Path(tmp) / model)
            runs: dict[str, list[dict]] = {"one": [], "many": [], "free": []}
            for _ in range(args.repeats):
                for kind in runs:
                    procs = 1 if kind == "one" else args.cores
                    runs[kind].append(
                        measure(
                            model,
                            ids,
                            vocab,
                            procs,
                            args.cores,
                            args.epochs,
                            no_comm=kind == "free",
                        )
                    )
                    print(model, kind, procs, "processes:", runs[kind][-1], flush=True)
            one, many, free = (statistics.median(r["tokens_per_s"] for r in runs[k]) for k in runs)
            report["models"][model] = {
                "vocab": vocab,
                "one_process_tokens_per_s": round(one),
                f"{args.cores}_processes_tokens_per_s": round(many),
                "ratio": round(many / one, 3),
                # the same processes without the all-reduce: what no communication scheme beats
                "ratio_if_communication_were_free": round(free / one, 3),
                "comm_share": round(statistics.median(r["comm_share"] for r in runs["many"]), 3),
            }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
