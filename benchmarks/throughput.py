"""Training throughput (CPU) of each backend x variant x cell against the chapter's own code,
side by side in one invocation: `../shared/bench/seed_baseline.py` (the book's way of writing
each cell: one product per gate and step, eager; concise: nn.RNN/GRU/LSTM and the Keras cells)
and our engine alternate, each in a fresh process, at the same settings on the full canonical
text (batch 32 x 35 steps, sequential; the RNN at the book's table's 512 scratch / 256 concise
units, the gated cells at 256), tokens/s over whole epochs. Also reports the achieved FLOP/s
against the measured matrix-multiply rate over one minibatch's products at their own shapes
(benchmarks/gemm_rates.py, measured beside each pair; and, as earlier tables did, at the fused
recurrent shape batch x hidden x gates*hidden alone), and for each speed target the share of that
rate the target's tokens/s would take: above 100%, no code doing the cell's products can meet it
on the machine at hand.

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
from common import SEED_BASELINE, TIME_MACHINE, pair

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
from benchmarks.gemm_rates import measure
with tempfile.TemporaryDirectory() as work:
    ids, vocab_size = canonical_training_data(pathlib.Path(work))
    print(json.dumps(time_training({backend!r}, {variant!r}, {hiddens}, ids, vocab_size,
                                   epochs={epochs}, threads={threads}, cell={cell!r},
                                   chunk={chunk},
                                   probe=lambda: measure({module!r}, {shapes!r}, {flops}))))
"""

# The scratch GRU is the book's: its reset gate must be known before the candidate's product, so
# each step makes two products (z, r | candidate); every other cell fuses its gates into one.
TWO_PRODUCT_GRU = {"scratch"}

Product = tuple[int, int, int, int]  # (m, k, n, calls per minibatch); calls > 1: per step


def minibatch_products(cell: str, variant: str, h: int) -> list[Product]:
    """Every matrix product of one training minibatch (batch B x T steps) that flops_per_token
    counts, at the shapes the cell's maths gives it: per step the recurrent product(s) forward
    and back through the recurrent weights; once, the weight gradient summed over all steps and
    the output layer's three products. The input's share (a row gather) is not a product."""
    rows = B * T
    two_products = cell == "gru" and variant in TWO_PRODUCT_GRU
    gate_widths = [2 * h, h] if two_products else [GATES[cell] * h]
    steps = [(B, h, n, T) for n in gate_widths] + [(B, n, h, T) for n in gate_widths]
    weight_grads = [(h, rows, n, 1) for n in gate_widths]
    output = [(rows, h, V, 1), (rows, V, h, 1), (h, rows, V, 1)]
    return steps + weight_grads + output


def measured_shapes(cell: str, variant: str, h: int) -> list[tuple[int, int, int, bool]]:
    """The shapes gemm_rates.measure times for a cell: its minibatch's products (per step or
    not) and the fused gates' shape B x h x gates*h, the single figure earlier tables used."""
    products = minibatch_products(cell, variant, h)
    fused = (B, h, GATES[cell] * h, True)
    return sorted({(m, k, n, calls > 1) for m, k, n, calls in products} | {fused})


def reference_rates(measured: dict, cell: str, variant: str, h: int) -> dict:
    """From one gemm_rates.measure result: the best libraries' rate over exactly one
    minibatch's products, each shape timed alone ("flops"), and the fused shape's rate."""
    products = minibatch_products(cell, variant, h)
    seconds = measured["seconds"]
    flops = sum(2 * m * k * n * calls for m, k, n, calls in products)
    assert flops == flops_per_token(h, GATES[cell]) * B * T, "products and FLOP count disagree"
    total = sum(calls * seconds[f"{m}x{k}x{n}"] for m, k, n, calls in products)
    m, k, n = B, h, GATES[cell] * h
    return {"flops": flops / total, "fused_shape_flops": 2 * m * k * n / seconds[f"{m}x{k}x{n}"]}


def stretch_shares(ours: dict, per_token: float, cell: str, variant: str, h: int, key: str) -> list:
    """Each timed stretch's achieved FLOP/s as a share of the reference rate ``key`` measured
    just before and just after it in the same process (their mean)."""
    rates = [reference_rates(p, cell, variant, h)[key] for p in ours["probes"]]
    return [
        tps * per_token / ((rates[e] + rates[e + 1]) / 2)
        for e, tps in enumerate(ours["stretch_tokens_per_s"])
    ]


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
    ap.add_argument(
        "--chunk",
        type=int,
        default=25,
        help="minibatches per timed stretch, with the product rates measured between stretches "
        "(0: whole epochs); this host's speed drifts within seconds",
    )
    ap.add_argument(
        "--probe-flops", type=float, default=4e9, help="work per shape of each rate measurement"
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
        shapes = measured_shapes(cell, variant, h)
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
                chunk=args.chunk or None,
                flops=args.probe_flops,
                module="torch" if backend == "torch" else "tensorflow",
                shapes=[list(shape) for shape in shapes],
            ),
        ]
        # Pairs alternate which side runs first; the ratio is the median of the pairs' ratios,
        # so a slow spell on a shared host hits both sides of a pair instead of one figure. The
        # product rates are measured in our process between its epochs for the same reason, and
        # each epoch's share is against the rates measured just before and after it.
        pairs = [pair(seed_cmd, ours_cmd, flip=i % 2 == 1) for i in range(args.repeats)]
        seed = {"tokens_per_s": statistics.median(p[0]["tokens_per_s"] for p in pairs)}
        ours = {"tokens_per_s": statistics.median(p[1]["tokens_per_s"] for p in pairs)}
        pair_ratios = [p[1]["tokens_per_s"] / p[0]["tokens_per_s"] for p in pairs]
        per_token = flops_per_token(h, gates)
        shares = [stretch_shares(p[1], per_token, cell, variant, h, "flops") for p in pairs]
        fused_shares = [
            stretch_shares(p[1], per_token, cell, variant, h, "fused_shape_flops") for p in pairs
        ]
        pair_rates = [
            statistics.median(reference_rates(m, cell, variant, h)["flops"] for m in p[1]["probes"])
            for p in pairs
        ]
        ratio = statistics.median(pair_ratios)
        # The rate the target asks for, as a share of the best product rates: above 1, no code
        # doing these products can meet it on this machine (the products alone take longer).
        target_needs = (
            statistics.median(
                target * p[0]["tokens_per_s"] * per_token / rate
                for p, rate in zip(pairs, pair_rates, strict=True)
            )
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
                "achieved_gflops": round(ours["tokens_per_s"] * per_token / 1e9, 1),
                "gemm_gflops": round(statistics.median(pair_rates) / 1e9, 1),
                "of_gemm": round(statistics.median(x for p in shares for x in p), 2),
                "pair_of_gemm": [round(statistics.median(p), 2) for p in shares],
                "of_fused_shape_gemm": round(
                    statistics.median(x for p in fused_shares for x in p), 2
                ),
                "target_needs_of_gemm": target_needs and round(target_needs, 2),
                "gemm_by_shape": pairs[-1][1]["probes"][-1]["gflops"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| run | chapter tok/s | ours tok/s | ratio | target | achieved GFLOP/s "
        "| GEMM GFLOP/s at its shapes | of GEMM [pairs] | of the fused shape's | target needs |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']}x"
        needs = r["target_needs_of_gemm"]
        print(
            f"| {r['run']} | {r['seed_tokens_per_s']:,} | {r['ours_tokens_per_s']:,} | "
            f"{r['ratio']}x {'ok' if r['ok'] else 'MISS'} | {target} | "
            f"{r['achieved_gflops']} | {r['gemm_gflops']} | {r['of_gemm']:.0%} "
            f"{[format(x, '.0%') for x in r['pair_of_gemm']]} | "
            f"{r['of_fused_shape_gemm']:.0%} | "
            f"{'-' if needs is None else format(needs, '.0%')} |"
        )
    print(
        f"\ntok/s: medians over {args.repeats} pair(s); ratio: the median of the pairs' own ratios;"
        " of GEMM: each timed stretch's tokens/s x FLOPs per token against the best library's"
        f" rate over one minibatch's products at their own shapes, measured in the same process"
        f" before and after it (stretches of {args.chunk or 'an epoch of'} minibatches; median"
        " over all stretches; in brackets each pair's);"
        " of the fused shape's: against batch x hidden x gates*hidden alone; target needs: the"
        " FLOP/s the target's tokens/s takes, as a share of the GEMM rate at its shapes"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
