"""Training throughput (CPU) of each backend x variant against the chapter's own code, side by
side in one invocation: `../shared/bench/seed_baseline.py` and our engine alternate, each in a
fresh process, at the same settings on the full canonical text (batch 32 x 35 steps, sequential,
scratch 512 hidden units, concise 256), tokens/s over whole epochs. Also reports the achieved
FLOP/s against a measured matrix-multiply rate at the recurrent shape (batch x hidden x hidden).

    python benchmarks/throughput.py [--repeats 3] [--epochs 2] [--runs torch-scratch ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_BASELINE, TIME_MACHINE, last_json, pair

HIDDENS = {"scratch": 512, "concise": 256}
TARGETS = {"torch-scratch": 2, "torch-concise": 2, "tf-scratch": 6, "tf-concise": 10}
V, B, T = 28, 32, 35

OURS = r"""
import json, sys, tempfile, pathlib
sys.path.insert(0, {root!r})
from benchmarks.common import canonical_training_data, time_training
with tempfile.TemporaryDirectory() as work:
    ids, vocab_size = canonical_training_data(pathlib.Path(work))
    print(json.dumps(time_training({backend!r}, {variant!r}, {hiddens}, ids, vocab_size,
                                   epochs={epochs}, threads={threads})))
"""

GEMM = r"""
import json, time
import {module}
if {module!r} == "torch":
    import torch; {threads} and torch.set_num_threads({threads}); a, w = torch.randn({b}, {h}), torch.randn({h}, {h})
    products = {{"mkl": lambda: torch.mm(a, w)}}
    from rnn.torch.kernels import _ONEDNN
    if _ONEDNN:
        lin, pack = _ONEDNN
        packed = pack(w, {b})
        products["onednn"] = lambda: lin(a, packed, None, "none", [], "")
else:
    import tensorflow as tf; a, w = tf.random.normal(({b}, {h})), tf.random.normal(({h}, {h})) / {h} ** 0.5

    @tf.function(jit_compile=True)
    def chain(x):  # 100 dependent products in one call, as in a compiled epoch
        for _ in range(100):
            x = tf.linalg.matmul(x, w)
        return x

    products = {{"xla": lambda: chain(a)}}
rates = {{}}
for name, product in products.items():
    calls = 20 if name == "xla" else 2000
    per_call = 100 if name == "xla" else 1
    for _ in range(3): product()
    t0 = time.perf_counter()
    for _ in range(calls): r = product()
    float(r[0, 0])
    rates[name] = calls * per_call * 2 * {b} * {h} * {h} / (time.perf_counter() - t0)
print(json.dumps({{"flops": max(rates.values()), "rates": rates}}))
"""


def flops_per_token(h: int) -> float:
    """Forward 2H^2 (recurrence) + 2HV (output); backward twice that; the gather is free."""
    return 3 * (2 * h * h + 2 * h * V)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--baseline-epochs", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="our intra-op threads (train.threads); 0 = the framework's default, as the "
        "chapter's code uses",
    )
    ap.add_argument("--runs", nargs="*", default=list(TARGETS))
    ap.add_argument(
        "--repeats", type=lambda v: max(1, int(v)), default=3, help="seed/ours pairs per run"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    rows = []
    for run in args.runs:
        backend, variant = run.split("-")
        h = HIDDENS[variant]
        seed_cmd = [
            sys.executable,
            str(SEED_BASELINE),
            str(TIME_MACHINE),
            backend,
            variant,
            str(args.baseline_epochs),
            "--hiddens",
            str(h),
        ]
        ours_cmd = [
            sys.executable,
            "-c",
            OURS.format(
                root=root,
                backend=backend,
                variant=variant,
                hiddens=h,
                epochs=args.epochs,
                threads=args.threads or None,
            ),
        ]
        # Pairs alternate which side runs first; the ratio is the median of the pairs' ratios,
        # so a slow spell on a shared host hits both sides of a pair instead of one figure.
        pairs = [pair(seed_cmd, ours_cmd, flip=i % 2 == 1) for i in range(args.repeats)]
        seed = {"tokens_per_s": statistics.median(p[0]["tokens_per_s"] for p in pairs)}
        ours = {"tokens_per_s": statistics.median(p[1]["tokens_per_s"] for p in pairs)}
        pair_ratios = [p[1]["tokens_per_s"] / p[0]["tokens_per_s"] for p in pairs]
        gemm = last_json(
            [
                sys.executable,
                "-c",
                GEMM.format(
                    module="torch" if backend == "torch" else "tensorflow",
                    b=B,
                    h=h,
                    threads=args.threads,
                ),
            ]
        )
        ratio = statistics.median(pair_ratios)
        achieved = ours["tokens_per_s"] * flops_per_token(h)
        rows.append(
            {
                "run": run,
                "seed_tokens_per_s": round(seed["tokens_per_s"]),
                "ours_tokens_per_s": round(ours["tokens_per_s"]),
                "ratio": round(ratio, 2),
                "pair_ratios": [round(r, 2) for r in pair_ratios],
                "target": TARGETS[run],
                "ok": ratio >= TARGETS[run],
                "achieved_gflops": round(achieved / 1e9, 1),
                "gemm_gflops": round(gemm["flops"] / 1e9, 1),
                "gemm_by_library": {k: round(v / 1e9, 1) for k, v in gemm["rates"].items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| run | chapter tok/s | ours tok/s | ratio | target | achieved GFLOP/s | best GEMM GFLOP/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['run']} | {r['seed_tokens_per_s']:,} | {r['ours_tokens_per_s']:,} | "
            f"{r['ratio']}x {'ok' if r['ok'] else 'MISS'} | {r['target']}x | "
            f"{r['achieved_gflops']} | {r['gemm_gflops']} |"
        )
    print(
        f"\ntok/s: medians over {args.repeats} pair(s); ratio: the median of the pairs' own ratios"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
