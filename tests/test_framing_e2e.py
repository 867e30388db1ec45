"""End to end in the framed modes (--framing): real sockets, real handler
processes (examples/echo.py and echo.js, chat.py and chat.js)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tgate.server import Conn, Gateway

from conftest import example, expect, recv_exactly, requires, wait_for

ECHOES = [
    pytest.param(example("echo.py"), id="py"),
    pytest.param(example("echo.js"), id="js", marks=requires("node")),
]
CHATS = [
    pytest.param(example("chat.py"), id="py"),
    pytest.param(example("chat.js"), id="js", marks=requires("node")),
]
MODES = ["line", "crlf", "packet2", "packet4", "netstring"]


def p2(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def p4(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def ns(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


BINARY = bytes(range(0, 256, 9)) + b"\n\r\x00\xff"
PAYLOADS = [b"hello", b"", BINARY, b"x,:9"]
#: per mode: what a client sends (several frames), and the echo it must get back
STREAMS: dict[str, tuple[bytes, bytes]] = {
    # CR before LF is stripped on the way in; writes get LF (line) or CRLF (crlf).
    "line": (
        b"hello\r\n\nw\x00rld\xff\x80\r\r\nlast\n",
        b"hello\n\nw\x00rld\xff\x80\r\nlast\n",
    ),
    "crlf": (
        b"hello\r\n\nw\x00rld\xff\x80\r\r\nlast\n",
        b"hello\r\n\r\nw\x00rld\xff\x80\r\r\nlast\r\n",
    ),
    "packet2": (b"".join(map(p2, PAYLOADS)),) * 2,
    "packet4": (b"".join(map(p4, PAYLOADS)),) * 2,
    "netstring": (b"".join(map(ns, PAYLOADS)),) * 2,
}
#: a frame as tgate writes it in each mode
FRAME: dict[str, Callable[[bytes], bytes]] = {
    "line": lambda p: p + b"\n",
    "crlf": lambda p: p + b"\r\n",
    "packet2": p2,
    "packet4": p4,
    "netstring": ns,
}
#: a frame as a client may send it (crlf mode accepts a bare LF)
SEND = {**FRAME, "crlf": FRAME["line"]}


async def conn_of(gw: Gateway, stream: trio.SocketStream) -> Conn:
    """The gateway's side of a client connection."""
    port = stream.socket.getsockname()[1]
    with trio.fail_after(10):
        while True:
            for conn in list(gw.conns):
                if conn.client.peer[1] == port:
                    return conn
            await trio.sleep(0.001)


async def send_and_wait_read(conn: Conn, stream: trio.SocketStream, data: bytes) -> None:
    """Send bytes and wait until the gateway has read them (in one recv or more),
    so that the next bytes arrive in another read: a real split. Needs a
    gateway with an idle timeout (only then is last_read kept)."""
    if not data:
        return
    last = conn.last_read
    await stream.send_all(data)
    with trio.fail_after(10):
        while conn.last_read == last and not conn.closed:
            await trio.sleep(0)


async def recv_rest(stream: trio.SocketStream) -> bytes:
    """Everything until EOF; a reset counts as the end too (the gateway closed
    a connection whose input it had not read)."""
    buf = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(buf)
        if not chunk:
            return bytes(buf)
        buf += chunk


async def echo_split(gw: Gateway, port: int, sent: bytes, echoed: bytes, k: int) -> None:
    """One connection: sent[:k], read by the gateway, then sent[k:]; the echo
    comes back exactly; after our half-close the handler closes us."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as s:
        conn = await conn_of(gw, s)
        await send_and_wait_read(conn, s, sent[:k])
        await s.send_all(sent[k:])
        assert await recv_exactly(s, len(echoed)) == echoed, k
        await s.send_eof()
        assert await recv_rest(s) == b"", k


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler", ECHOES)
async def test_echo_split_at_every_byte_boundary(gateway: Any, handler: str, mode: str) -> None:
    sent, echoed = STREAMS[mode]
    with trio.fail_after(60):
        # An idle timeout makes the gateway note when it reads (conn.last_read),
        # which send_and_wait_read watches; an hour never fires here.
        async with gateway(handler, framing=mode, idle_timeout=3600) as (gw, port):
            # Every 2-piece split, 8 connections at a time.
            limit = trio.CapacityLimiter(8)

            async def one(k: int) -> None:
                async with limit:
                    await echo_split(gw, port, sent, echoed, k)

            async with trio.open_nursery() as nursery:
                for k in range(len(sent) + 1):
                    nursery.start_soon(one, k)

            # And one byte at a time: every boundary in one stream.
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                conn = await conn_of(gw, s)
                for i in range(len(sent)):
                    await send_and_wait_read(conn, s, sent[i : i + 1])
                assert await recv_exactly(s, len(echoed)) == echoed
                await s.send_eof()
                assert await recv_rest(s) == b""


@pytest.mark.parametrize("mode", ["packet2", "packet4", "netstring"])
@pytest.mark.parametrize("handler", ECHOES)
async def test_binary_frames_round_trip(gateway: Any, handler: str, mode: str) -> None:
    frames = [bytes(range(256)), bytes(range(255, -1, -1)) * 40, b"\x00" * 3, b""]
    wire = b"".join(FRAME[mode](f) for f in frames)
    with trio.fail_after(20):
        async with gateway(handler, framing=mode) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                for i in range(0, len(wire), 1000):
                    await s.send_all(wire[i : i + 1000])
                assert await recv_exactly(s, len(wire)) == wire
                await s.send_eof()
                assert await recv_rest(s) == b""


@pytest.mark.parametrize("handler", ECHOES)
async def test_half_close_in_line_mode(gateway: Any, handler: str) -> None:
    with trio.fail_after(20):
        async with gateway(handler, framing="line") as (_gw, port):
            for sent, echoed in [
                (b"hello\n", b"hello\n"),
                (b"hello", b"hello\n"),  # an unterminated last line is still a line
                (b"one\r\ntwo\r", b"one\ntwo\n"),
                (b"", b""),
            ]:
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    await s.send_all(sent)
                    await s.send_eof()
                    # the echo, then the handler's close (after its eof)
                    assert await recv_rest(s) == echoed, sent


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handler", ECHOES)
async def test_frame_larger_than_max_bufsize_disconnects_only_that_client(
    gateway: Any, handler: str, mode: str
) -> None:
    max_bufsize = 1024
    # The largest frame that fits (delimiter or prefix included) passes...
    fits = {"line": 1023, "crlf": 1023, "packet2": 1022, "packet4": 1020, "netstring": 1018}[mode]
    # ...one byte more disconnects, as soon as the prefix says so or the line
    # outgrows the buffer.
    too_big: dict[str, bytes] = {
        "line": b"y" * 1024 + b"\n",
        "crlf": b"y" * 1023 + b"\r\n",  # the CR counts until it is stripped
        "packet2": struct.pack(">H", fits + 1),
        "packet4": struct.pack(">I", 10**6),
        "netstring": b"%d:" % (fits + 1),
    }
    with trio.fail_after(20):
        async with gateway(handler, framing=mode, max_bufsize=max_bufsize) as (gw, port):
            async with (
                await trio.open_tcp_stream("127.0.0.1", port) as other,
                await trio.open_tcp_stream("127.0.0.1", port) as big,
            ):
                await other.send_all(SEND[mode](b"before"))
                await expect(other, FRAME[mode](b"before"))
                frame = SEND[mode](b"z" * fits)
                assert len(frame) == max_bufsize
                await big.send_all(frame)
                await expect(big, FRAME[mode](b"z" * fits))
                await big.send_all(too_big[mode])
                assert await recv_rest(big) == b""  # disconnected
                await wait_for(lambda: len(gw.conns) == 1)
                await other.send_all(SEND[mode](b"after"))
                await expect(other, FRAME[mode](b"after"))


@pytest.mark.parametrize("handler", ECHOES)
@pytest.mark.parametrize("bad", [b"abc:", b"3:abcX", b"03:abc,", b":", b"1x", b"12345678901"])
async def test_malformed_netstring_disconnects(gateway: Any, handler: str, bad: bytes) -> None:
    with trio.fail_after(20):
        async with gateway(handler, framing="netstring") as (gw, port):
            async with (
                await trio.open_tcp_stream("127.0.0.1", port) as other,
                await trio.open_tcp_stream("127.0.0.1", port) as s,
            ):
                await s.send_all(b"2:ok,")
                await expect(s, b"2:ok,")
                await s.send_all(bad)
                assert await recv_rest(s) == b""  # disconnected
                await wait_for(lambda: len(gw.conns) == 1)
                await other.send_all(b"5:still,")
                await expect(other, b"5:still,")


# ---- chat: the same bytes in raw and line framing ----------------------------


@pytest.mark.parametrize("framing", ["raw", "line"])
@pytest.mark.parametrize("handler", CHATS)
async def test_chat_same_bytes_in_raw_and_line_framing(
    gateway: Any, handler: str, framing: str
) -> None:
    """Three clients. Every expect() reads exact bytes, so the clients get the
    same bytes whether the handler splits the lines (raw) or tgate does (line)."""
    with trio.fail_after(30):
        async with gateway(handler, framing=framing) as (gw, port):
            a = await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: len(gw.conns) == 1)
            b = await trio.open_tcp_stream("127.0.0.1", port)
            await expect(a, b"* 2 joined\n")
            c = await trio.open_tcp_stream("127.0.0.1", port)
            await expect(a, b"* 3 joined\n")
            await expect(b, b"* 3 joined\n")
            await a.send_all(b"hel")
            await a.send_all(b"lo\r\nsecond line\n\n")
            lines = b"1: hello\n1: second line\n1: \n"
            await expect(b, lines)
            await expect(c, lines)
            await b.send_all(b"\xe9\x00\xff \r\r\n")
            await expect(a, b"2: \xe9\x00\xff \r\n")
            await expect(c, b"2: \xe9\x00\xff \r\n")
            # c half-closes after an unterminated line: it is still a line, then c is closed
            await c.send_all(b"bye\r")
            await c.send_eof()
            assert await recv_rest(c) == b""
            await expect(a, b"3: bye\n* 3 left\n")
            await expect(b, b"3: bye\n* 3 left\n")
            await a.aclose()  # a full close
            await expect(b, b"* 1 left\n")
            await b.send_all(b"alone\n")
            await b.send_eof()
            assert await recv_rest(b) == b""  # nothing for b: nobody else is here
            await b.aclose()
            await c.aclose()
