"""Serving speed: `rnn serve` (onnxruntime behind FastAPI/uvicorn) against `rnn generate` (the
engines' per-token loop in PyTorch or TensorFlow), measured in one invocation.

Models: the book's four runs (RNN, 512 hidden units from scratch, 256 concise, 28 characters) and
the tinyshakespeare GRU (`params-shakespeare.yaml`: 2 layers of 384, 65 characters, PyTorch from scratch), each
trained for one epoch on a slice of its corpus: generation speed depends on the shapes, not on what
the weights learnt.

Reported per model:
- `rnn generate`: its start (process, imports, loading) and its characters per second once it
  writes (from two lengths: rate = extra characters / extra time);
- one stream: characters per second of the exported model in this process (`OnnxModel`), and of
  one HTTP stream from `rnn serve` (2,000 characters, timed from the request to the last byte);
- requests per second and p50/p99 latency of 100-character generations at 1, 8 and 32 concurrent
  clients (asyncio, httpx) for ``--seconds`` each.

    .venv/bin/python benchmarks/serving.py [--seconds 8] [--json out.json] [--only book|gru]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RNN_SHARED", ROOT.parent / "shared"))
BOOK_RUNS = [("torch", "scratch"), ("torch", "concise"), ("tf", "scratch"), ("tf", "concise")]
STREAM_CHARS, REQUEST_CHARS, CLIENTS = 2000, 100, (1, 8, 32)


def rnn(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip


def workspace(base: Path, name: str, params: dict, runs: list[tuple[str, str, str]]) -> Path:
    ws = base / name
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("ingest", "vocab", "partition"):
        rnn(ws, stage)
    for backend, variant, model in runs:
        rnn(ws, "train", "-b", backend, "-v", variant, "-m", model)
    return ws


def book_workspace(base: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source=str(SHARED / "corpora/timemachine.txt"), sha1=None)
    params["train"].update(epochs=1, checkpoint_every=0)
    return workspace(base, "book", params, [(b, v, "rnn") for b, v in BOOK_RUNS])


def shakespeare_workspace(base: Path) -> Path:
    params = yaml.safe_load((ROOT / "params-shakespeare.yaml").read_text())
    params["ingest"].update(source=str(SHARED / "corpora/tinyshakespeare.txt"), sha1=None)
    params["partition"]["max_tokens"] = 30_000
    params["train"].update(epochs=1, checkpoint_every=0, backends=["torch"],
                           keep_best=False, early_stop_patience=0)  # fmt: skip
    return workspace(base, "shakespeare", params, [("torch", "scratch", "gru")])


def prefix_of(ws: Path) -> str:
    return "ROMEO" if "shakespeare" in ws.name else "time traveller"


def rnn_generate_rate(ws: Path, backend: str, variant: str, model: str) -> dict:
    """`rnn generate`'s start and its characters per second once it writes."""
    args = ["generate", "-b", backend, "-v", variant, "-m", model, "--prefix", prefix_of(ws)]
    times = {}
    for n in (100, 100 + STREAM_CHARS):
        start = time.perf_counter()
        rnn(ws, *args, "--num-preds", str(n))
        times[n] = time.perf_counter() - start
    rate = STREAM_CHARS / (times[100 + STREAM_CHARS] - times[100])
    return {"chars_per_s": rate, "start_s": times[100] - 100 / rate}


def in_process_rate(export: Path, prefix: str) -> float:
    from rnn.serving.runtime import OnnxModel

    model = OnnxModel(export)
    start = time.perf_counter()
    text = "".join(model.stream_text(prefix, STREAM_CHARS))
    return (len(text) - len(prefix)) / (time.perf_counter() - start)


def http_stream_rate(url: str, name: str, prefix: str) -> float:
    body = {"model": name, "prefix": prefix, "length": STREAM_CHARS}
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/generate", json={**body, "length": 10})  # a warm connection
        start, received = time.perf_counter(), 0
        with client.stream("POST", f"{url}/generate", json=body) as response:
            for piece in response.iter_text():
                received += len(piece)
        return (received - len(prefix)) / (time.perf_counter() - start)


async def load(url: str, name: str, prefix: str, clients: int, seconds: float) -> dict:
    """``clients`` concurrent clients, each sending 100-character requests back to back."""
    body = {"model": name, "prefix": prefix, "length": REQUEST_CHARS}
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                response = await client.post(f"{url}/generate", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def serve(ws: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnn.cli", "serve", "--port", str(port), "--workdir", str(ws)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("rnn serve did not come up")


def measure(ws: Path, runs: list[tuple[str, str, str]], seconds: float) -> list[dict]:
    from rnn.ports import free_port

    port = free_port()
    server, url = serve(ws, port), f"http://127.0.0.1:{port}"
    results = []
    try:
        for backend, variant, model in runs:
            name, prefix = f"{backend}-{variant}-{model}", prefix_of(ws)
            row = {"model": name, "rnn_generate": rnn_generate_rate(ws, backend, variant, model)}
            row["onnx_in_process_chars_per_s"] = in_process_rate(
                ws / "data/models" / name / "onnx", prefix
            )
            row["http_stream_chars_per_s"] = http_stream_rate(url, name, prefix)
            row["stream_speedup"] = (
                row["http_stream_chars_per_s"] / row["rnn_generate"]["chars_per_s"]
            )
            row["load"] = [asyncio.run(load(url, name, prefix, c, seconds)) for c in CLIENTS]
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| model | rnn generate chars/s (start s) | ONNX in-process chars/s | HTTP stream chars/s | "
        "speed-up | 1 client req/s, p50/p99 ms | 8 clients | 32 clients |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        g = r["rnn_generate"]
        load_cells = [
            f"{x['requests_per_s']:.0f}, {x['p50_ms']:.0f}/{x['p99_ms']:.0f}" for x in r["load"]
        ]
        lines.append(
            f"| {r['model']} | {g['chars_per_s']:,.0f} ({g['start_s']:.1f}) | "
            f"{r['onnx_in_process_chars_per_s']:,.0f} | {r['http_stream_chars_per_s']:,.0f} | "
            f"{r['stream_speedup']:.1f}x | " + " | ".join(load_cells) + " |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=("book", "gru"), help="one workspace's models only")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rnn-serving-") as tmp:
        base = Path(tmp)
        if args.only != "gru":
            runs = [(b, v, "rnn") for b, v in BOOK_RUNS]
            results += measure(book_workspace(base), runs, args.seconds)
        if args.only != "book":
            gru = [("torch", "scratch", "gru")]
            results += measure(shakespeare_workspace(base), gru, args.seconds)
    print(table(results))
    if args.json:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
