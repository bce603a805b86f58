"""Orchestration overhead: the pipeline as a Prefect flow run vs the same stage functions called
directly, and a `dvc repro` that has nothing to do.

What is measured
----------------
(a) **Flow vs direct.** A temporary copy of the working tree (``git ls-files -co
--exclude-standard``) with the tests' tiny parameters (3,000 tokens, 2 epochs, 16 hidden units;
the same as ``tests/e2e/test_flows.py::tiny_params``). The copy is **not** a DVC repository (its
``.dvc/`` is removed), so the flow runs every stage and does not call DVC. Every measurement is a
fresh subprocess with the copy as working directory and first on ``PYTHONPATH``, and starts from
no outputs (``data/`` and ``reports/`` deleted):

* ``direct``: ``rnn.data.corpus.ingest``, ``rnn.data.vocab.build_vocab``, ``rnn.data.partition.partition``,
  ``rnn.stages``' train for each backend x variant x model, evaluate for each, report, in that order,
  in one thread;
* ``flow``: ``flows.pipeline.pipeline()`` against a Prefect server started once for the
  benchmark with ``prefect server start`` (SQLite, private ``PREFECT_HOME``; its startup is
  reported, not counted), with the thread pool limited to one worker
  (``PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS=1``), so the stages run one at a time as in
  ``direct`` and the difference is orchestration alone;
* ``flow, concurrent`` (unless ``--no-concurrent``): the same with Prefect's default thread pool,
  i.e. the four trainings (then evaluations) side by side, as a deployment runs it.

Each flow measurement gets a fresh, empty ``PREFECT_LOCAL_STORAGE_PATH``, so no task is served
from the content cache. The modes alternate (the order rotates every repeat) so that they share
machine noise; figures are medians over ``--repeats`` (default 3). Reported per mode: the
subprocess's wall time (interpreter start, imports, the run), the time of the imports the child
needs before running (``flows.pipeline`` imports Prefect; ``direct`` imports the stage modules)
and the run itself; the overhead is flow minus direct, for the whole subprocess (target < 5 s)
and for the run alone.

(b) **No-op `dvc repro`.** A second copy made a git repository (``git init`` + commit) and a DVC
repository (its ``.dvc/config`` is in the tree), one ``dvc repro`` to produce everything, then
``--repeats`` timed ``dvc repro`` calls that must not run any stage (target < 3 s each, median
reported; ``dvc status`` is timed alongside).

Run from the repository root::

    .venv/bin/python benchmarks/bench_orchestration.py                  # both parts, ~3 min
    .venv/bin/python benchmarks/bench_orchestration.py --repeats 5 --json /tmp/orch.json
    .venv/bin/python benchmarks/bench_orchestration.py --part dvc       # (b) only
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
TIME_MACHINE = SHARED / "corpora" / "timemachine.txt"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from pool.checkout import copy_project, tiny_params  # noqa: E402
from pool.processes import spawn_logged, stop, wait_healthy  # noqa: E402
from rnn.ports import free_port  # noqa: E402

TARGET_FLOW_EXTRA_S, TARGET_DVC_NOOP_S = 5.0, 3.0

DIRECT_CHILD = """
import json, time
from pathlib import Path
t0 = time.perf_counter()
from rnn import stages
from rnn.config import load_params
from rnn.registry import grid
from rnn.workspace import Workspace
t1 = time.perf_counter()
ws = Workspace.at(Path.cwd())
p = load_params(ws.params_file)
runs = grid(p.train.backends, p.train.variants, p.train.models)
stages.ingest_stage(ws, p)
stages.vocab_stage(ws, p)
stages.partition_stage(ws, p)
for run in runs:
    stages.train_stage(ws, p, run, progress=False)
for run in runs:
    stages.evaluate_stage(ws, p, run)
stages.report_stage(ws, runs)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "run_s": t2 - t1, "runs": len(runs)}))
"""

FLOW_CHILD = """
import json, time
t0 = time.perf_counter()
from flows.pipeline import pipeline
t1 = time.perf_counter()
state = pipeline("params.yaml", return_state=True)
t2 = time.perf_counter()
assert state.is_completed(), state
result = state.result()
print("RESULT " + json.dumps({"import_s": t1 - t0, "run_s": t2 - t1, "runs": len(result["runs"])}))
"""


def base_env(tmp: Path) -> dict[str, str]:
    """No PREFECT_* from this environment; offline, private homes, venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_CLI_PROMPT="false",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
    )
    return env


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------------------------
# (a) flow vs direct
# --------------------------------------------------------------------------------------------


def start_server(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = tmp / "server.log"
    t0 = time.perf_counter()
    server = spawn_logged(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        tmp,
        env,
        log,
    )
    try:
        wait_healthy(url, server, log, timeout=90)
    except RuntimeError as err:
        stop(server)
        raise SystemExit(str(err)) from None
    return server, url, time.perf_counter() - t0


def run_child(mode: str, repo: Path, tmp: Path, env: dict[str, str], i: int) -> dict:
    for out in ("data", "reports"):
        shutil.rmtree(repo / out, ignore_errors=True)
    child_env = {**env, "PYTHONPATH": str(repo)}
    if mode.startswith("flow"):
        kind = "concurrent" if "concurrent" in mode else "serial"
        store = tmp / f"storage-{kind}-{i}"  # empty: no cached task results
        child_env["PREFECT_LOCAL_STORAGE_PATH"] = str(store)
        if mode == "flow":
            child_env["PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS"] = "1"
    code = DIRECT_CHILD if mode == "direct" else FLOW_CHILD
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=child_env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT "))
    rec = {"mode": mode, "wall_s": wall, **json.loads(line[len("RESULT ") :])}
    if rec["runs"] != 4 or not (repo / "reports" / "report.md").is_file():
        raise SystemExit(f"{mode} run did not produce the four runs and the report: {rec}")
    return rec


def bench_flow(tmp: Path, repeats: int, concurrent: bool) -> dict:
    repo = copy_project(tmp / "repo-flow", tiny_params(TIME_MACHINE), git=False)
    shutil.rmtree(repo / ".dvc", ignore_errors=True)  # not a DVC repository: the flow runs all
    env = base_env(tmp)
    server, url, startup = start_server(tmp, env)
    env.update(PREFECT_API_URL=url)
    modes = ["direct", "flow"] + (["flow, concurrent"] if concurrent else [])
    records: list[dict] = []
    try:
        for i in range(repeats):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for mode in order:
                rec = run_child(mode, repo, tmp, env, i)
                print(
                    f"  {mode:<17} repeat {i + 1}: {rec['wall_s']:.2f} s "
                    f"(imports {rec['import_s']:.2f} s, run {rec['run_s']:.2f} s)",
                    file=sys.stderr,
                )
                records.append(rec)
    finally:
        stop(server)
    summary = {
        m: {
            k: median([r[k] for r in records if r["mode"] == m])
            for k in ("wall_s", "import_s", "run_s")
        }
        for m in modes
    }
    return {
        "server": "prefect server start (SQLite), started once",
        "server_startup_s": startup,
        "repeats": repeats,
        "median": summary,
        "extra_wall_s": summary["flow"]["wall_s"] - summary["direct"]["wall_s"],
        "extra_run_s": summary["flow"]["run_s"] - summary["direct"]["run_s"],
        "runs": records,
    }


# --------------------------------------------------------------------------------------------
# (b) no-op dvc repro
# --------------------------------------------------------------------------------------------


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def bench_dvc(tmp: Path, repeats: int) -> dict:
    repo = copy_project(tmp / "repo-dvc", tiny_params(TIME_MACHINE))
    env = base_env(tmp)
    first, out = timed(["dvc", "repro"], repo, env)
    if "Running stage 'report'" not in out:
        raise SystemExit(f"the first dvc repro did not run the pipeline:\n{out[-2000:]}")
    noop, status = [], []
    for _ in range(repeats):
        wall, out = timed(["dvc", "repro"], repo, env)
        if "Running stage" in out:
            raise SystemExit(f"dvc repro was not a no-op:\n{out[-2000:]}")
        noop.append(wall)
        wall, out = timed(["dvc", "status", "--json"], repo, env)
        if out.strip() not in ("{}", ""):
            raise SystemExit(f"dvc status not clean: {out[-2000:]}")
        status.append(wall)
    return {
        "first_repro_s": first,
        "repeats": repeats,
        "noop_repro_s": noop,
        "status_s": status,
        "median_noop_repro_s": median(noop),
        "median_status_s": median(status),
    }


# --------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def print_tables(res: dict) -> None:
    if "flow" in res:
        f = res["flow"]
        print(
            f"\n### (a) Tiny pipeline (4 runs), flow vs direct, median of {f['repeats']} "
            f"(server: {f['server']}; startup {f['server_startup_s']:.1f} s, not counted; "
            "not a DVC repo)\n"
        )
        print("| mode | subprocess wall (s) | imports (s) | run (s) |")
        print("| --- | --- | --- | --- |")
        for mode, m in f["median"].items():
            print(f"| {mode} | {m['wall_s']:.2f} | {m['import_s']:.2f} | {m['run_s']:.2f} |")
        ok = f["extra_wall_s"] < TARGET_FLOW_EXTRA_S
        print(
            f"\nFlow overhead (flow, one thread, minus direct): **{f['extra_wall_s']:+.2f} s** "
            f"per subprocess, {f['extra_run_s']:+.2f} s in the run itself; "
            f"target < {TARGET_FLOW_EXTRA_S:.0f} s: {verdict(ok)}"
        )
    if "dvc" in res:
        d = res["dvc"]
        ok = d["median_noop_repro_s"] < TARGET_DVC_NOOP_S
        print(f"\n### (b) No-op `dvc repro` (tiny params, git + DVC copy), {d['repeats']} runs\n")
        print("| command | median (s) | min (s) | max (s) | target |")
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| `dvc repro` (nothing to do) | {d['median_noop_repro_s']:.2f} | "
            f"{min(d['noop_repro_s']):.2f} | {max(d['noop_repro_s']):.2f} | "
            f"< {TARGET_DVC_NOOP_S:.0f} s: {verdict(ok)} |"
        )
        print(
            f"| `dvc status --json` | {d['median_status_s']:.2f} | {min(d['status_s']):.2f} | "
            f"{max(d['status_s']):.2f} | |"
        )
        print(f"| first `dvc repro` (everything, not a target) | {d['first_repro_s']:.2f} | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="measurements per mode (median)")
    ap.add_argument("--part", choices=("all", "flow", "dvc"), default="all")
    ap.add_argument(
        "--no-concurrent",
        action="store_true",
        help="skip the flow with Prefect's default (concurrent) thread pool",
    )
    ap.add_argument("--json", type=Path, help="write every measurement to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if not TIME_MACHINE.is_file():
        raise SystemExit(f"corpus not found: {TIME_MACHINE} (set RNN_SHARED)")

    tmp = Path(tempfile.mkdtemp(prefix="rnn-bench-orch-"))
    res: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        if args.part in ("all", "flow"):
            print("(a) flow vs direct ...", file=sys.stderr)
            res["flow"] = bench_flow(tmp / "a", args.repeats, not args.no_concurrent)
        if args.part in ("all", "dvc"):
            print("(b) no-op dvc repro ...", file=sys.stderr)
            res["dvc"] = bench_dvc(tmp / "b", args.repeats)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_tables(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
