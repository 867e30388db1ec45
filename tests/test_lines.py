"""Unit tests for tgate.lines.LineSplitter (sans-IO, plain bytes)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgate.lines import LineSplitter

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def expected(stream: bytes, max_line: int) -> tuple[list[bytes], list[int], int]:
    """What a splitter must produce for `stream`: kept lines, overlong
    lengths, and the pending partial line's length."""
    *complete, tail = stream.split(b"\n")
    lines = [line for line in complete if len(line) <= max_line]
    overlong = [len(line) for line in complete if len(line) > max_line]
    return lines, overlong, len(tail) if len(tail) <= max_line else 0


def run(chunks: list[bytes], max_line: int) -> tuple[list[bytes], list[int], int]:
    s = LineSplitter(max_line)
    out: list[bytes] = []
    for chunk in chunks:
        out += s.feed(chunk)
    return out, s.overlong, s.pending


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


SAMPLE = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\n\nlast line\nno end"


# ------------------------------------------------------------------ basics


def test_empty_feed() -> None:
    s = LineSplitter(100)
    assert s.feed(b"") == []
    assert s.pending == 0
    assert s.overlong == []


def test_whole_input() -> None:
    s = LineSplitter(100)
    assert s.feed(SAMPLE) == SAMPLE.split(b"\n")[:-1]
    assert s.pending == len(b"no end")


def test_one_byte_at_a_time() -> None:
    assert run(one_by_one(SAMPLE), 100) == expected(SAMPLE, 100)
    assert run(one_by_one(SAMPLE), 100)[0] == SAMPLE.split(b"\n")[:-1]


def test_returns_bytes() -> None:
    s = LineSplitter(100)
    s.feed(b"ab")
    lines = s.feed(b"c\nd\n")
    assert lines == [b"abc", b"d"]
    assert all(type(line) is bytes for line in lines)


def test_partial_line_kept() -> None:
    s = LineSplitter(100)
    assert s.feed(b"abc") == []
    assert s.pending == 3
    assert s.feed(b"def") == []
    assert s.pending == 6
    assert s.feed(b"g\nh") == [b"abcdefg"]
    assert s.pending == 1
    assert s.feed(b"\n") == [b"h"]
    assert s.pending == 0


def test_empty_lines() -> None:
    s = LineSplitter(100)
    assert s.feed(b"\n\n") == [b"", b""]
    assert s.feed(b"a") == []
    assert s.feed(b"\n\n") == [b"a", b""]


def test_newline_only_chunk_completes_partial() -> None:
    s = LineSplitter(100)
    s.feed(b"abc")
    assert s.feed(b"\n") == [b"abc"]
    assert s.pending == 0


def test_carriage_returns_are_kept() -> None:
    s = LineSplitter(100)
    assert s.feed(b"a\r\nb\r\n") == [b"a\r", b"b\r"]


def test_binary_bytes() -> None:
    data = bytes(range(256)) + b"\n"
    s = LineSplitter(1000)
    assert s.feed(data) == data.split(b"\n")[:-1]


def test_accepts_bytearray() -> None:
    s = LineSplitter(100)
    assert s.feed(bytearray(b"ab")) == []
    assert s.feed(bytearray(b"c\nd")) == [b"abc"]
    assert s.feed(b"e\n") == [b"de"]


# ------------------------------------------------------------------ overlong lines


def test_line_of_exactly_max_is_kept() -> None:
    s = LineSplitter(5)
    assert s.feed(b"12345\n") == [b"12345"]
    assert s.overlong == []


def test_line_of_max_plus_one_is_dropped() -> None:
    s = LineSplitter(5)
    assert s.feed(b"123456\nok\n") == [b"ok"]
    assert s.overlong == [6]


def test_overlong_in_one_chunk_among_others() -> None:
    s = LineSplitter(4)
    assert s.feed(b"a\nTOOLONG\nb\nXXXXXXXX\nc\n") == [b"a", b"b", b"c"]
    assert s.overlong == [7, 8]
    assert s.pending == 0


def test_overlong_partial_exactly_at_boundary_via_partial() -> None:
    s = LineSplitter(5)
    s.feed(b"123")
    assert s.feed(b"45\n") == [b"12345"]
    s.feed(b"123")
    assert s.feed(b"456\nok\n") == [b"ok"]
    assert s.overlong == [6]


def test_overlong_line_in_many_small_chunks() -> None:
    s = LineSplitter(10)
    out: list[bytes] = []
    out += s.feed(b"first\n")
    for _ in range(100):
        out += s.feed(b"xyz")
        assert s.pending <= 10
    assert s.pending == 0  # discarding, not holding
    out += s.feed(b"xy\nnext")
    out += s.feed(b"\nlast\n")
    assert out == [b"first", b"next", b"last"]
    assert s.overlong == [302]


def test_overlong_one_byte_at_a_time() -> None:
    data = b"ok\n" + b"x" * 50 + b"\nafter\n"
    assert run(one_by_one(data), 10) == ([b"ok", b"after"], [50], 0)


def test_overlong_reported_once_and_following_line_unaffected() -> None:
    s = LineSplitter(3)
    assert s.feed(b"abcd") == []
    assert s.overlong == []  # reported when its end arrives
    assert s.feed(b"efg") == []
    assert s.feed(b"\nxy") == []
    assert s.overlong == [7]
    assert s.feed(b"z\n") == [b"xyz"]
    assert s.overlong == [7]


def test_overlong_cleared_by_caller() -> None:
    s = LineSplitter(2)
    s.feed(b"abc\n")
    assert s.overlong == [3]
    s.overlong.clear()
    assert s.feed(b"de\nfgh\n") == [b"de"]
    assert s.overlong == [3]


def test_overlong_pending_tail_then_newline_at_start_of_next_chunk() -> None:
    s = LineSplitter(3)
    assert s.feed(b"ok\nabcdef") == [b"ok"]
    assert s.pending == 0
    assert s.feed(b"\n\nz\n") == [b"", b"z"]
    assert s.overlong == [6]


def test_max_line_zero_keeps_only_empty_lines() -> None:
    assert run([b"\na\n\nbc\n"], 0) == ([b"", b""], [1, 2], 0)
    assert run(one_by_one(b"\na\n\nbc\n"), 0) == ([b"", b""], [1, 2], 0)


# ------------------------------------------------------------------ property-based


@FAST
@given(
    data=st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
    max_line=st.integers(min_value=0, max_value=20),
)
def test_random_chunkings_match_split(data: bytes, cuts: list[int], max_line: int) -> None:
    assert run(split_at(data, cuts), max_line) == expected(data, max_line)


@FAST
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    tail=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    data=st.data(),
)
def test_random_chunkings_no_limit(lines: list[bytes], tail: bytes, data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines) + tail
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    out, overlong, pending = run(split_at(stream, cuts), 1 << 20)
    assert out == lines == stream.split(b"\n")[:-1]
    assert overlong == []
    assert pending == len(tail)


@FAST
@given(
    data=st.binary(max_size=120).map(lambda b: b.replace(b"\x00", b"\n")),
    max_line=st.integers(min_value=0, max_value=10),
)
def test_one_byte_chunks_match_whole(data: bytes, max_line: int) -> None:
    assert run(one_by_one(data), max_line) == run([data], max_line) == expected(data, max_line)


# ------------------------------------------------------------------ no rescan


def test_does_not_rescan_partial_line() -> None:
    """A long partial line fed 1 byte at a time must cost O(new bytes) per
    feed. A splitter that searched (or copied) its whole partial line on each
    feed would do ~10^11 byte operations here; the real one does ~10^5."""
    s = LineSplitter(1 << 24)
    start = time.perf_counter()
    s.feed(b"x" * 1_000_000)
    for _ in range(100_000):
        assert not s.feed(b"y")
    lines = s.feed(b"\n")
    elapsed = time.perf_counter() - start
    assert lines == [b"x" * 1_000_000 + b"y" * 100_000]
    assert s.pending == 0
    assert elapsed < 5.0, f"100k 1-byte feeds took {elapsed:.1f} s: partial line rescanned?"


def test_does_not_rescan_while_discarding() -> None:
    s = LineSplitter(1000)
    start = time.perf_counter()
    s.feed(b"x" * 1_000_000)
    for _ in range(100_000):
        assert not s.feed(b"y")
    assert s.feed(b"\nok\n") == [b"ok"]
    assert time.perf_counter() - start < 5.0
    assert s.overlong == [1_100_000]


@pytest.mark.parametrize("max_line", [1, 16, 1 << 24])
def test_many_lines_in_one_chunk(max_line: int) -> None:
    data = b"ab\n" * 10_000
    s = LineSplitter(max_line)
    out = s.feed(data)
    if max_line >= 2:
        assert out == [b"ab"] * 10_000
    else:
        assert out == []
        assert s.overlong == [2] * 10_000
