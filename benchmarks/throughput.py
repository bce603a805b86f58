"""Training throughput (CPU) of each backend x variant x cell against the chapter's own code,
side by side in one invocation: `../shared/bench/seed_baseline.py` (the book's way of writing
each cell: one product per gate and step, eager; concise: nn.RNN/GRU/LSTM and the Keras cells)
and our engine alternate, each in a fresh process, at the same settings on the full canonical
text (batch 32 x 35 steps, sequential; the RNN at the book's table's 512 scratch / 256 concise
units, the gated cells at 256), tokens/s over whole epochs. Also reports the achieved FLOP/s
against a measured matrix-multiply rate at the recurrent shape (batch x hidden x gates*hidden),
and for each speed target the share of that rate the target's tokens/s would take: above 100%,
no code doing the cell's products can meet it on the machine at hand.

    python benchmarks/throughput.py [--repeats 3] [--epochs 2] [--cells rnn gru lstm]
                                    [--runs torch-scratch ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_BASELINE, TIME_MACHINE, last_json, pair

HIDDENS = {"scratch": 512, "concise": 256}  # the book's table, for the RNN
GATED_HIDDENS = 256  # the book's GRU and LSTM sections
TARGETS = {"torch-scratch": 2, "torch-concise": 2, "tf-scratch": 6, "tf-concise": 10}
GATED_TARGET = 3  # scratch GRU / LSTM against the book's way of writing them, same framework
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
V, B, T = 28, 32, 35

OURS = r"""
import json, sys, tempfile, pathlib
sys.path.insert(0, {root!r})
from benchmarks.common import canonical_training_data, time_training
with tempfile.TemporaryDirectory() as work:
    ids, vocab_size = canonical_training_data(pathlib.Path(work))
    print(json.dumps(time_training({backend!r}, {variant!r}, {hiddens}, ids, vocab_size,
                                   epochs={epochs}, threads={threads}, cell={cell!r})))
"""

GEMM = r"""
import json, time
import {module}
if {module!r} == "torch":
    import torch; {threads} and torch.set_num_threads({threads}); a, w = torch.randn({b}, {h}), torch.randn({h}, {n})
    products = {{"mkl": lambda: torch.mm(a, w)}}
    from rnn.torch.kernels import _ONEDNN
    if _ONEDNN:
        lin, pack = _ONEDNN
        packed = pack(w.t().contiguous(), {b})  # oneDNN's linear computes a @ W^T
        products["onednn"] = lambda: lin(a, packed, None, "none", [], "")
else:
    import tensorflow as tf; a, w = tf.random.normal(({b}, {h})), tf.random.normal(({h}, {n})) / {n} ** 0.5

    @tf.function(jit_compile=True)
    def chain(x):  # 100 dependent products in one call, as in a compiled epoch
        for _ in range(100):
            x = tf.linalg.matmul(x, w)[:, :{h}]
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
    rates[name] = calls * per_call * 2 * {b} * {h} * {n} / (time.perf_counter() - t0)
print(json.dumps({{"flops": max(rates.values()), "rates": rates}}))
"""


def flops_per_token(h: int, gates: int = 1) -> float:
    """Forward 2GH^2 (the recurrent products of G gates) + 2HV (output); backward twice that;
    the input's gather and the gates' elementwise work are not counted."""
    return 3 * (2 * gates * h * h + 2 * h * V)


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
    ap.add_argument("--runs", nargs="*", default=list(TARGETS), help="backend-variant pairs")
    ap.add_argument("--cells", nargs="*", default=["rnn"], choices=list(GATES))
    ap.add_argument(
        "--repeats", type=lambda v: max(1, int(v)), default=3, help="seed/ours pairs per run"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    rows = []
    for pair_name, cell in ((r, c) for c in args.cells for r in args.runs):
        backend, variant = pair_name.split("-")
        run = f"{pair_name}-{cell}"
        h = HIDDENS[variant] if cell == "rnn" else GATED_HIDDENS
        gates = GATES[cell]
        target = (
            TARGETS[pair_name] if cell == "rnn" else GATED_TARGET if variant == "scratch" else None
        )
        seed_cmd = [
            sys.executable,
            str(SEED_BASELINE),
            str(TIME_MACHINE),
            backend,
            variant,
            str(args.baseline_epochs),
            "--hiddens",
            str(h),
            "--cell",
            cell,
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
                cell=cell,
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
                    n=gates * h,
                    threads=args.threads,
                ),
            ]
        )
        ratio = statistics.median(pair_ratios)
        achieved = ours["tokens_per_s"] * flops_per_token(h, gates)
        # The rate the target asks for, as a share of the best product rate: above 1, no code
        # doing these products can meet it on this machine (the products alone take longer).
        target_needs = (
            target * seed["tokens_per_s"] * flops_per_token(h, gates) / gemm["flops"]
            if target
            else None
        )
        rows.append(
            {
                "run": run,
                "seed_tokens_per_s": round(seed["tokens_per_s"]),
                "ours_tokens_per_s": round(ours["tokens_per_s"]),
                "ratio": round(ratio, 2),
                "pair_ratios": [round(r, 2) for r in pair_ratios],
                "target": target,
                "ok": target is None or ratio >= target,
                "achieved_gflops": round(achieved / 1e9, 1),
                "gemm_gflops": round(gemm["flops"] / 1e9, 1),
                "of_gemm": round(achieved / gemm["flops"], 2),
                "target_needs_of_gemm": target_needs and round(target_needs, 2),
                "gemm_by_library": {k: round(v / 1e9, 1) for k, v in gemm["rates"].items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| run | chapter tok/s | ours tok/s | ratio | target | achieved GFLOP/s "
        "| best GEMM GFLOP/s | of GEMM | target needs |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']}x"
        print(
            f"| {r['run']} | {r['seed_tokens_per_s']:,} | {r['ours_tokens_per_s']:,} | "
            f"{r['ratio']}x {'ok' if r['ok'] else 'MISS'} | {target} | "
            f"{r['achieved_gflops']} | {r['gemm_gflops']} | {r['of_gemm']:.0%} | "
            f"{'-' if r['target_needs_of_gemm'] is None else format(r['target_needs_of_gemm'], '.0%')} |"
        )
    print(
        f"\ntok/s: medians over {args.repeats} pair(s); ratio: the median of the pairs' own ratios;"
        " target needs: the FLOP/s the target's tokens/s takes, as a share of the best GEMM rate"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
