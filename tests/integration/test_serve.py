"""`rnn serve` on 127.0.0.1 with a real HTTP client: two trained runs of a workspace, exported and
served; the text streamed is `rnn generate`'s; every bad request a 4xx with one line of JSON; a
model replaced while a request streams (the request ends on the model it began with, the next
gets the new one); the token; the page driven in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from rnn.export.bundle import MANIFEST
from tests.support.browser import chromium, needs_chromium
from tests.support.serving import rnn_serve
from tests.support.workspace import ROOT, free_port, tiny_params

RUNS = ("torch-scratch-rnn", "torch-concise-rnn")
TOKEN = "s3rve-t0ken-for-the-test"


def rnn(ws: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Two tiny trained runs (PyTorch's scratch and concise RNN), each with the ONNX bundle
    training keeps in its model directory."""
    ws = tmp_path_factory.mktemp("serve")
    params = tiny_params()
    params["train"].update(backends=["torch"], epochs=4)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    runs = [["-b", "torch", "-v", v, "-m", "rnn"] for v in ("scratch", "concise")]
    for args in (["ingest"], ["vocab"], ["partition"], *(["train", *r] for r in runs)):
        done = rnn(ws, *args)
        assert done.returncode == 0, done.stderr
    return ws


def serving(ws: Path, *args: str, env: dict | None = None):
    """`rnn serve` of the workspace ``ws``, reloading every 0.2 s."""
    return rnn_serve(["--workdir", str(ws), "--reload-every", "0.2", *args], ROOT, ws.parent, env)


@pytest.fixture(scope="module")
def server(workspace) -> Iterator[str]:
    with serving(workspace, "--max-length", "100000") as url:
        yield url


def generated(ws: Path, run: str, prefix: str, length: int, *extra: str) -> str:
    variant = run.split("-")[1]
    done = rnn(ws, "generate", "-b", "torch", "-v", variant, "--prefix", prefix,
               "--num-preds", str(length), *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n")


def test_models_are_listed_and_streamed_as_rnn_generate_writes_them(workspace, server):
    listed = httpx.get(f"{server}/models").json()
    assert [m["name"] for m in listed] == sorted(RUNS)
    for m in listed:
        record = json.loads((workspace / "data/models" / m["name"] / "run.json").read_text())
        assert m["version"] == record["weights_sha256"][:12] and m["stage"] == "workspace"
        assert m["perplexity"]["train"] == pytest.approx(record["train_perplexity"])
    for run in RUNS:
        for options, extra in (({}, ()), ({"temperature": 0.8, "top_k": 5, "seed": 9},
                               ("--temperature", "0.8", "--top-k", "5", "--seed", "9"))):  # fmt: skip
            body = {"model": run, "prefix": "the time", "length": 300, **options}
            with httpx.stream("POST", f"{server}/generate", json=body) as response:
                assert response.status_code == 200
                chunks = list(response.iter_text())
            assert len(chunks) > 1  # streamed, not sent at the end
            assert "".join(chunks) == generated(workspace, run, "the time", 300, *extra)


@pytest.mark.parametrize(
    "send, status, says",
    [
        ({"json": {"model": "nope", "prefix": "the"}}, 404, "unknown model 'nope'"),
        ({"json": {"model": RUNS[0], "prefix": "The!"}}, 422, "outside the model's vocabulary"),
        ({"json": {"model": RUNS[0], "prefix": "the", "length": 100001}}, 422, "over this server"),
        ({"json": {"model": RUNS[0], "prefix": "the", "length": 0}}, 422, "length"),
        ({"json": {"model": RUNS[0], "prefix": "the", "top_k": -1}}, 422, "top_k"),
        ({"json": {"model": RUNS[0], "prefix": "the", "color": "red"}}, 422, "color"),
        ({"json": {"prefix": "the"}}, 422, "model"),
        ({"content": b'{"model": "x", "prefix": ', "headers": {"content-type": "application/json"}},
         400, "not valid JSON"),
        ({"content": b"prefix=the"}, 400, "JSON object"),
    ],
    ids=["unknown model", "prefix", "too long", "zero length", "top-k", "extra field",
         "no model", "malformed JSON", "not JSON"],
)  # fmt: skip
def test_a_bad_request_gets_a_4xx_and_one_line(server, send, status, says):
    response = httpx.post(f"{server}/generate", **send)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and says in body["error"] and "\n" not in body["error"]


def test_a_model_replaced_while_a_request_streams(workspace, server, tmp_path):
    """The request ends on the model it began with; the next request gets the new one."""
    from rnn.serving.runtime import OnnxModel

    name, other = RUNS
    served, models = workspace / "data/models" / name, workspace / "data/models"
    sampled = {"temperature": 1.0, "seed": 3}  # tiny models agree on greedy text
    old = "".join(OnnxModel(served / "onnx").stream_text("the", 60_000, **sampled))
    new_text = "".join(OnnxModel(models / other / "onnx").stream_text("the", 200, **sampled))
    before = httpx.get(f"{server}/models").json()
    body = {"model": name, "prefix": "the", "length": 60_000, **sampled}
    with httpx.stream("POST", f"{server}/generate", json=body) as response:
        pieces = response.iter_text()
        first = next(pieces)
        # the other run's model directory put in its place, whole (a rename), as training
        # publishes a retrained model
        staged = tmp_path / "staged"
        shutil.copytree(models / other, staged)
        aside = tmp_path / "aside"
        served.rename(aside)
        staged.rename(served)
        deadline = time.monotonic() + 20
        while httpx.get(f"{server}/models").json() == before:
            assert time.monotonic() < deadline, "the replaced export was not picked up"
            time.sleep(0.1)
        rest = "".join(pieces)
    assert response.headers["x-model-version"] == next(
        m["version"] for m in before if m["name"] == name
    )
    assert first + rest == old
    after = httpx.post(f"{server}/generate", json={**body, "length": 200}).text
    assert after == new_text != old[: len(new_text)]
    shutil.rmtree(served)
    aside.rename(served)
    manifest = json.loads((served / "onnx" / MANIFEST).read_text())
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/models").json() != before:
        assert time.monotonic() < deadline, manifest["run"]
        time.sleep(0.1)


def test_the_token(workspace):
    """Wanted when asked for (and always off 127.0.0.1); checked on every endpoint but the
    health check and the page."""
    open_to_all = rnn(workspace, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert open_to_all.returncode != 0
    assert open_to_all.stderr.strip().count("\n") == 0 and "RNN_SERVE_TOKEN" in open_to_all.stderr
    with serving(workspace, "--require-token", env={"RNN_SERVE_TOKEN": TOKEN}) as url:
        body = {"model": RUNS[0], "prefix": "the", "length": 5}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            assert httpx.get(f"{url}/models", headers=headers).status_code == 401
            assert httpx.post(f"{url}/generate", json=body, headers=headers).status_code == 401
        good = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/models", headers=good).status_code == 200
        assert httpx.post(f"{url}/generate", json=body, headers=good).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(url).status_code == 200
    logs = "".join(p.read_text() for p in workspace.parent.glob("serve-*.log"))
    assert TOKEN not in logs


@needs_chromium
def test_the_page_shows_every_models_text_side_by_side(workspace, server, tmp_path):
    expected = {
        run: httpx.post(f"{server}/generate",
                        json={"model": run, "prefix": "a time", "length": 80,
                              "temperature": 1.0, "seed": 4}).text
        for run in RUNS
    }  # fmt: skip
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 600})
        page.goto(server)
        page.fill("#prefix", "a time")
        page.fill("#length", "80")
        page.fill("#temperature", "1")
        page.fill("#seed", "4")
        page.click("#go")
        for run in RUNS:
            card = page.locator(f'[data-model="{run}"] .text')
            card.and_(page.locator('[data-done="true"]')).wait_for(timeout=20_000)
            assert card.inner_text() == expected[run]
        page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
