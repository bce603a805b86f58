"""Alerts (pool/alerts.py) with a real `prefect server` (its automation services on), served
deployments and a webhook receiver on 127.0.0.1: five failures of one deployment within the
window are one message, naming the run, its one-line reason and its link in the UI; a crashed run
is one message; a promotion is one message with both perplexities; the receiver's URL is in no
log, artifact or API answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.webhook import Receiver
from tests.support.workspace import (
    ROOT,
    drain_prefect_clients,
    free_port,
    spawn_logged,
    stop,
    tail,
    wait_healthy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIN = Path(sys.executable).parent
MESSAGES_WITHIN_S = 120


def wait_for(received: list, count: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + MESSAGES_WITHIN_S
    while len(received) < count:
        assert time.monotonic() < deadline, f"{what}: {received}\n{tail(log)}"
        time.sleep(0.5)


def served_up(served, log: Path) -> None:
    """Wait until the served process registered both deployments."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        for name in ("always-fails/alerts", "crashes/alerts"):
            while True:
                assert served.poll() is None and time.monotonic() < deadline, tail(log)
                try:
                    client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    time.sleep(0.5)


def final(runs: list) -> list:
    """``runs`` (flow runs) once each reached a final state, read again."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 180
    with get_client(sync_client=True) as client:
        while True:
            now = [client.read_flow_run(r.id) for r in runs]
            if all(r.state.is_final() for r in now):
                return now
            assert time.monotonic() < deadline, [r.state for r in now]
            time.sleep(1)


def test_failures_crashes_and_promotions_reach_the_webhook(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pool import alerts

    port, receiver = free_port(), Receiver()
    api, ui = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_UI_URL": ui,  # the links in the messages
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    })  # fmt: skip
    server_log, served_log = tmp_path / "server.log", tmp_path / "served.log"
    server = spawn_logged(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path, env, server_log,
    )  # fmt: skip
    served = None
    try:
        wait_healthy(api, server, server_log, 90)
        with temporary_settings({PREFECT_API_URL: api}):
            alerts.install(receiver.url, window_s=600)
            served = spawn_logged(
                [sys.executable, "-m", "tests.support.alert_flows"], ROOT,
                {**env, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT)}, served_log,
            )  # fmt: skip
            served_up(served, served_log)
            started = [run_deployment("always-fails/alerts", timeout=0) for _ in range(5)]
            started.append(run_deployment("crashes/alerts", timeout=0))
            *failing, crashed = final(started)
            assert all(r.state.is_failed() for r in failing), [r.state for r in failing]
            assert crashed.state.is_crashed(), crashed.state
            wait_for(
                receiver.received, 2, "a message for the failures and one for the crash", server_log
            )
            # in a process of its own, as the retraining's: this one's event client may be
            # bound to another test's server
            code = (
                "from flows.retrain import announce_promotion; "
                "announce_promotion('torch-scratch-rnn', 'v2.0.0', 5.1234, 'v1.0.0', 5.5)"
            )
            subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120,
                env={**env, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            wait_for(receiver.received, 3, "a message for the promotion", server_log)
            time.sleep(5)  # the four failures after the first stay quiet
            with get_client(sync_client=True) as client:
                logs = [log.message for log in client.read_logs()]
                artifacts = [str(a.data) for a in client.read_artifacts()]
                drain_prefect_clients()
                block = client.read_block_document_by_name(
                    alerts.BLOCK, "custom-webhook", include_secrets=False
                )  # what the API and the UI show
        texts = [m["text"] for m in receiver.received]
        assert len(texts) == 3, texts
        failure = next(t for t in texts if " of always-fails/alerts ended Failed: " in t)
        names = {r.name for r in failing}
        assert any(f"Flow run {n} " in failure for n in names), failure
        first = next(r for r in failing if f"Flow run {r.name} " in failure)
        assert "ended Failed" in failure and "the corpus URL answered 404" in failure
        assert f"{ui}/runs/flow-run/{first.id}" in failure
        crash = next(t for t in texts if " of crashes/alerts ended " in t)
        assert f"Flow run {crashed.name} " in crash and "ended Crashed" in crash
        assert f"{ui}/runs/flow-run/{crashed.id}" in crash
        promotion = next(t for t in texts if "is now prod" in t)
        assert "torch-scratch-rnn v2.0.0 is now prod" in promotion
        assert "5.1234" in promotion and "5.5" in promotion and "v1.0.0" in promotion
        # the URL: in the block's secrets only (obfuscated in the API's answers)
        secret = receiver.url.split("//", 1)[1]
        assert secret not in json.dumps(block.model_dump(mode="json"))
        for where, text in (
            ("server log", server_log.read_text(errors="replace")),
            ("served log", served_log.read_text(errors="replace")),
            ("run logs", "\n".join(logs)),
            ("artifacts", "\n".join(artifacts)),
        ):
            assert secret not in text, where  # fmt: skip
        tracked = subprocess.run(["git", "grep", "-l", secret], cwd=ROOT, capture_output=True)
        assert tracked.returncode == 1  # in no file in git
    finally:
        if served is not None:
            stop(served)
        stop(server)
        receiver.close()
