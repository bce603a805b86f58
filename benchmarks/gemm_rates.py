"""The matrix-product rate of the machine at hand, measured at the shapes a training step uses,
for throughput.py's "share of the GEMM rate" figures.

    python benchmarks/gemm_rates.py torch|tensorflow SHAPES_JSON [--threads N]

SHAPES_JSON is a list of ``[m, k, n, per_step]``: an (m x k) by (k x n) product; ``per_step`` true
for a recurrence's product (the same weight for every step of a minibatch, so the weight's
packing or compilation is not counted: the rate is the best library's at steady state), false for
a product made once a minibatch (the weight gradients, the output layer: operands new each time,
so nothing is packed in advance). Prints one JSON line: seconds per call for each shape (the best
library's) and every library's GFLOP/s.

Generous to the reference on purpose: each shape is timed alone, in a tight loop that keeps its
operands in cache, and takes the fastest library for that shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(product: Callable[[], object], calls: int, per_call: int = 1) -> float:
    """Seconds per product: a warm-up, then ``calls`` calls of ``per_call`` products each."""
    for _ in range(3):
        product()
    t0 = time.perf_counter()
    for _ in range(calls):
        result = product()
    float(result[0, 0])  # type: ignore[index]  # wait for the last one
    return (time.perf_counter() - t0) / (calls * per_call)


def torch_products(m: int, k: int, n: int, per_step: bool) -> dict[str, Callable[[], object]]:
    import torch

    from rnn.backends.torch.kernels import _ONEDNN

    a, w = torch.randn(m, k), torch.randn(k, n)
    products: dict[str, Callable[[], object]] = {"mkl": lambda: torch.mm(a, w)}
    if _ONEDNN:
        linear, pack = _ONEDNN
        if per_step:
            packed = pack(w.t().contiguous(), m)  # oneDNN's linear computes a @ W^T
            products["onednn-packed"] = lambda: linear(a, packed, None, "none", [], "")
        else:
            w_t = w.t().contiguous()
            products["onednn"] = lambda: linear(a, w_t, None, "none", [], "")
    return products


def tensorflow_products(m: int, k: int, n: int, per_step: bool) -> dict[str, Callable[[], object]]:
    import tensorflow as tf

    a, w = tf.random.normal((m, k)), tf.random.normal((k, n)) / k**0.5
    if not per_step:
        return {"xla": tf.function(lambda: tf.linalg.matmul(a, w), jit_compile=True)}

    @tf.function(jit_compile=True)
    def chain(x):  # 100 dependent products in one call, as in a compiled epoch
        for _ in range(CHAIN):
            y = tf.linalg.matmul(x, w)
            x = y[:, :k] if n >= k else tf.tile(y, [1, k // n])
        return x

    return {"xla-chain": lambda: chain(a)}


CHAIN = 100


def measure(module: str, shapes: list[tuple[int, int, int, bool]], flops: float = 2e10) -> dict:
    """{"seconds": best seconds per call for each "mxkxn", "gflops": every library's rate}, each
    library timed over about ``flops`` floating-point operations a shape."""
    make = torch_products if module == "torch" else tensorflow_products
    seconds, gflops = {}, {}
    for m, k, n, per_step in shapes:
        key = f"{m}x{k}x{n}"
        rates = {}
        for name, product in make(m, k, n, per_step).items():
            chained = name == "xla-chain"
            calls = max(5, int(flops / (2 * m * k * n)) // (CHAIN if chained else 1))
            rates[name] = _time(product, calls, CHAIN if chained else 1)
        seconds[key] = min(rates.values())
        gflops[key] = {name: round(2 * m * k * n / s / 1e9, 1) for name, s in rates.items()}
    return {"seconds": seconds, "gflops": gflops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", choices=["torch", "tensorflow"])
    ap.add_argument("shapes", type=json.loads)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.module == "torch" and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.module, args.shapes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
