"""Benchmark the data stages (ingest -> vocabulary -> partition) against the book's pure-Python way.

What is measured
----------------
For each corpus size (default ~10, ~30 and ~100 MB, made by repeating
``../shared/corpora/tinyshakespeare.txt`` 9, 27 and 90 times into a temporary directory) and each
token type (``char``, ``word``), two pipelines run from the same text file to train/valid/test
``.npy`` files (contiguous 90/5/5 split):

* **ours**: ``rnn.data.corpus.ingest`` (d2l normalisation, Parquet) + ``rnn.data.vocab.build_vocab``
  (vocab.json + ids.npy) + ``rnn.data.partition.partition``;
* **book**: the chapter's code as written: ``f.readlines()``, ``re.sub('[^A-Za-z]+', ' ', line)
  .strip().lower()`` per line, tokens by list comprehension (chars: ``[ch for line in lines for ch
  in line]``; words: ``''.join(lines).split()``, the same text the char tokens come from),
  ``collections.Counter``, vocabulary sorted by frequency (``<unk>`` first), ids by
  ``[token_to_idx[t] for t in tokens]``, list slicing for the split and ``np.save(np.array(part))``.

Every run is a fresh subprocess, so its peak memory is its own. The child imports NumPy, PyArrow
and ``rnn`` first (both pipelines, so the baselines match), records its RSS (the baseline), runs the
pipeline timed with ``time.perf_counter`` and reports its wall time, its per-stage times, its peak
RSS and the peak above the baseline. The peak is ``VmHWM`` from ``/proc/self/status``, the
high-water mark of the child's own address space: ``ru_maxrss`` is not used because Linux carries
the parent's RSS at fork into the child's ``ru_maxrss`` across ``exec``. Ours and the book's run
alternately (the order flips for every pair) so that they share machine noise. After each pair the
outputs are compared: the vocabularies (size and token order) and the split arrays must be
identical, or the script exits with an error.

Reported per size and token type: seconds for ours and for the book's, the speed ratio
(book / ours, target >= 50x), our throughput in MB/s (input MB / our seconds, target >= 100 MB/s
for characters), our peak memory as a multiple of the corpus size, absolute and above the
baseline (target <= 4x), and a linearity check (seconds per MB at each size and t(largest) /
t(smallest), which should be close to the size ratio, ~10). 1 MB = 10**6 bytes.

Run from the repository root::

    .venv/bin/python benchmarks/bench_data.py                       # full run, a few minutes
    .venv/bin/python benchmarks/bench_data.py --sizes 10 --tokens char --repeats 3
    .venv/bin/python benchmarks/bench_data.py --json /tmp/bench_data.json
    .venv/bin/python benchmarks/bench_data.py --sizes 100 --profile  # cProfile of ours, no table

With ``--repeats N`` the time is the median of N runs and the memory the largest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
MB = 10**6
SPLITS = ("train", "valid", "test")
TARGET_SPEEDUP, TARGET_MBPS_CHAR, TARGET_MEM_X = 50.0, 100.0, 4.0
BOOK_MEM_WARN = 8 * 2**30


# --------------------------------------------------------------------------------------------
# Child side: one pipeline run in a fresh interpreter.
# --------------------------------------------------------------------------------------------


def _rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_ours(corpus: Path, token: str, out: Path) -> tuple[dict, dict]:
    from rnn.config import IngestConfig, PartitionConfig, VocabConfig
    from rnn.data.corpus import ingest
    from rnn.data.partition import partition
    from rnn.data.vocab import build_vocab

    t0 = time.perf_counter()
    ingest(IngestConfig(source=str(corpus), sha1=None, normalization="d2l"), out / "corpus.parquet")
    t1 = time.perf_counter()
    hwm = {"ingest": _rss_bytes("VmHWM")}
    vs = build_vocab(out / "corpus.parquet", VocabConfig(token=token), out / "vocab")
    t2 = time.perf_counter()
    hwm["vocab"] = _rss_bytes("VmHWM")
    ps = partition(
        out / "vocab" / "ids.npy",
        PartitionConfig(train=0.9, valid=0.05, test=0.05),
        out / "splits",
    )
    t3 = time.perf_counter()
    hwm["partition"] = _rss_bytes("VmHWM")
    stages = {"ingest": t1 - t0, "vocab": t2 - t1, "partition": t3 - t2}
    # The stage that first reached the run's peak RSS (the high-water mark only grows).
    peak_stage = next(k for k, v in hwm.items() if v == hwm["partition"])
    info = {"vocab_size": vs.size, "num_tokens": vs.num_tokens, "splits": ps.sizes}
    return stages, {**info, "peak_stage": peak_stage, "stage_hwm": hwm}


def run_book(corpus: Path, token: str, out: Path) -> tuple[dict, dict]:
    import collections
    import re

    import numpy as np

    t0 = time.perf_counter()
    with open(corpus) as f:
        lines = f.readlines()
    lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]
    t1 = time.perf_counter()
    # Chars: the book's nested comprehension; words: the same joined text, split on spaces.
    tokens = [ch for line in lines for ch in line] if token == "char" else "".join(lines).split()
    t2 = time.perf_counter()
    counter = collections.Counter(tokens)
    token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
    idx_to_token = ["<unk>"] + [t for t, _ in token_freqs]
    token_to_idx = {t: i for i, t in enumerate(idx_to_token)}
    t3 = time.perf_counter()
    corpus_ids = [token_to_idx[t] for t in tokens]
    t4 = time.perf_counter()
    n = len(corpus_ids)
    n_valid, n_test = int(n * 0.05), int(n * 0.05)
    n_train = n - n_valid - n_test
    parts = {
        "train": corpus_ids[:n_train],
        "valid": corpus_ids[n_train : n_train + n_valid],
        "test": corpus_ids[n_train + n_valid :],
    }
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        np.save(out / "splits" / f"{name}.npy", np.array(part))
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    (out / "vocab" / "vocab.json").write_text(json.dumps({"tokens": idx_to_token}))
    t5 = time.perf_counter()
    stages = {
        "read+clean": t1 - t0,
        "tokenize": t2 - t1,
        "count+vocab": t3 - t2,
        "encode": t4 - t3,
        "split+save": t5 - t4,
    }
    sizes = {k: len(v) for k, v in parts.items()}
    return stages, {"vocab_size": len(idx_to_token), "num_tokens": n, "splits": sizes}


def child_main(spec: dict) -> None:
    sys.path.insert(0, str(REPO))
    # Both pipelines import the same modules first, so their baselines are comparable.
    for module in ("numpy", "pyarrow.parquet", "rnn.config", "rnn.data.corpus", "rnn.data.vocab"):
        importlib.import_module(module)
    importlib.import_module("rnn.data.partition")

    baseline = _rss_bytes("VmRSS")
    run = run_ours if spec["pipeline"] == "ours" else run_book
    args = (Path(spec["corpus"]), spec["token"], Path(spec["out"]))
    if spec.get("profile"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(run, *args)
        print(
            f"# {spec['pipeline']} {spec['token']}: {time.perf_counter() - t0:.2f} s under cProfile"
        )
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
        return
    t0 = time.perf_counter()
    stages, info = run(*args)
    seconds = time.perf_counter() - t0
    peak = _rss_bytes("VmHWM")
    report = {"seconds": seconds, "stages": stages, "peak_rss": peak, "baseline_rss": baseline}
    print(json.dumps({**report, "peak_above_baseline": peak - baseline, **info}))


# --------------------------------------------------------------------------------------------
# Parent side: corpora, alternating runs, checks and the report.
# --------------------------------------------------------------------------------------------


def make_corpus(size_mb: float, tmp: Path) -> tuple[Path, int]:
    """Repeat the source a whole number of times (so the sizes are in exact proportion)."""
    text = SOURCE.read_bytes()
    copies = max(1, round(size_mb * MB / len(text)))
    path = tmp / f"corpus_{size_mb:g}mb.txt"
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(text)
    return path, copies * len(text)


def run_child(pipeline: str, corpus: Path, token: str, out: Path, profile: bool = False) -> dict:
    spec = {"pipeline": pipeline, "corpus": str(corpus), "token": token, "out": str(out)}
    spec["profile"] = profile
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"FAILED: {pipeline} {token} on {corpus.name} exited {proc.returncode}\n{proc.stderr}"
        )
    if profile:
        print(proc.stdout)
        return {}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def check_agree(ours: dict, book: dict, out_ours: Path, out_book: Path, label: str) -> None:
    import numpy as np

    problems = []
    for key in ("vocab_size", "num_tokens", "splits"):
        if ours[key] != book[key]:
            problems.append(f"{key}: ours {ours[key]} != book {book[key]}")
    t_ours = json.loads((out_ours / "vocab" / "vocab.json").read_text())["tokens"]
    t_book = json.loads((out_book / "vocab" / "vocab.json").read_text())["tokens"]
    if t_ours != t_book:
        first = next(
            (i for i, (a, b) in enumerate(zip(t_ours, t_book, strict=False)) if a != b), None
        )
        problems.append(f"vocabulary token lists differ (first at index {first})")
    for name in SPLITS:
        a = np.load(out_ours / "splits" / f"{name}.npy", mmap_mode="r")
        b = np.load(out_book / "splits" / f"{name}.npy", mmap_mode="r")
        # In blocks, so the parent stays small (its RSS would not leak into the children's
        # VmHWM, but it would compete with them for memory).
        step = 1 << 24
        same = a.shape == b.shape and all(
            np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.size, step)
        )
        del a, b
        if not same:
            problems.append(f"{name} split ids differ")
    if problems:
        sys.exit(f"FAILED: pipelines disagree on {label}:\n  " + "\n  ".join(problems))


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def fmt_mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def summarise(results: list[dict], sizes: list[float], tokens: list[str]) -> str:
    lines = [
        "| MB | tokens | ours s | book s | speed-up (>= 50x) | ours MB/s | ours peak RSS "
        "(x corpus) | ours above baseline (<= 4x) | book peak RSS (x corpus) | vocab | tokens |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mbps = r["mb"] / r["ours_s"]
        speed_ok = "ok" if r["speedup"] >= TARGET_SPEEDUP else "MISS"
        mbps_ok = (" ok" if mbps >= TARGET_MBPS_CHAR else " MISS") if r["token"] == "char" else ""
        mem_ok = "ok" if r["ours_above_x"] <= TARGET_MEM_X else "MISS"
        lines.append(
            f"| {r['mb']:.1f} | {r['token']} | {r['ours_s']:.2f} | {r['book_s']:.2f} | "
            f"{r['speedup']:.0f}x {speed_ok} | {mbps:.0f}{mbps_ok} | "
            f"{fmt_mib(r['ours_peak'])} ({r['ours_peak_x']:.2f}x) | "
            f"{fmt_mib(r['ours_above'])} ({r['ours_above_x']:.2f}x) {mem_ok} | "
            f"{fmt_mib(r['book_peak'])} ({r['book_peak_x']:.1f}x) | "
            f"{r['vocab_size']:,} | {r['num_tokens']:,} |"
        )
    lines += [
        "",
        "Linearity (seconds per MB; t(largest)/t(smallest) should be close to the size ratio):",
        "",
        "| tokens | pipeline | " + " | ".join(f"s/MB @ {s:.1f} MB" for s in sizes) + " | t ratio "
        "| size ratio |",
        "|---|---|" + "---:|" * (len(sizes) + 2),
    ]
    for token in tokens:
        rows = sorted((r for r in results if r["token"] == token), key=lambda r: r["mb"])
        if not rows:
            continue
        for pipe in ("ours", "book"):
            per_mb = " | ".join(f"{r[pipe + '_s'] / r['mb']:.4f}" for r in rows)
            t_ratio = rows[-1][pipe + "_s"] / rows[0][pipe + "_s"]
            size_ratio = rows[-1]["mb"] / rows[0]["mb"]
            lines.append(f"| {token} | {pipe} | {per_mb} | {t_ratio:.2f} | {size_ratio:.2f} |")
    lines += [
        "",
        "Where the time goes (seconds per stage, median run) and the stage where ours peaks:",
        "",
        "| MB | tokens | ingest | vocab | partition | ours peak in | book: read+clean | tokenize "
        "| count+vocab | encode | split+save |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        o, b = r["ours_stages"], r["book_stages"]
        lines.append(
            f"| {r['mb']:.1f} | {r['token']} | {o['ingest']:.2f} | {o['vocab']:.2f} | "
            f"{o['partition']:.2f} | {r['ours_peak_stage']} | {b['read+clean']:.2f} | {b['tokenize']:.2f} | "
            f"{b['count+vocab']:.2f} | {b['encode']:.2f} | {b['split+save']:.2f} |"
        )
    return "\n".join(lines)


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (lower median for an even count)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 30, 100], help="MB")
    parser.add_argument("--tokens", nargs="+", choices=["char", "word"], default=["char", "word"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of ours instead of timing"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    if not SOURCE.is_file():
        sys.exit(f"source corpus {SOURCE} not found")

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_", dir=tempfile.gettempdir()))
    results, raw = [], []
    try:
        for size in sorted(args.sizes):
            corpus, nbytes = make_corpus(size, tmp)
            mb = nbytes / MB
            for token in args.tokens:
                label = f"{mb:.1f} MB, {token}"
                if args.profile:
                    out = tmp / "profile"
                    print(f"## cProfile, ours, {label}")
                    run_child("ours", corpus, token, out, profile=True)
                    shutil.rmtree(out, ignore_errors=True)
                    continue
                # Extrapolate the book's memory from a smaller corpus before running it.
                smaller = [r for r in results if r["token"] == token]
                if smaller:
                    ref = max(smaller, key=lambda r: r["mb"])
                    estimate = (
                        ref["book_above"] * mb / ref["mb"] + ref["book_peak"] - ref["book_above"]
                    )
                    if estimate > BOOK_MEM_WARN:
                        print(f"  note: the book way needs about {fmt_mib(estimate)} at {label}")
                    if estimate > 0.9 * mem_available():
                        print(f"  skipped {label}: the book way would not fit in memory")
                        continue
                runs = {"ours": [], "book": []}
                for rep in range(args.repeats):
                    order = ("ours", "book") if rep % 2 == 0 else ("book", "ours")
                    outs = {p: tmp / f"out_{p}" for p in order}
                    for pipe in order:
                        runs[pipe].append(run_child(pipe, corpus, token, outs[pipe]))
                    check_agree(
                        runs["ours"][-1], runs["book"][-1], outs["ours"], outs["book"], label
                    )
                    for out in outs.values():
                        shutil.rmtree(out)
                    print(
                        f"  {label} rep {rep + 1}: ours {runs['ours'][-1]['seconds']:.2f} s, "
                        f"book {runs['book'][-1]['seconds']:.2f} s",
                        flush=True,
                    )
                ours, book = median_run(runs["ours"]), median_run(runs["book"])
                ours_s, book_s = ours["seconds"], book["seconds"]
                ours_peak = max(r["peak_rss"] for r in runs["ours"])
                ours_above = max(r["peak_above_baseline"] for r in runs["ours"])
                book_peak = max(r["peak_rss"] for r in runs["book"])
                book_above = max(r["peak_above_baseline"] for r in runs["book"])
                results.append(
                    {
                        "mb": mb,
                        "bytes": nbytes,
                        "token": token,
                        "ours_s": ours_s,
                        "book_s": book_s,
                        "speedup": book_s / ours_s,
                        "ours_mb_per_s": mb / ours_s,
                        "ours_peak": ours_peak,
                        "ours_peak_x": ours_peak / nbytes,
                        "ours_above": ours_above,
                        "ours_above_x": ours_above / nbytes,
                        "book_peak": book_peak,
                        "book_peak_x": book_peak / nbytes,
                        "book_above": book_above,
                        "book_above_x": book_above / nbytes,
                        "ours_stages": ours["stages"],
                        "ours_peak_stage": max(runs["ours"], key=lambda r: r["peak_rss"])[
                            "peak_stage"
                        ],
                        "book_stages": book["stages"],
                        "vocab_size": ours["vocab_size"],
                        "num_tokens": ours["num_tokens"],
                    }
                )
                raw.append({"mb": mb, "token": token, "runs": runs})
            corpus.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.profile:
        return

    table = summarise(results, sorted({r["mb"] for r in results}), args.tokens)
    print()
    print(
        f"Data stages, ours vs the book's pure Python; {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, repeats={args.repeats} (median time, max memory)"
    )
    print("Agreement: vocabularies and train/valid/test ids identical for every run.")
    print()
    print(table)
    if args.json:
        payload = {
            "source": str(SOURCE),
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "python": sys.version,
            "targets": {
                "speedup": TARGET_SPEEDUP,
                "char_mb_per_s": TARGET_MBPS_CHAR,
                "peak_mem_x_corpus": TARGET_MEM_X,
            },
            "results": results,
            "raw": raw,
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
