"""Reproduce the book's table (CPU): 500 epochs on the first 10,000 characters, batch 32 x 35
steps, lr 1, theta 1; scratch with 512 hidden units, concise with 256; plus scratch with random
sampling. Each run must end no worse than the book's training perplexity + 0.1.

    python benchmarks/book_table.py [--epochs 500] [--runs torch-scratch ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import prepare_data

from rnn.config import Params, PartitionConfig, TrainConfig
from rnn.registry import RunKey
from rnn.training.loop import train_model

# (backend, variant, sampling) -> the book's printed training perplexity (upper end of its range).
BOOK = {
    ("torch", "scratch", "sequential"): 1.0,
    ("torch", "concise", "sequential"): 1.4,
    ("tf", "scratch", "sequential"): 1.0,
    ("tf", "concise", "sequential"): 1.4,
    ("torch", "scratch", "random"): 1.5,
    ("tf", "scratch", "random"): 1.5,
}
TOLERANCE = 0.1


def run_name(key: tuple[str, str, str]) -> str:
    backend, variant, sampling = key
    return f"{backend}-{variant}" + ("-random" if sampling == "random" else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--runs", nargs="*", default=[run_name(k) for k in BOOK])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for key, book_ppl in BOOK.items():
            name = run_name(key)
            if name not in args.runs:
                continue
            backend, variant, sampling = key
            pcfg = PartitionConfig(max_tokens=10_000, sampling=sampling)
            vocab_dir, part_dir = prepare_data(work / sampling, pcfg)
            params = Params(
                partition=pcfg, train=TrainConfig(epochs=args.epochs, checkpoint_every=0)
            )
            s = train_model(
                RunKey(backend, variant, "rnn"),
                params,
                part_dir,
                vocab_dir,
                work / "m" / name,
                work / "metrics" / name,
                work / "ckpt" / name,
                progress=False,
            )
            ok = s.train_perplexity <= book_ppl + TOLERANCE
            row = {
                "run": name,
                "perplexity": round(s.train_perplexity, 3),
                "book": book_ppl,
                "limit": book_ppl + TOLERANCE,
                "ok": ok,
                "wall_time_s": round(s.wall_time_s, 1),
                "tokens_per_s": round(s.tokens_per_s),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| run | training perplexity | book | limit | ok | wall time (s) | tokens/s |")
    print("| --- | ---: | ---: | ---: | :-: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['run']} | {r['perplexity']:.3f} | {r['book']} | {r['limit']:.1f} | "
            f"{'yes' if r['ok'] else 'NO'} | {r['wall_time_s']} | {r['tokens_per_s']:,} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
