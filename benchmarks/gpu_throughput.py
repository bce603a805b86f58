"""Training tokens/s of the PyTorch variants on a GPU, against the book's V100 figures.

The book printed 67-72k tokens/s for PyTorch scratch and 268-404k for PyTorch concise on a V100
(full canonical text, batch 32 x 35 steps, sequential partitioning, scratch 512 / concise 256
hidden units). This runs our engine at those settings: one warm-up epoch, then ``--epochs`` timed
epochs (the engine syncs with the device once per epoch, when it reads the loss). With a CUDA
device it then runs the distributed path once: one rank under torchrun on NCCL
(benchmarks/data_parallel.py's worker, the char model), tokens/s and the all-reduce's share.

    python benchmarks/gpu_throughput.py                  # device auto: CUDA, else MPS, else CPU
    python benchmarks/gpu_throughput.py --device cpu --epochs 1   # a dry run on any machine
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import canonical_training_data, time_training

BOOK_V100 = {"scratch": "67-72k", "concise": "268-404k"}
HIDDENS = {"scratch": 512, "concise": 256}


def measure(variant: str, device: str, epochs: int, ids: np.ndarray, vocab_size: int) -> dict:
    timed = time_training(
        "torch", variant, HIDDENS[variant], ids, vocab_size, device=device, epochs=epochs
    )
    return {
        "variant": variant,
        "device": timed["device"],
        "tokens_per_s": round(timed["tokens_per_s"]),
        "perplexity": round(timed["perplexity"], 3),
        "book_v100_tokens_per_s": BOOK_V100[variant],
    }


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def nccl_world_of_one(epochs: int) -> dict:
    """The data-parallel path on one GPU: torchrun, one rank, NCCL all-reduce every step."""
    from benchmarks import data_parallel

    with tempfile.TemporaryDirectory() as work:
        ids, size = data_parallel.build_data("char", Path(work))
        timed = data_parallel.measure("char", ids, size, 1, 1, epochs, device="cuda", launch=True)
    return {
        "variant": "scratch, torchrun + NCCL, 1 rank",
        "device": "cuda",
        "tokens_per_s": round(timed["tokens_per_s"]),
        "comm_share": round(timed["comm_share"], 3),
        "book_v100_tokens_per_s": BOOK_V100["scratch"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=lambda v: max(1, int(v)), default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        ids, size = canonical_training_data(Path(work))
        rows = [measure(v, args.device, args.epochs, ids, size) for v in ("scratch", "concise")]
    if args.device in ("auto", "cuda") and _has_cuda():
        rows.append(nccl_world_of_one(args.epochs))
    for row in rows:
        print(json.dumps(row), flush=True)
    print("\n| variant | device | ours tok/s | book (V100) tok/s |\n| --- | --- | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['device']} | {r['tokens_per_s']:,} | "
            f"{r['book_v100_tokens_per_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
