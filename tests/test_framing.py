"""The built-in framers and the core in framed modes, with plain bytes."""

from __future__ import annotations

import logging

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgate.core import Core, Settings
from tgate.framing import (
    CrlfFramer,
    FrameError,
    Framer,
    FrameTooLarge,
    LineFramer,
    NetstringFramer,
    Packet2Framer,
    Packet4Framer,
    framer_class,
)

PEER = ("127.0.0.1", 5000)
LOCAL = ("127.0.0.1", 7000)
MODES = {
    "line": LineFramer,
    "crlf": CrlfFramer,
    "packet2": Packet2Framer,
    "packet4": Packet4Framer,
    "netstring": NetstringFramer,
}


def wire(framer: type[Framer], payloads: list[bytes]) -> bytes:
    return b"".join(framer.encode(p) for p in payloads)


def run(framer: Framer, chunks: list[bytes], max_size: int = 1 << 16) -> list[bytes]:
    """Feed chunks as the core does: append, split, drop what was used."""
    buf = bytearray()
    out: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        frames, used = framer.split(buf, max_size)
        del buf[:used]
        out += frames
    return out


SAMPLES: dict[str, list[bytes]] = {
    "line": [b"hello", b"", b"with\x00nul", b"\xff\xfe", b"x" * 300],
    "crlf": [b"hello", b"", b"with\x00nul", b"x" * 300],
    "packet2": [b"hello", b"", b"\n\r\x00", bytes(range(256)), b"y" * 1000],
    "packet4": [b"hello", b"", b"\n\r\x00", bytes(range(256)), b"y" * 1000],
    "netstring": [b"hello", b"", b"1:2,3", bytes(range(256)), b"z" * 1000],
}


@pytest.mark.parametrize("mode", MODES)
def test_every_split_point_gives_the_same_frames(mode: str) -> None:
    payloads = SAMPLES[mode]
    stream = wire(MODES[mode], payloads)
    for k in range(len(stream) + 1):
        assert run(MODES[mode](), [stream[:k], stream[k:]]) == payloads, k


@pytest.mark.parametrize("mode", MODES)
def test_one_byte_at_a_time(mode: str) -> None:
    payloads = SAMPLES[mode]
    stream = wire(MODES[mode], payloads)
    assert run(MODES[mode](), [stream[i : i + 1] for i in range(len(stream))]) == payloads


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(sorted(MODES)),
    st.lists(st.binary(max_size=300), max_size=20),
    st.data(),
)
def test_random_chunkings_round_trip(mode: str, payloads: list[bytes], data: st.DataObject) -> None:
    if mode in ("line", "crlf"):  # payloads of a line framing hold no LF, end with no CR
        payloads = [p.replace(b"\n", b"").rstrip(b"\r") for p in payloads]
    stream = wire(MODES[mode], payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert run(MODES[mode](), chunks) == payloads


def test_crlf_input_is_stripped_and_lf_alone_accepted() -> None:
    assert run(LineFramer(), [b"a\r\nb\nc\r\r\n"]) == [b"a", b"b", b"c\r"]
    assert LineFramer.encode(b"x") == b"x\n"
    assert CrlfFramer.encode(b"x") == b"x\r\n"


def test_line_framer_does_not_rescan_held_bytes() -> None:
    framer = LineFramer()
    buf = bytearray(b"a" * 1000)
    assert framer.split(buf, 1 << 20) == ([], 0)
    # Plant a newline in the already-searched region: a rescan would find it.
    buf[10] = 10
    buf += b"bbb"
    assert framer.split(buf, 1 << 20) == ([], 0)
    buf += b"\n"
    frames, used = framer.split(buf, 1 << 20)
    assert used == len(buf) and len(frames) == 1


def test_line_longer_than_max_is_too_large() -> None:
    with pytest.raises(FrameTooLarge):
        LineFramer().split(bytearray(b"x" * 100), 100)
    assert LineFramer().split(bytearray(b"x" * 99 + b"\n"), 100) == ([b"x" * 99], 100)


@pytest.mark.parametrize(("framer", "header"), [(Packet2Framer, b"\x00\x65"),
                                                (Packet4Framer, b"\x00\x00\x00\x65")])
def test_packet_too_large_is_known_from_the_header(framer: type[Framer], header: bytes) -> None:
    with pytest.raises(FrameTooLarge):
        framer().split(bytearray(header), 100)


def test_packet2_write_too_large_cannot_be_framed() -> None:
    with pytest.raises(FrameError):
        Packet2Framer.encode(b"x" * 65536)
    assert len(Packet2Framer.encode(b"x" * 65535)) == 65537


@pytest.mark.parametrize("bad", [b"x:abc,", b"3:abcd", b"-1:,", b"01:a,", b"12345678901:"])
def test_malformed_netstrings(bad: bytes) -> None:
    with pytest.raises(FrameError):
        NetstringFramer().split(bytearray(bad), 1 << 20)


def test_netstring_waits_for_more_without_error() -> None:
    assert NetstringFramer().split(bytearray(b"12"), 100) == ([], 0)
    assert NetstringFramer().split(bytearray(b"5:ab"), 100) == ([], 0)
    assert NetstringFramer().split(bytearray(b"5:abcde"), 100) == ([], 0)


def test_unknown_framing_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown framing"):
        framer_class("xml")
    with pytest.raises(ValueError):
        Settings(framing="xml")


# ------------------------------------------------------------------ core


def framed_core(mode: str = "line", **kw: object) -> Core:
    core = Core(Settings(framing=mode, **kw))  # type: ignore[arg-type]
    core.handler_started()
    return core


def sent(core: Core) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in core.take_outbox().splitlines()]


def test_core_sends_frames_and_needs_no_reply() -> None:
    core = framed_core()
    assert sent(core)[0]["framing"] == "line"
    c = core.connect(PEER, LOCAL)
    sent(core)
    core.received(c, b"one\ntw")
    core.received(c, b"o\nthr")
    assert sent(core) == [{"op": "frame", "id": 1, "data": "one"},
                          {"op": "frame", "id": 1, "data": "two"}]
    assert core.owed == 0
    assert bytes(c.buffer) == b"thr"


def test_core_frames_writes_and_honours_raw() -> None:
    core = framed_core("packet2")
    c = core.connect(PEER, LOCAL)
    core.handler_line(b'{"op":"write","id":1,"data":"hi"}')
    core.handler_line(b'{"op":"write","id":1,"data":"> ","raw":true}')
    assert bytes(c.out) == b"\x00\x02hi> "


def test_core_rejects_consumed_in_framed_mode(caplog: pytest.LogCaptureFixture) -> None:
    core = framed_core()
    c = core.connect(PEER, LOCAL)
    core.received(c, b"x\n")
    core.handler_line(b'{"op":"consumed","id":1,"n":2}')
    assert c.closing is None
    assert any("only for --framing raw" in r.getMessage() for r in caplog.records)


def test_core_eof_delivers_last_line_then_eof() -> None:
    core = framed_core()
    c = core.connect(PEER, LOCAL)
    sent(core)
    core.received(c, b"a\nlast")
    core.received_eof(c)
    assert sent(core) == [{"op": "frame", "id": 1, "data": "a"},
                          {"op": "frame", "id": 1, "data": "last"},
                          {"op": "eof", "id": 1}]
    assert c.closing is None  # the handler closes it


def test_core_eof_drops_incomplete_packet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgate")
    core = framed_core("packet2")
    c = core.connect(PEER, LOCAL)
    sent(core)
    core.received(c, b"\x00\x05ab")
    core.received_eof(c)
    assert sent(core) == [{"op": "eof", "id": 1}]
    assert any("incomplete packet2 frame of 4 bytes" in r.getMessage() for r in caplog.records)


def test_core_overflow_and_malformed_close_the_client() -> None:
    core = framed_core("line", max_bufsize=64, bufsize=64)
    c = core.connect(PEER, LOCAL)
    core.received(c, b"x" * 64)
    assert c.closing == "overflow"
    core = framed_core("netstring")
    c = core.connect(PEER, LOCAL)
    core.received(c, b"3:abc;")
    assert c.closing == "malformed"


def test_core_framed_crash_replays_partial_frames_not_sent_ones() -> None:
    core = framed_core(quarantine_after=2)
    c = core.connect(PEER, LOCAL)
    core.received(c, b"sent\npart")
    sent(core)
    core.handler_lost(crashed=True)
    assert c.strikes == 1  # a frame went out after the handler's last output
    core.handler_started()
    msgs = sent(core)
    assert [m["op"] for m in msgs] == ["hello", "connect"]
    core.received(c, b"ial\n")
    assert sent(core) == [{"op": "frame", "id": 1, "data": "partial"}]
    core.handler_output(b"[]\n")  # output after the frame: no longer in flight
    core.handler_lost(crashed=True)
    assert c.strikes == 0


@pytest.mark.parametrize(("mode", "stream", "reason"), [
    ("netstring", b"2:ok,abc:", "malformed"),
    ("packet2", b"\x00\x02ok\xff\xff", "overflow"),
    ("line", b"ok\n" + b"x" * 70, "overflow"),
])
def test_frames_before_bad_bytes_are_still_delivered(mode: str, stream: bytes,
                                                     reason: str) -> None:
    core = framed_core(mode, max_bufsize=64, bufsize=64)
    c = core.connect(PEER, LOCAL)
    sent(core)
    msgs = []
    while stream and c.closing is None:  # read as the shell does: at most room()
        take = c.buffer.room()
        core.received(c, stream[:take])
        stream = stream[take:]
        msgs += sent(core)
    assert msgs == [{"op": "frame", "id": 1, "data": "ok"}]
    assert c.closing == reason
