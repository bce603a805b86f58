import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from rnn.data.text import normalize_d2l, normalize_raw, strip_gutenberg
from tests.support.workspace import GUTENBERG, TIME_MACHINE


def book_clean(text: str) -> str:
    """The chapter's cleaning, reading lines the way a text-mode file does (universal newlines)."""
    return "".join(
        re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in io.StringIO(text, newline=None)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"aZq \t\n\r.,;-é\u2028\x0c0", "\r\n", "  "])).map("".join))
def test_d2l_matches_the_book_on_arbitrary_text(text):
    assert normalize_d2l(text.encode()).decode() == book_clean(text)


def test_d2l_on_the_canonical_file_gives_170580_characters():
    out = normalize_d2l(TIME_MACHINE.read_bytes()).decode()
    assert len(out) == 170_580
    assert out == book_clean(TIME_MACHINE.read_text())
    assert out.startswith("the time machine by h g wells")


def test_d2l_handles_chunk_boundaries(monkeypatch):
    import rnn.data.text

    monkeypatch.setattr(rnn.data.text, "_CHUNK", 1000)  # force many chunks
    text = TIME_MACHINE.read_text()[:50_000]
    assert normalize_d2l(text.encode()).decode() == book_clean(text)
    # a line longer than a chunk, with gaps near the chunk size; and old Mac (CR-only) line ends
    long_line = "".join(f"word{i}, " for i in range(800)) + "end\n"
    for text in (long_line + "next line\n", long_line.replace("\n", "\r") * 3, "ab\r" * 900):
        assert normalize_d2l(text.encode()).decode() == book_clean(text), text[:40]


def test_gutenberg_header_footer_and_bom_are_stripped():
    raw = GUTENBERG.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    body = strip_gutenberg(raw)
    assert b"Project Gutenberg" not in body[:2000]
    assert b"START OF THE PROJECT GUTENBERG" not in body
    assert b"END OF THE PROJECT GUTENBERG" not in body
    assert b"www.gutenberg.org" not in body
    assert body.lstrip().startswith(b"The Time Machine")
    # Text without markers passes through untouched.
    plain = TIME_MACHINE.read_bytes()
    assert strip_gutenberg(plain) == plain


def test_raw_keeps_case_punctuation_and_newlines():
    assert normalize_raw(b"\xef\xbb\xbfHello, World!\r\nBye\rnow\n") == b"Hello, World!\nBye\nnow\n"
