"""Upper bounds on the two speed targets this machine does not meet, measured beside the chapter's
code in one invocation, so that "out of reach" is a figure rather than an opinion.

``torch-concise`` (target: our tokens/s >= 2x the chapter's). The concise model must be
``nn.RNN`` + ``nn.Linear``, so no engine can be faster than ``nn.RNN``'s own forward and backward
pass. Each pair runs ``../shared/bench/seed_baseline.py ... torch concise 1 --hiddens 256`` (the
chapter's whole training loop, tokens/s over one epoch, as ``throughput.py`` measures it) and, in
another fresh process, only ``nn.RNN``'s forward and backward over the same epoch's minibatches:
same shapes and default threads, one-hot input prepared in advance, the gradient of a sum fed in,
a warm-up epoch first, and glibc told to keep freed memory as our engine does
(``rnn.backends.malloc``). Nothing else of a training step is done, so their ratio is the most any training
loop around PyTorch's ``nn.RNN`` could gain on this machine.

``data`` (target: ingest + vocabulary + partition >= 50x the book's pure Python). Each pair runs
the book's pipeline (``bench_data.py``'s ``run_book``) and a child that times, one by one on one
thread, a deliberately generous floor built from the passes our libraries offer: read the source,
one ``bytes.translate`` (less than the d2l cleaning does), the SHA-256 the provenance must record,
write the cleaned text, encode it (one translate for characters; Arrow's ``split_pattern`` and
``dictionary_encode``, row by row, for words) and write the ids. Counting, the Parquet format and
the split files are left out, and the sum is divided by the core count (perfect parallelism). A
fused native loop could beat it; code built from NumPy, hashlib and Arrow cannot.

    .venv/bin/python benchmarks/bounds.py [--part torch-concise|data] [--repeats 3] [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SEED_BASELINE, TIME_MACHINE, pair

HIDDENS, BATCH, STEPS = 256, 32, 35

RNN_ONLY = r"""
import importlib.util, json, time, random, sys, torch
sys.path.insert(0, {root!r})
from rnn.backends.malloc import keep_freed_memory
keep_freed_memory()
from torch import nn
from torch.nn import functional as F
spec = importlib.util.spec_from_file_location("seed", {seed!r})
seed = importlib.util.module_from_spec(spec); spec.loader.exec_module(seed)
corpus, vocab = seed.load_corpus({corpus!r})
V = len(vocab)
torch.manual_seed(0)
rnn = nn.RNN(V, {h})
# The chapter's minibatches, one-hot and time-major, made before the clock starts.
xs = [F.one_hot(torch.tensor(X).T.long(), V).to(torch.float32)
      for X, _ in seed.seq_data_iter_sequential(corpus, {b}, {t}, random.Random(0))]
state = torch.zeros((1, {b}, {h}))
def epoch(state):
    for x in xs:
        out, state = rnn(x, state.detach())
        out.sum().backward()  # the recurrence's whole backward pass; nothing else of a step
        for p in rnn.parameters():
            p.grad = None
    return state
state = epoch(state)  # warm-up
t0 = time.perf_counter(); epoch(state); seconds = time.perf_counter() - t0
print(json.dumps({{"tokens_per_s": len(xs) * {b} * {t} / seconds}}))
"""


def torch_concise(repeats: int) -> dict:
    chapter = [sys.executable, str(SEED_BASELINE), str(TIME_MACHINE), "torch", "concise", "1"]
    chapter += ["--hiddens", str(HIDDENS)]
    rnn_only = [
        sys.executable,
        "-c",
        RNN_ONLY.format(
            root=str(ROOT),
            seed=str(SEED_BASELINE),
            corpus=str(TIME_MACHINE),
            h=HIDDENS,
            b=BATCH,
            t=STEPS,
        ),
    ]
    pairs = [pair(chapter, rnn_only, flip=i % 2 == 1) for i in range(repeats)]
    bounds = [r["tokens_per_s"] / c["tokens_per_s"] for c, r in pairs]
    return {
        "part": "torch-concise",
        "chapter_tokens_per_s": round(statistics.median(c["tokens_per_s"] for c, _ in pairs)),
        "nn_rnn_only_tokens_per_s": round(statistics.median(r["tokens_per_s"] for _, r in pairs)),
        "pair_bounds": [round(b, 2) for b in bounds],
        "bound": round(statistics.median(bounds), 2),
        "target": 2.0,
    }


FLOOR = r"""
import hashlib, json, os, sys, tempfile, time
import numpy as np, pyarrow as pa, pyarrow.compute as pc
src, token = sys.argv[1], sys.argv[2]
table = bytes(range(256))  # any byte -> byte map costs the same
times = {}
def timed(name, fn):
    t0 = time.perf_counter(); r = fn(); times[name] = time.perf_counter() - t0; return r
def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
with tempfile.TemporaryDirectory() as tmp:
    data = timed("read source", lambda: open(src, "rb").read())
    clean = timed("clean (one translate)", lambda: data.translate(table))
    timed("hash (provenance)", lambda: hashlib.sha256(clean).digest())
    timed("write corpus", lambda: write(os.path.join(tmp, "corpus"), clean))
    if token == "word":
        def words():
            row, ids = 1 << 21, []  # rnn.data.corpus.ROW_BYTES
            for i in range(0, len(clean), row):
                chunk = memoryview(clean)[i : i + row]  # no copy, as in rnn.data.vocab
                offsets = pa.py_buffer(np.array([0, len(chunk)], np.int32))
                piece = pa.StringArray.from_buffers(1, offsets, pa.py_buffer(chunk))
                flat = pc.list_flatten(pc.split_pattern(piece, " "))
                ids.append(pc.dictionary_encode(flat).indices.to_numpy())
            return ids
        ids = timed("split + dictionary-encode", words)
        encoded = np.concatenate(ids).astype(np.uint16).tobytes()  # untimed: generous
    else:
        encoded = timed("encode (one translate)", lambda: clean.translate(table))
    timed("write ids", lambda: write(os.path.join(tmp, "ids"), encoded))
cpus = len(os.sched_getaffinity(0))
print(json.dumps({"passes": times, "cpu_s": sum(times.values()), "cpus": cpus,
                  "seconds": sum(times.values()) / cpus}))
"""


def data(repeats: int, mb: float) -> list[dict]:
    import bench_data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus, size = bench_data.make_corpus(mb, Path(tmp))
        for token in ("char", "word"):
            spec = {"pipeline": "book", "corpus": str(corpus), "token": token}
            book = [sys.executable, bench_data.__file__, "--child"]
            floor = [sys.executable, "-c", FLOOR, str(corpus), token]
            pairs = []
            for i in range(repeats):
                spec["out"] = str(Path(tmp) / f"book-{token}-{i}")
                pairs.append(pair([*book, json.dumps(spec)], floor, flip=i % 2 == 1))
            book_s = statistics.median(b["seconds"] for b, _ in pairs)
            floor_s = statistics.median(f["seconds"] for _, f in pairs)
            passes = {
                name: statistics.median(f["passes"][name] for _, f in pairs)
                for name in pairs[0][1]["passes"]
            }
            rows.append(
                {
                    "part": "data",
                    "token": token,
                    "mb": round(size / 1e6, 1),
                    "book_s": round(book_s, 2),
                    "budget_s_at_50x": round(book_s / 50, 3),
                    "floor_s": round(floor_s, 3),
                    "cpus": pairs[0][1]["cpus"],
                    "passes_ms": {k: round(v * 1e3, 1) for k, v in passes.items()},
                    "bound": round(book_s / floor_s, 1),
                    "target": 50.0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--part", choices=["torch-concise", "data"], nargs="*", default=["torch-concise", "data"]
    )
    ap.add_argument("--repeats", type=lambda v: max(1, int(v)), default=3)
    ap.add_argument("--mb", type=float, default=100.0, help="data corpus size (MB)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    if "torch-concise" in args.part:
        rows.append(torch_concise(args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    if "data" in args.part:
        rows += data(args.repeats, args.mb)
    print("\n| target | chapter | bound (no faster code can reach) | target ratio |")
    print("| --- | --- | ---: | ---: |")
    for r in rows:
        if r["part"] == "torch-concise":
            print(
                f"| torch concise tok/s | {r['chapter_tokens_per_s']:,} tok/s | "
                f"{r['bound']}x (nn.RNN alone: {r['nn_rnn_only_tokens_per_s']:,} tok/s) | 2x |"
            )
        else:
            print(
                f"| data stages, {r['token']}, {r['mb']} MB | {r['book_s']} s | {r['bound']}x "
                f"(floor {r['floor_s']} s on {r['cpus']} cores) | 50x |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
