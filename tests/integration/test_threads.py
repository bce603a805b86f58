"""``train.threads`` is a pure speed setting: 1, 2 and every-core runs end with the same bytes.

Thread pools are fixed when a framework starts, so each count trains in its own process. The
shapes are the book's (hidden 512 scratch, 256 concise, batch 32 x 35 steps): libraries choose
how to split a product over threads by its shape, and smaller shapes hid a difference once
(MKL's output-layer weight gradient). Both sampling schemes run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TRAIN = r"""
import hashlib, json, sys
import numpy as np
from rnn.backends.engine import make_engine
from rnn.data.partition import epoch_minibatches
backend, threads = sys.argv[1], (int(sys.argv[2]) or None)
ids = np.random.default_rng(0).integers(0, 28, 32 * 35 * 3 + 36)
digests = {}
for variant, hiddens in (("scratch", 512), ("concise", 256)):
    for sampling in ("sequential", "random"):
        e = make_engine(backend, variant, 28, hiddens, lr=1.0, theta=1.0, device="cpu", seed=0,
                        threads=threads)
        for epoch in range(2):
            e.train_epoch(*epoch_minibatches(ids, 32, 35, sampling, 0, epoch), sampling)
        w = e.canonical_weights()
        digests[f"{variant}-{sampling}"] = hashlib.sha256(
            b"".join(np.ascontiguousarray(w[k]).tobytes() for k in sorted(w))).hexdigest()
print(json.dumps(digests))
"""


def weights_digests(backend: str, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RNN_THREADS", "MKL_CBWR")}
    out = subprocess.run(
        [sys.executable, "-c", TRAIN, backend, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_thread_count_changes_no_weight(backend):
    every_core = len(os.sched_getaffinity(0))
    # 0: null, every core (on a 2-core machine the 2-thread run already is that)
    counts = (1, 2) if every_core == 2 else (1, 2, 0)
    runs = {t: weights_digests(backend, t) for t in counts}
    assert set(runs[1]) == {
        f"{v}-{s}" for v in ("scratch", "concise") for s in ("sequential", "random")
    }
    assert runs[2] == runs[1], "2 threads changed the weights"
    assert runs.get(0, runs[1]) == runs[1], f"every core ({every_core}) changed the weights"
