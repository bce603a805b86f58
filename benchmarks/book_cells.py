"""The book's comparison of cells (``params-book-cells.yaml``: RNN, GRU, LSTM and a 2-layer GRU,
each in PyTorch and TensorFlow, scratch and concise; 500 epochs on the first 10,000 characters,
batch 32 x 35, SGD lr 1, theta 1), trained through the pipeline's stage functions one run after
another; prints each run's final training perplexity and wall time, and fails unless every run
ends at or below ``--limit`` (1.2).

    .venv/bin/python benchmarks/book_cells.py [--epochs 500] [--runs torch-scratch-gru ...]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, TIME_MACHINE
from rnn import stages
from rnn.config import validate_params
from rnn.registry import grid
from rnn.workspace import Workspace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params-book-cells.yaml")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--limit", type=float, default=1.2)
    ap.add_argument("--runs", nargs="*", help="run names (default: the whole grid)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    raw = yaml.safe_load(args.params.read_text())
    raw["ingest"].update(source=str(TIME_MACHINE), sha1=None, sha256=None)
    if args.epochs:
        raw["train"]["epochs"] = args.epochs
    params = validate_params(raw, str(args.params))
    runs = grid(params.train.backends, params.train.variants, params.train.models)
    runs = [r for r in runs if not args.runs or r.name in args.runs]
    results = []
    with tempfile.TemporaryDirectory(prefix="rnn-bookcells-") as tmp:
        ws = Workspace.at(tmp)
        for stage in (stages.ingest_stage, stages.vocab_stage, stages.partition_stage):
            stage(ws, params)
        for run in runs:
            started = time.perf_counter()
            s = stages.train_stage(ws, params, run, progress=False)
            arch = params.model(run.model)
            row = {
                "run": run.name,
                "model": f"{arch.cell}, {arch.num_layers} x {arch.hiddens(run.variant)}",
                "perplexity": round(s.train_perplexity, 3),
                "ok": s.train_perplexity <= args.limit,
                "train_s": round(s.wall_time_s, 1),
                "wall_s": round(time.perf_counter() - started, 1),
                "tokens_per_s": round(s.tokens_per_s),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| run | model | training perplexity | <= {args.limit} | training (s) | tokens/s |")
    print("| --- | --- | ---: | :-: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['run']} | {r['model']} | {r['perplexity']:.3f} | {'yes' if r['ok'] else 'NO'} "
            f"| {r['train_s']} | {r['tokens_per_s']:,} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
