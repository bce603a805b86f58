"""moto's S3 server on 127.0.0.1 as the shared DVC remote of the distributed tests."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.workspace import free_port, spawn_logged, stop, tail

BUCKET = "rnn-remote"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    # moto takes any key; a random one lets tests/e2e/test_pool.py search outputs for it
    "AWS_SECRET_ACCESS_KEY": f"s3-secret-{uuid.uuid4().hex}",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_remote(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; stopped and checked gone afterwards."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = spawn_logged(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        log.parent,
        {**os.environ, **S3_KEYS},
        log,
    )
    client = boto3.client("s3", endpoint_url=endpoint, **boto_keys())
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            assert server.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.3)
    yield {
        "RNN_DVC_REMOTE": f"s3://{BUCKET}/store",
        "RNN_DVC_REMOTE_ENDPOINT": endpoint,
        **S3_KEYS,
    }
    stop(server)
    assert server.poll() is not None


def boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }
