"""One rank of the data-parallel equivalence test, started by torchrun (or, for
``--backend tf``, as a TF_CONFIG worker) from tests/e2e/test_data_parallel.py: trains every case of tests/support/dp_cases.py in the world and, on rank 0,
writes each one's weights to OUT/<case>.safetensors.

``--fault`` plants one of the two mistakes the test must catch: ``clip-first`` clips each
rank's gradient before the sum; ``rotate-rows`` hands the row blocks to the ranks in turn, so
the hidden state carried from one minibatch meets another rank's text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import rnn.backends.torch.engine as torch_train
from rnn.backends.engine import backend_module
from rnn.backends.world import World
from rnn.store.record import write_weights
from tests.support.dp_cases import CASES, train_case


def plant(fault: str) -> None:
    if fault == "clip-first":

        def synchronize(params, theta):
            from rnn.backends.torch.distributed import all_reduce_gradients

            torch_train.clip_gradients(params, theta)
            all_reduce_gradients(params)

        torch_train.synchronize_gradients = synchronize
    elif fault == "rotate-rows":
        calls = {"n": 0}

        def shard(minibatches, world: World):
            # the epoch's xs and then ys: both shifted alike, so labels stay with their inputs
            calls["n"] += 1
            share = minibatches.shape[1] // world.size
            out = minibatches[:, :share].copy()
            for i in range(len(minibatches)):
                block = (world.rank + i) % world.size
                out[i] = minibatches[i, block * share : (block + 1) * share]
            return out

        torch_train.shard_rows = shard


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--fault", default="none")
    ap.add_argument("--cases", default="all")
    ap.add_argument("--backend", default="torch")
    args = ap.parse_args()
    plant(args.fault)
    world = backend_module(args.backend).join_world("cpu", 1)
    try:
        for case in CASES if args.cases == "all" else [c for c in CASES if c.name == args.cases]:
            weights = train_case(case, args.backend, world=world)
            if world.is_root:
                write_weights(args.out / f"{case.name}.safetensors", weights)
    finally:
        world.close()


if __name__ == "__main__":
    main()
