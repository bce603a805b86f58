import hashlib
import time

import pytest

from rnn.config import IngestConfig
from rnn.data.corpus import ingest, read_provenance
from rnn.data.fetch import download, seed_cache
from rnn.errors import PipelineError
from tests.support.httpserver import HTML_PAGE, serve
from tests.support.workspace import TIME_MACHINE, TIME_MACHINE_SHA1


@pytest.fixture(scope="module")
def server():
    with serve({"/timemachine.txt": TIME_MACHINE.read_bytes()}) as (url, hits):
        yield url, hits


def cfg(tmp_path, url, **kw) -> IngestConfig:
    kw.setdefault("sha1", TIME_MACHINE_SHA1)
    return IngestConfig(source=url, cache_dir=str(tmp_path / "cache"), timeout_s=1, retries=0, **kw)


def test_good_download_is_verified_cached_and_ingested(tmp_path, server):
    url, hits = server
    c = cfg(tmp_path, f"{url}/timemachine.txt")
    path = download(c)
    assert hashlib.sha1(path.read_bytes()).hexdigest() == TIME_MACHINE_SHA1
    assert TIME_MACHINE_SHA1 in path.name  # cached by checksum
    before = hits["/timemachine.txt"]
    assert download(c) == path  # a cache hit does not touch the network
    assert hits["/timemachine.txt"] == before
    summary = ingest(c, tmp_path / "corpus.parquet")
    assert summary.num_chars == 170_580
    assert read_provenance(tmp_path / "corpus.parquet")["source"] == f"{url}/timemachine.txt"


def test_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path, server):
    url, _ = server
    c = cfg(tmp_path, f"{url}/timemachine.txt", sha1="0" * 40)
    with pytest.raises(PipelineError, match="checksum mismatch"):
        ingest(c, tmp_path / "corpus.parquet")
    assert not (tmp_path / "corpus.parquet").exists()
    assert not any((tmp_path / "cache").glob("*timemachine*"))


def test_404_is_an_error(tmp_path, server):
    url, _ = server
    with pytest.raises(PipelineError, match="HTTP 404"):
        download(cfg(tmp_path, f"{url}/nope.txt"))


def test_stalled_server_times_out(tmp_path, server):
    url, _ = server
    start = time.monotonic()
    with pytest.raises(PipelineError, match="timed out"):
        download(cfg(tmp_path, f"{url}/stall"))
    assert time.monotonic() - start < 2.9  # the client gave up before the server answered


def test_transient_failure_is_retried(tmp_path, server):
    url, hits = server
    c = cfg(tmp_path, f"{url}/flaky.txt").model_copy(update={"retries": 2})
    assert hashlib.sha1(download(c).read_bytes()).hexdigest() == TIME_MACHINE_SHA1
    assert hits["/flaky.txt"] == 2  # a 503, then the file


def test_a_download_cut_short_is_retried_then_fails_clearly_leaving_nothing(tmp_path, server):
    url, hits = server
    c = cfg(tmp_path, f"{url}/cut-once.txt").model_copy(update={"retries": 2})
    assert hashlib.sha1(download(c).read_bytes()).hexdigest() == TIME_MACHINE_SHA1
    assert hits["/cut-once.txt"] == 2  # half the body and a dropped connection, then the file
    c = cfg(tmp_path, f"{url}/cut-always.txt").model_copy(update={"retries": 1})
    with pytest.raises(PipelineError) as err:
        download(c)
    assert "cut-always.txt" in err.value.one_line() and "\n" not in err.value.one_line()
    assert not [p for p in (tmp_path / "cache").rglob("*") if "cut-always" in p.name]


def test_html_error_page_is_rejected_even_with_its_own_checksum(tmp_path, server):
    url, _ = server
    c = cfg(tmp_path, f"{url}/page.html", sha1=hashlib.sha1(HTML_PAGE).hexdigest())
    with pytest.raises(PipelineError, match="HTML page"):
        ingest(c, tmp_path / "corpus.parquet")
    assert not (tmp_path / "corpus.parquet").exists()


def test_seed_cache_verifies_then_serves_offline(tmp_path):
    c = cfg(tmp_path, "http://127.0.0.1:9/timemachine.txt")  # nothing listens on port 9
    seed_cache(c, TIME_MACHINE)
    assert ingest(c, tmp_path / "c.parquet").num_chars == 170_580
    with pytest.raises(PipelineError, match="checksum"):
        seed_cache(c.model_copy(update={"sha1": "1" * 40}), TIME_MACHINE)
