"""Held-out quality against wall time: one run of a configuration (default
``params-shakespeare.yaml``: tinyshakespeare, raw text, 90/5/5 contiguous split) trained through
the pipeline's own stage functions, printing after every epoch the cumulative training time, the
validation loss in nats per token, and the learning rate; at the end, the test loss of the
model the run keeps, and whether the targets hold: validation loss <= 1.50 nats within 120 s of
training and <= 1.42 within 600 s (``--targets``).

Training time is the sum of the epochs' own times (what ``train/epoch_seconds`` records); the
validation pass after each epoch is reported apart. Epochs of a run all do the same work, so the
spread of their tokens/s says how noisy the machine was during the measurement.

    .venv/bin/python benchmarks/heldout.py [--params params-shakespeare.yaml] [--epochs N]
        [--set train.lr=0.003 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, SHARED
from rnn import stages
from rnn.config import validate_params
from rnn.registry import RunKey
from rnn.workspace import Workspace

DEFAULT_TARGETS = ((120.0, 1.50), (600.0, 1.42))


def parse_value(text: str):
    return yaml.safe_load(text)


def apply_sets(raw: dict, sets: list[str]) -> dict:
    """``section.key=value`` overrides, as `dvc exp run -S` takes them."""
    for item in sets:
        path, value = item.split("=", 1)
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = parse_value(value)
    return raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params-shakespeare.yaml")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--set", action="append", default=[], help="section.key=value")
    ap.add_argument(
        "--targets",
        default=",".join(f"{s:g}:{loss:g}" for s, loss in DEFAULT_TARGETS),
        help="seconds:nats pairs",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    raw = yaml.safe_load(args.params.read_text())
    source = raw["ingest"]["source"]
    if not Path(source).is_absolute():  # the configuration names ../shared/corpora/...
        raw["ingest"]["source"] = str(SHARED / "corpora" / Path(source).name)
    if args.epochs:
        raw["train"]["epochs"] = args.epochs
    params = validate_params(apply_sets(raw, args.set), str(args.params))
    run = RunKey(params.train.backends[0], params.train.variants[0], params.train.models[0])
    targets = [tuple(float(x) for x in t.split(":")) for t in args.targets.split(",")]
    rows: list[dict] = []
    trained_s = [0.0]
    started = time.perf_counter()

    def on_epoch(name: str, row: dict, total: int) -> None:
        trained_s[0] += row["train/epoch_seconds"]
        entry = {
            "epoch": row["epoch"],
            "train_s": round(trained_s[0], 1),
            "wall_s": round(time.perf_counter() - started, 1),
            "valid_loss": round(math.log(row["valid/perplexity"]), 4),
            "train_loss": round(math.log(row["train/perplexity"]), 4),
            "tokens_per_s": round(row["train/tokens_per_s"]),
            "lr": row["train/lr"],
        }
        rows.append(entry)
        print(json.dumps(entry), flush=True)

    with tempfile.TemporaryDirectory(prefix="rnn-heldout-") as tmp:
        ws = Workspace.at(tmp)
        for stage in (stages.ingest_stage, stages.vocab_stage, stages.partition_stage):
            stage(ws, params)
        print(
            f"data ready in {time.perf_counter() - started:.1f} s; training {run.name}", flush=True
        )
        started = time.perf_counter()
        summary = stages.train_stage(ws, params, run, progress=False, on_epoch=on_epoch)
        evaluation = stages.evaluate_stage(ws, params, run)
    rates = [r["tokens_per_s"] for r in rows]
    result = {
        "run": run.name,
        "params": args.params.name,
        "sets": args.set,
        "model": params.model(run.model).model_dump(),
        "num_params": summary.num_params,
        "epochs": rows,
        "test_loss": round(math.log(evaluation.perplexity["test"]), 4),
        "kept_valid_loss": round(math.log(evaluation.perplexity["valid"]), 4),
        "tokens_per_s": {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        },
        "targets": [],
        "sample": next(iter(evaluation.sampled.values()), ""),
    }
    for seconds, nats in targets:
        within = [r["valid_loss"] for r in rows if r["train_s"] <= seconds]
        best = min(within) if within else None
        result["targets"].append(
            {
                "seconds": seconds,
                "nats": nats,
                "best_valid_loss": best,
                "ok": best is not None and best <= nats,
            }
        )
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
