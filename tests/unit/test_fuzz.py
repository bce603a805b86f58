"""Fuzzing with hypothesis: random bytes and texts into ingest (in many codecs), the parameter
loader and generation. The only failures allowed are the documented one-line ``PipelineError``s,
and the invariants hold: decoded text survives ingest, valid parameters load, generated text
extends its prefix by the asked number of tokens. (Vocabulary round trips and partition shapes
are fuzzed in test_vocab.py and test_partition.py.)"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rnn.config import IngestConfig, load_params
from rnn.data.corpus import ingest, read_text_rows
from rnn.errors import PipelineError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CODECS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32", "latin-1", "cp1252", "koi8-r",
          "shift_jis", "euc-kr", "gb18030", "big5", "iso2022_jp"]  # fmt: skip
# Printable text and line ends: what a corpus is made of (control characters are corruption).
TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn"), blacklist_characters="\ufeff")
    | st.sampled_from("\n\r\t "),
    min_size=1,
    max_size=300,
)


def corpus_text(path: Path) -> str:
    return b"".join(r.tobytes() for r in read_text_rows(path)).decode("utf-8")


def run_ingest(tmp: Path, data: bytes, encoding: str, normalization: str = "raw") -> str:
    src, out = tmp / "src.txt", tmp / "corpus.parquet"
    src.write_bytes(data)
    cfg = IngestConfig(
        source=str(src), sha1=None, encoding=encoding, normalization=normalization,
        strip_gutenberg=False,
    )  # fmt: skip
    ingest(cfg, out)
    return corpus_text(out)


@FUZZ
@given(data=st.binary(max_size=2000), encoding=st.sampled_from(CODECS))
def test_random_bytes_either_ingest_or_fail_clearly(tmp_path_factory, data, encoding):
    tmp = tmp_path_factory.mktemp("bytes")
    try:
        text = run_ingest(tmp, data, encoding, normalization="d2l")
    except PipelineError as err:
        assert "\n" not in err.one_line() and "fix:" in err.one_line()
        assert not (tmp / "corpus.parquet").exists()
        return
    assert text and set(text) <= set("abcdefghijklmnopqrstuvwxyz \n")


@FUZZ
@given(text=TEXT, encoding=st.sampled_from(CODECS))
@example(text="\xa0\u3000\n", encoding="utf-8")  # Unicode's whitespace alone is empty too
def test_text_in_any_codec_ingests_to_the_same_text(tmp_path_factory, text, encoding):
    try:
        data = codecs.encode(text, encoding)
    except UnicodeEncodeError:
        return  # not representable in that codec
    tmp = tmp_path_factory.mktemp("codec")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    if not expected.strip():
        with pytest.raises(PipelineError, match="is empty"):
            run_ingest(tmp, data, encoding)
        return
    try:
        got = run_ingest(tmp, data, encoding)
    except PipelineError as err:  # e.g. text whose first characters read like an HTML page
        assert "HTML" in str(err) or "binary" in str(err), err
        return
    assert got == expected


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
SECTIONS = ["ingest", "vocab", "partition", "train", "models", "evaluate", "report", "bogus"]
KEYS = ["source", "sha1", "encoding", "token", "min_freq", "batch_size", "num_steps", "train",
        "valid", "test", "lr", "epochs", "theta", "backends", "variants", "device", "optimizer",
        "schedule", "rnn", "num_hiddens", "dropout", "prefixes", "num_preds", "data_parallel"]  # fmt: skip
PARAMS = st.dictionaries(
    st.sampled_from(SECTIONS),
    st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=4) | YAML_VALUES,
    max_size=4,
)


@FUZZ
@given(params=PARAMS)
def test_random_parameters_load_or_fail_clearly(tmp_path_factory, params):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    try:
        loaded = load_params(path)
    except PipelineError as err:
        assert "\n" not in err.one_line() and "fix:" in err.one_line()
        return
    assert loaded.partition.batch_size >= 1 and loaded.train.lr > 0


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_as_a_parameter_file_fail_clearly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("raw") / "params.yaml"
    path.write_bytes(data)
    try:
        load_params(path)
    except PipelineError as err:
        assert "\n" not in err.one_line()


@pytest.fixture(scope="module")
def untrained():
    """A small PyTorch model and a character vocabulary (generation needs no training)."""
    from rnn.backends.engine import make_engine
    from rnn.data.tokens import Vocab

    vocab = Vocab(("<unk>", *"etaoin shrdlu"), tuple([1] * 14), "char")
    return make_engine("torch", "scratch", len(vocab), 16, device="cpu", seed=0, threads=1), vocab


@FUZZ
@given(
    prefix=st.text(max_size=30),
    num_preds=st.integers(1, 40),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.integers(0, 20),
    seed=st.integers(0, 2**31),
)
def test_generation_extends_any_prefix_or_names_what_is_wrong(
    untrained, prefix, num_preds, temperature, top_k, seed
):
    from rnn.evaluation.evaluate import generate_text

    engine, vocab = untrained
    try:
        text = generate_text(engine, vocab, prefix, num_preds, temperature, top_k, seed)
    except PipelineError as err:
        assert "\n" not in err.one_line()
        assert not prefix or set(prefix) - set(vocab.tokens), err  # refused only for a reason
        return
    assert text.startswith(prefix)
    # the book's generation may emit <unk> (an untrained model often does): one token, 5 chars
    emitted = re.findall(r"<unk>|.", text[len(prefix) :], flags=re.DOTALL)
    assert len(emitted) == num_preds and set(emitted) <= set(vocab.tokens)
