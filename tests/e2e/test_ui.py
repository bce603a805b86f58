"""Pictures in the Prefect UI, with a real `prefect server` (its UI on) and headless Chromium: a
pipeline run's trainings each keep a picture of their perplexity curves on the run's Artifacts
(created at the first epoch, then updated in place), the pipeline shows the comparison's curves
beside its table, and the UI's artifact page renders each picture (the image decoded, not a
broken link; screenshots under the test's tmp_path)."""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.browser import chromium, needs_chromium
from tests.support.workspace import (
    drain_prefect_clients,
    free_port,
    spawn_logged,
    stop,
    tiny_params,
    wait_healthy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_chromium]
BIN = Path(sys.executable).parent
RUNS = ("torch-scratch-rnn", "torch-concise-rnn")


def pictures_in(markdown: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    ]


def rendered(browser, url: str, shot: Path) -> list[int]:
    """The natural widths of the images on the page at ``url`` once they loaded (0: broken)."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(url)
    page.wait_for_function("document.images.length > 0 && [...document.images].every(i => i.complete)",
                           timeout=60_000)  # fmt: skip
    page.screenshot(path=str(shot), full_page=True)
    widths = page.evaluate("[...document.images].filter(i => i.src.startsWith('data:'))"
                           ".map(i => i.naturalWidth)")  # fmt: skip
    page.close()
    return widths


def test_training_curves_and_the_comparison_render_in_the_ui(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    import tasks.stages
    from flows.pipeline import pipeline

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_UI_API_URL": api,  # what the UI's pages call
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    })  # fmt: skip
    log = tmp_path / "server.log"
    server = spawn_logged(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path, env, log,
    )  # fmt: skip
    try:
        wait_healthy(api, server, log, 90)
        ws = tmp_path / "ws"
        ws.mkdir()
        params = tiny_params()
        params["train"]["backends"] = ["torch"]
        (ws / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setattr(tasks.stages, "CURVES_EVERY_S", 0.0)  # a picture at every epoch
        settings = {PREFECT_API_URL: api, PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "results")}
        with temporary_settings(settings):
            state = pipeline(workdir=str(ws), return_state=True)
            assert state.is_completed()
            with get_client(sync_client=True) as client:
                arts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                    )
                )
            drain_prefect_clients()
        by_key = {a.key: a for a in arts}
        epochs = params["train"]["epochs"]
        for run in RUNS:
            curves = by_key[f"curves-{run}"]
            assert [a.key for a in arts].count(f"curves-{run}") == 1  # updated, not repeated
            assert curves.updated > curves.created  # it was updated after its first picture
            assert f"epoch {epochs}/{epochs}: train " in curves.data
            (png,) = pictures_in(curves.data)
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
        comparison = by_key["rnn-curves"]
        assert len(pictures_in(comparison.data)) == 1 and "rnn-comparison" in by_key
        ui = f"http://127.0.0.1:{port}"
        with chromium() as browser:
            for art in (by_key[f"curves-{RUNS[0]}"], comparison):
                widths = rendered(
                    browser, f"{ui}/artifacts/artifact/{art.id}", tmp_path / f"{art.key}.png"
                )
                assert widths and all(w > 300 for w in widths), widths
    finally:
        stop(server)
