"""The main job (`dvc repro`, the book's configuration) with `train.threads: 1` against the
default `train.threads: null` (every core), side by side in one invocation.

Each run is a fresh `git clone` of this checkout's HEAD (the working tree's uncommitted changes are
not in it: commit first) with the download cache seeded from ``../shared/corpora``, and runs
`dvc repro` from nothing; the runs alternate over ``--repeats`` pairs (default 1; each pair takes
~7 min on 2 cores). Reported: wall time of each run, the ratio, the core count, and whether every
stage output in the two dvc.lock files has the same hash. The dvclive metrics and plots and the report are left
out of that comparison: they hold tokens/s and seconds per epoch, which differ between any two
runs; the model directories (weights and run.json), vocabulary, splits and evaluations
must match byte for byte.

    .venv/bin/python benchmarks/main_job.py [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rnn.names import THREADS_ENV

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
BIN = Path(sys.executable).parent
# per-epoch timings, and the report's tokens/s and wall-time columns: differ between any two runs
TIMED_OUTPUTS = ("data/metrics/", "reports")


def clone_with_threads(dest: Path, threads: int | None) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["train"]["threads"] = threads
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    book = SHARED / "corpora" / "timemachine.txt"
    subprocess.run(
        [sys.executable, "-m", "rnn.cli", "fetch", "--from-file", str(book), "-w", str(dest)],
        cwd=dest,
        env=env,
        check=True,
        capture_output=True,
    )
    return dest


def repro(workdir: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    started = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], cwd=workdir, env=env, check=True)
    return time.perf_counter() - started


def output_hashes(workdir: Path) -> dict[str, str]:
    lock = yaml.safe_load((workdir / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5", "")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if not out["path"].startswith(TIMED_OUTPUTS)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    times: dict[str, list[float]] = {"threads: 1": [], "threads: null": []}
    same = True
    for i in range(args.repeats):
        order = [("threads: 1", 1), ("threads: null", None)]
        if i % 2:
            order.reverse()
        hashes = {}
        for label, threads in order:
            with tempfile.TemporaryDirectory(prefix="rnn-mainjob-") as tmp:
                work = clone_with_threads(Path(tmp) / "clone", threads)
                times[label].append(repro(work))
                hashes[label] = output_hashes(work)
                shutil.rmtree(work / ".dvc" / "cache", ignore_errors=True)
            print(f"pair {i + 1}: {label}: {times[label][-1]:.1f} s", flush=True)
        differ = sorted(
            k
            for k in hashes["threads: 1"]
            if hashes["threads: 1"][k] != hashes["threads: null"].get(k)
        )
        if differ:
            print(f"pair {i + 1}: outputs differ: {differ}", flush=True)
        same = same and not differ
    one, every = (statistics.median(times[k]) for k in ("threads: 1", "threads: null"))
    result = {
        "cores": cores,
        "repeats": args.repeats,
        "threads_1_s": round(one, 1),
        "threads_all_s": round(every, 1),
        "speedup": round(one / every, 3),
        "identical_outputs": same,
        "compared_outputs": sorted(hashes["threads: 1"]),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
