import collections
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn.config import IngestConfig, VocabConfig
from rnn.data.corpus import ingest
from rnn.data.vocab import Vocab, _first_indices, _histogram, build_vocab, load_ids
from rnn.errors import PipelineError
from tests.support.book import book_char_vocab, read_time_machine
from tests.support.workspace import TIME_MACHINE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "corpus.parquet"
    ingest(IngestConfig(source=str(TIME_MACHINE)), out)
    return out


def ingest_text(tmp_path, text: str, normalization="raw"):
    src = tmp_path / "src.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "c.parquet"
    ingest(IngestConfig(source=str(src), sha1=None, normalization=normalization), out)
    return out


def test_books_28_token_character_vocabulary(corpus, tmp_path):
    summary = build_vocab(corpus, VocabConfig(), tmp_path)
    vocab = Vocab.load(tmp_path)
    lines = read_time_machine(TIME_MACHINE)
    assert summary.size == len(vocab) == 28
    assert list(vocab.tokens) == book_char_vocab(lines)
    assert vocab.tokens[:4] == ("<unk>", " ", "e", "t")
    ids = load_ids(tmp_path)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint8 and len(ids) == 170_580
    index = vocab.index
    assert ids.tolist() == [index[c] for line in lines for c in line]
    assert vocab.decode(ids[:16]) == "the time machine"
    assert sum(vocab.counts) == 170_580


def test_word_vocabulary_matches_counter_order(corpus, tmp_path):
    build_vocab(corpus, VocabConfig(token="word"), tmp_path)
    vocab = Vocab.load(tmp_path)
    words = "".join(read_time_machine(TIME_MACHINE)).split()
    freqs = sorted(collections.Counter(words).items(), key=lambda kv: kv[1], reverse=True)
    assert list(vocab.tokens) == ["<unk>"] + [w for w, _ in freqs]
    assert vocab.decode(load_ids(tmp_path)[:3]) == "the time machine"


def test_min_freq_reserved_tokens_and_max_size(corpus, tmp_path):
    cfg = VocabConfig(token="word", min_freq=10, reserved_tokens=["<pad>", "<bos>"], max_size=50)
    summary = build_vocab(corpus, cfg, tmp_path)
    vocab = Vocab.load(tmp_path)
    assert vocab.tokens[:3] == ("<unk>", "<pad>", "<bos>") and len(vocab) == 50
    assert all(c >= 10 for c in vocab.counts[3:])
    ids = load_ids(tmp_path)
    assert summary.unk_count == int((ids == 0).sum()) > 0
    assert vocab.counts[0] == summary.unk_count
    record = json.loads((tmp_path / "vocab.json").read_text())
    assert record["min_freq"] == 10 and record["reserved_tokens"] == ["<pad>", "<bos>"]


def test_ties_are_broken_by_first_occurrence(tmp_path):
    build_vocab(ingest_text(tmp_path, "cab bac"), VocabConfig(), tmp_path / "v")
    assert Vocab.load(tmp_path / "v").tokens == ("<unk>", "c", "a", "b", " ")


def test_unicode_characters(tmp_path):
    build_vocab(ingest_text(tmp_path, "naïve café ☕ ☕\n"), VocabConfig(), tmp_path / "v")
    vocab = Vocab.load(tmp_path / "v")
    assert "☕" in vocab.tokens and "ï" in vocab.tokens
    assert vocab.decode(load_ids(tmp_path / "v")) == "naïve café ☕ ☕\n"


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="ab \nxé", min_size=1, max_size=200).filter(lambda s: s.strip()))
def test_encoding_round_trips(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("rt")
    build_vocab(ingest_text(tmp, text), VocabConfig(), tmp / "v")
    vocab = Vocab.load(tmp / "v")
    assert vocab.decode(load_ids(tmp / "v")) == text.replace("\r", "\n")
    counts = collections.Counter(text)
    assert [counts[t] for t in vocab.tokens[1:]] == sorted(counts.values(), reverse=True)


def test_vocabulary_emptied_by_min_freq_is_an_error(corpus, tmp_path):
    build_vocab(corpus, VocabConfig(), tmp_path)
    before = (tmp_path / "vocab.json").read_bytes()
    with pytest.raises(PipelineError, match="min_freq=10000000 removes every token"):
        build_vocab(corpus, VocabConfig(min_freq=10_000_000), tmp_path)
    assert (tmp_path / "vocab.json").read_bytes() == before


def test_missing_corpus(tmp_path):
    with pytest.raises(PipelineError, match="run `rnn ingest` first"):
        build_vocab(tmp_path / "nope.parquet", VocabConfig(), tmp_path / "v")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 3))
def test_byte_histogram_equals_bincount(data, skip):
    """Counting bytes two at a time (odd lengths and unaligned starts included) is bincount."""
    block = np.frombuffer(data, dtype=np.uint8)[skip:]
    assert np.array_equal(_histogram(block, 256), np.bincount(block, minlength=256))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=200))
def test_first_indices_of_bytes_and_code_points(values):
    for dtype in (np.uint8, np.uint32):
        block = np.array(values, dtype=np.uint32).astype(dtype)  # uint8 wraps values > 255
        present = np.unique(block)
        expected = [int(np.flatnonzero(block == v)[0]) for v in present]
        assert _first_indices(block, present).tolist() == expected
