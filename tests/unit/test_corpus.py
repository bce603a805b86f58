import os

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn.config import IngestConfig
from rnn.data.corpus import ingest, read_provenance, read_text_rows
from rnn.errors import PipelineError
from tests.support.workspace import GUTENBERG, TIME_MACHINE, TIME_MACHINE_SHA1


def local(source, **kw) -> IngestConfig:
    kw.setdefault("sha1", None)
    return IngestConfig(source=str(source), **kw)


def corpus_text(path) -> str:
    return b"".join(r.tobytes() for r in read_text_rows(path)).decode()


def test_canonical_file_gives_the_books_170580_characters(tmp_path):
    out = tmp_path / "corpus.parquet"
    summary = ingest(local(TIME_MACHINE, sha1=TIME_MACHINE_SHA1), out)
    assert summary.num_chars == 170_580
    text = corpus_text(out)
    assert len(text) == 170_580 and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")
    prov = read_provenance(out)
    assert prov["normalization"] == "d2l"
    assert prov["bytes_in"] == 178_979
    assert prov["files"][0]["sha256"] == prov["sha256_in"]
    assert len(prov["sha256"]) == 64


def test_gutenberg_edition_is_stripped_before_normalising(tmp_path):
    out = tmp_path / "g.parquet"
    ingest(local(GUTENBERG), out)
    text = corpus_text(out)
    assert text.startswith("the time machinean inventionby h g wells")  # lines join unspaced
    assert "gutenberg" not in text
    raw_out = tmp_path / "g_raw.parquet"
    ingest(local(GUTENBERG, normalization="raw"), raw_out)
    raw = corpus_text(raw_out)
    assert "\ufeff" not in raw and "Gutenberg" not in raw and "\n" in raw


def test_directory_and_glob_sources_concatenate_files_in_order(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "b.txt").write_text("Second file.\n")
    (docs / "a.txt").write_text("First file!\n")
    for source in (docs, f"{docs}/*.txt"):
        out = tmp_path / "dir.parquet"
        ingest(local(source), out)
        assert corpus_text(out) == "first filesecond file"
        assert [f["path"] for f in read_provenance(out)["files"]] == [
            str(docs / "a.txt"),
            str(docs / "b.txt"),
        ]


def test_large_text_is_stored_in_rows_cut_at_whitespace(tmp_path, monkeypatch):
    import rnn.data.corpus

    monkeypatch.setattr(rnn.data.corpus, "ROW_BYTES", 1000)
    out = tmp_path / "rows.parquet"
    ingest(local(TIME_MACHINE), out)
    rows = pq.read_table(out).column("text").to_pylist()
    assert len(rows) > 100 and all(r.endswith(" ") for r in rows[:-1])
    assert len("".join(rows)) == 170_580


BAD_INPUTS = {
    "empty": (b"", "is empty"),
    "blank": (b"  \n\n \n", "is empty"),
    "html": (b"<!DOCTYPE html><html><body>Error 403</body></html>", "HTML page"),
    "html_title": (b"<title>404 Not Found</title>\n<h1>Not Found</h1>\n", "HTML page"),
    "html_comment": (b"<!-- mirror -->\n<html><body>gone</body></html>\n", "HTML page"),
    "binary": (bytes(range(256)) * 8, "binary"),
    "latin1": ("caf\u00e9 cr\u00e8me".encode("latin-1"), "not valid utf-8"),
    "no_letters": (b"1234 5678 !!!\n", "no text after cleaning"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_keeps_the_earlier_output(tmp_path, kind):
    data, message = BAD_INPUTS[kind]
    out = tmp_path / "corpus.parquet"
    ingest(local(TIME_MACHINE), out)
    good = out.read_bytes()
    bad = tmp_path / f"{kind}.txt"
    bad.write_bytes(data)
    with pytest.raises(PipelineError, match=message) as err:
        ingest(local(bad), out)
    assert "\n" not in err.value.one_line() and "fix:" in err.value.one_line()
    assert out.read_bytes() == good  # the earlier good result survives
    assert sorted(os.listdir(tmp_path)) == sorted(["corpus.parquet", bad.name])  # no temp left


@pytest.mark.parametrize(
    "text",
    [
        b"<Chapter I> The <html> tag, <3 and a < b\n",
        b"<A Tale of Two Cities>\nIt was the best of times\n",
        b"<a@example.com> wrote:\nhello\n",
        b"<p> and <q> are propositions\n",
        b"<!-- generated -->\n# Notes\n",
    ],
)
def test_text_that_merely_starts_with_a_tag_is_not_taken_for_html(tmp_path, text):
    src = tmp_path / "t.txt"
    src.write_bytes(text)
    ingest(local(src, normalization="raw"), tmp_path / "c.parquet")
    assert corpus_text(tmp_path / "c.parquet") == text.decode()


def test_an_error_after_rows_were_written_keeps_the_earlier_output(tmp_path, monkeypatch):
    """A directory whose second file is bad: rows of the first are already streamed to the
    temporary file when the error comes; the earlier corpus survives and no temp file is left."""
    import rnn.data.corpus

    monkeypatch.setattr(rnn.data.corpus, "ROW_BYTES", 64)
    out = tmp_path / "corpus.parquet"
    ingest(local(TIME_MACHINE), out)
    good = out.read_bytes()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Plenty of good text here. " * 40)
    (docs / "b.txt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(PipelineError, match="binary"):
        ingest(local(docs), out)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet", "docs"]


def test_missing_file_and_local_checksum_mismatch(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        ingest(local(tmp_path / "nope.txt"), tmp_path / "c.parquet")
    with pytest.raises(PipelineError, match="checksum mismatch"):
        ingest(local(TIME_MACHINE, sha1="0" * 40), tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()


def test_latin1_source_with_declared_encoding(tmp_path):
    src = tmp_path / "l1.txt"
    src.write_bytes("Caf\u00e9 au lait\n".encode("latin-1"))
    out = tmp_path / "c.parquet"
    ingest(local(src, encoding="latin-1", normalization="raw"), out)
    assert corpus_text(out) == "Caf\u00e9 au lait\n"


PIECES = st.lists(st.text(alphabet="ab \n\u00e9\u4e2d", max_size=40), max_size=12)


@settings(max_examples=150, deadline=None)
@given(pieces=PIECES, normalization=st.sampled_from(["d2l", "raw"]), row_bytes=st.integers(4, 24))
def test_streamed_rows_rebuild_the_text_and_end_at_separators(pieces, normalization, row_bytes):
    """Rows are written while text streams in: whatever the piece sizes, they rebuild the text
    exactly, each is valid UTF-8 on its own, and each but the last ends at a separator unless no
    separator was there to cut at; the hash and character count cover the whole text."""
    import hashlib
    import tempfile
    from pathlib import Path

    import rnn.data.corpus

    encoded = [p.encode() for p in pieces]
    text = b"".join(encoded)
    seps = (b" ",) if normalization == "d2l" else (b"\n", b" ")
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(rnn.data.corpus, "ROW_BYTES", row_bytes)
        path = Path(tmp) / "c.parquet"
        with rnn.data.corpus._CorpusWriter(path, normalization) as writer:
            for piece in encoded:
                writer.add(piece)
            writer.finish({"normalization": normalization})
        rows = [r.tobytes() for r in read_text_rows(path)]
        assert read_provenance(path) == {"normalization": normalization}
    assert b"".join(rows) == text
    assert writer.sha256.hexdigest() == hashlib.sha256(text).hexdigest()
    assert writer.num_chars == len(text.decode())
    assert writer.has_text == (text.strip() != b"")
    for row in rows:
        row.decode()  # whole characters only
    for row in rows[:-1]:
        assert row.endswith(seps) or not any(s in row for s in seps)
    assert all(len(row) <= 2 * row_bytes for row in rows)  # bounded, whatever the text


@pytest.mark.parametrize("normalization", ["d2l", "raw"])
def test_a_token_longer_than_two_rows_is_cut_rather_than_making_one_huge_row(
    tmp_path, monkeypatch, normalization
):
    import rnn.data.corpus

    monkeypatch.setattr(rnn.data.corpus, "ROW_BYTES", 1000)
    src = tmp_path / "long.txt"
    src.write_text("x" * 100_000 + " y\n")
    ingest(local(src, normalization=normalization), tmp_path / "c.parquet")
    rows = pq.read_table(tmp_path / "c.parquet").column("text").to_pylist()
    assert max(len(r) for r in rows) <= 2000 and len(rows) >= 50
    assert "".join(rows).startswith("x" * 100_000 + " y")


def test_corpus_rows_are_written_while_the_source_is_still_being_cleaned(tmp_path, monkeypatch):
    """Streaming, not a join at the end: the first row reaches the file long before the last
    cleaned piece does, so the cleaned text is never held whole in memory."""
    import rnn.data.corpus
    import rnn.data.text

    monkeypatch.setattr(rnn.data.corpus, "ROW_BYTES", 4096)
    monkeypatch.setattr(rnn.data.text, "_CHUNK", 4096)
    pieces_at_write: list[int] = []
    pieces = 0
    real_add, real_write = (
        rnn.data.corpus._CorpusWriter.add,
        rnn.data.corpus._CorpusWriter._write_row,
    )

    def add(self, piece):
        nonlocal pieces
        pieces += 1
        real_add(self, piece)

    def write_row(self, row):
        pieces_at_write.append(pieces)
        real_write(self, row)

    monkeypatch.setattr(rnn.data.corpus._CorpusWriter, "add", add)
    monkeypatch.setattr(rnn.data.corpus._CorpusWriter, "_write_row", write_row)
    out = tmp_path / "c.parquet"
    ingest(local(TIME_MACHINE), out)
    assert pieces > 30 and pieces_at_write[0] < 3
    assert len(pieces_at_write) == pq.ParquetFile(out).metadata.num_row_groups > 30
    assert len(corpus_text(out)) == 170_580
