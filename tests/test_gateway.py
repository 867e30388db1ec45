"""End to end: real sockets on port 0, real handler processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from tgate.protocol import quote

from conftest import (
    example,
    expect,
    read_log,
    recv_exactly,
    recv_until_eof,
    requires,
    scripted,
    wait_for,
)

ECHOES = [
    pytest.param(example("echo.py"), id="py"),
    pytest.param(example("echo.js"), id="js", marks=requires("node")),
    # no adapter: docs/protocol.md alone
    pytest.param(example("echo.pl"), id="pl", marks=requires("perl")),
]
CHATS = [
    pytest.param(example("chat.py"), id="py"),
    pytest.param(example("chat.js"), id="js", marks=requires("node")),
]


@pytest.mark.parametrize("handler", CHATS)
async def test_chat_joins_messages_and_leaves(gateway, handler: str) -> None:
    with trio.fail_after(20):
        async with gateway(handler) as (gw, port):
            a = await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: len(gw.conns) == 1)
            b = await trio.open_tcp_stream("127.0.0.1", port)
            await expect(a, b"* 2 joined\n")
            c = await trio.open_tcp_stream("127.0.0.1", port)
            await expect(a, b"* 3 joined\n")
            await expect(b, b"* 3 joined\n")
            await a.send_all(b"hel")
            await a.send_all(b"lo\r\nsecond line\n")
            expected = b"1: hello\n1: second line\n"
            assert await recv_exactly(b, len(expected)) == expected
            assert await recv_exactly(c, len(expected)) == expected
            await c.aclose()
            await expect(a, b"* 3 left\n")
            await expect(b, b"* 3 left\n")
            await b.send_all(b"bye\n")
            await expect(a, b"2: bye\n")
            # The sender never hears its own lines.
            with trio.move_on_after(0.2):
                assert await b.receive_some(100) == b"", "b got its own line back"
            await a.aclose()
            await b.aclose()


@pytest.mark.parametrize("handler", ECHOES)
async def test_hundred_clients_each_get_their_own_echo(gateway, handler: str) -> None:
    with trio.fail_after(30):
        async with gateway(handler) as (_gw, port):
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                payload = (f"client {i}: " + "x" * (i * 37 % 500) + "\n").encode() * 3
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    for k in range(0, len(payload), 97):  # in pieces
                        await s.send_all(payload[k : k + 97])
                    results[i] = await recv_exactly(s, len(payload))
                assert results[i] == payload

            async with trio.open_nursery() as n:
                for i in range(100):
                    n.start_soon(one, i)
            assert len(results) == 100


@pytest.mark.parametrize("handler", ECHOES)
async def test_binary_bytes_round_trip(gateway, handler: str) -> None:
    with trio.fail_after(20):
        async with gateway(handler) as (_gw, port):
            payload = bytes(range(256)) * 40
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(payload)
                assert await recv_exactly(s, len(payload)) == payload


@pytest.mark.parametrize("handler", ECHOES)
async def test_half_close_delivers_then_closes(gateway, handler: str) -> None:
    with trio.fail_after(20):
        async with gateway(handler) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"hello\n")
                await s.send_eof()
                assert await recv_until_eof(s) == b"hello\n"


async def test_half_close_last_partial_message_reaches_handler(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile)) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"one\ntwo-without-newline")
                await s.send_eof()
                assert await recv_until_eof(s) == b"one\n"
            await wait_for(lambda: any(m["op"] == "disconnect" for m in read_log(logfile)))
    msgs = [m for m in read_log(logfile) if m.get("id") == 1]
    assert msgs[-1] == {"op": "disconnect", "id": 1, "reason": "eof"}
    eofs = [m for m in msgs if m.get("eof")]
    assert len(eofs) == 1
    sent = "".join(m["data"] for m in msgs if m["op"] == "data")
    assert sent == "one\ntwo-without-newline"


async def test_client_that_never_reads_does_not_slow_others(gateway) -> None:
    with trio.fail_after(30):
        # Reading pauses at half of max_output; what is already in flight
        # (one data message and a full buffer, 64 KiB each, echoed) can add
        # 128 KiB after that, so 512 KiB is never reached: no "slow" here.
        async with gateway(example("echo.py"), max_output=512 * 1024) as (gw, port):
            hog = socket.create_connection(("127.0.0.1", port))
            hog.setblocking(False)
            sent = 0
            chunk = b"z" * 65536
            # Fill the hog's socket buffers and its output queue: it never reads.
            for _ in range(400):
                try:
                    sent += hog.send(chunk)
                except BlockingIOError:
                    await trio.sleep(0.01)
            hog_conn = next(iter(gw.conns))
            assert hog_conn.client.out, "the hog's output should be queued"
            # Meanwhile others are served promptly.
            for i in range(20):
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    msg = f"ping {i}\n".encode()
                    await s.send_all(msg)
                    with trio.fail_after(5):
                        assert await recv_exactly(s, len(msg)) == msg
            # The hog's queued output is bounded by --max-output.
            assert len(hog_conn.client.out) <= 512 * 1024
            assert hog_conn.client.closing is None
            hog.close()


async def test_overflow_disconnects_and_tells_handler(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile, "never"), max_bufsize=1024) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"a" * 1500)
                assert await recv_until_eof(s) == b""
            await wait_for(lambda: any(m["op"] == "disconnect" for m in read_log(logfile)))
    msgs = read_log(logfile)
    assert {"op": "disconnect", "id": 1, "reason": "overflow"} in msgs
    assert sum(len(m["data"]) for m in msgs if m["op"] == "data") == 1024


async def test_buffer_grows_from_bufsize_to_hold_a_long_message(gateway, tmp_path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile), bufsize=16, max_bufsize=256) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"b" * 200 + b"\n")
                assert await recv_exactly(s, 201) == b"b" * 200 + b"\n"
    sizes = [len(m["data"]) for m in read_log(logfile) if m["op"] == "data"]
    # Nothing is consumed before the newline, so the handler holds the running
    # sum: the first read took at most the initial room, and the buffer grew
    # (by doubling) to hold all 201 bytes, never past max_bufsize.
    assert sum(sizes) == 201
    assert sizes[0] <= 16
    assert len(sizes) > 1


INVALID_LINES = [
    ("not json", "not protocol"),
    ('{"op":"explode","id":1}', "unknown op 'explode'"),
    ('{"op":"write","data":"x"}', "missing field 'id'"),
    ('{"op":"write","id":"1","data":"x"}', "must be an integer client id"),
    ('{"op":"write","id":999,"data":"x"}', "never issued"),
    ('{"op":"write","id":1,"data":"\\u0100"}', "U+0100"),
    ('{"op":"consumed","id":"x","n":1}', "must be an integer client id"),
    ("[1]", "expected a JSON object"),
]


@pytest.mark.parametrize(("line", "complaint"), INVALID_LINES)
async def test_invalid_handler_line_is_logged_and_harmless(
    gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture, line: str, complaint: str
) -> None:
    caplog.set_level(logging.INFO, logger="tgate")
    with trio.fail_after(20):
        async with gateway(scripted(tmp_path / "log")) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as a:
                await a.send_all(b"before\n")
                assert await recv_exactly(a, 7) == b"before\n"
                await a.send_all(f"EMIT {line}\n".encode())
                async with await trio.open_tcp_stream("127.0.0.1", port) as b:
                    await b.send_all(b"other\n")
                    assert await recv_exactly(b, 6) == b"other\n"
                await a.send_all(b"after\n")
                assert await recv_exactly(a, 6) == b"after\n"
    quoted = quote(line.encode())
    hits = [r.getMessage() for r in caplog.records if quoted in r.getMessage()]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]
    assert complaint in hits[0]


async def test_write_to_closed_client_is_logged(gateway, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tgate")
    with trio.fail_after(20):
        async with gateway(scripted(tmp_path / "log")) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as a:
                await a.send_all(b"x\n")
                await recv_exactly(a, 2)
            await wait_for(lambda: any(m["op"] == "disconnect" for m in read_log(tmp_path / "log")))
            async with await trio.open_tcp_stream("127.0.0.1", port) as b:
                await b.send_all(b'EMIT {"op":"write","id":1,"data":"late"}\nok\n')
                assert await recv_exactly(b, 3) == b"ok\n"
    assert any("client is closed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("n", ["-1", "1000000", "1.5", '"3"', "null"])
async def test_bad_consumed_count_closes_only_that_client(gateway, tmp_path, caplog, n) -> None:
    # A mistyped n is not a line to drop: the client would wait forever for
    # the reply it stands for (issue 11.7).
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile)) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as other:
                async with await trio.open_tcp_stream("127.0.0.1", port) as a:
                    await a.send_all(b"hi\n")
                    await recv_exactly(a, 3)
                    await a.send_all(f'EMIT {{"op":"consumed","id":2,"n":{n}}}\n'.encode())
                    assert await recv_until_eof(a) == b""
                await other.send_all(b"still here\n")
                assert await recv_exactly(other, 11) == b"still here\n"
    assert {"op": "disconnect", "id": 2, "reason": "error"} in read_log(logfile)
    assert any(f"n={n}" in r.getMessage() or f"not {json.loads(n)!r}" in r.getMessage()
               for r in caplog.records)


async def test_ticks_reach_the_handler(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile), update_time=0.05):
            await wait_for(lambda: sum(m["op"] == "tick" for m in read_log(logfile)) >= 3)
    assert read_log(logfile)[0]["op"] == "hello"


async def test_crashed_handler_is_replaced_and_replayed(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile)) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"abc")  # mid-message
                await wait_for(lambda: any(m["op"] == "data" for m in read_log(logfile)))
                pid = gw.handler_pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await wait_for(lambda: gw.handler_pid not in (None, pid))
                await s.send_all(b"def\n")
                assert await recv_exactly(s, 7) == b"abcdef\n"
    hellos = [m for m in read_log(logfile) if m["op"] == "hello"]
    assert len(hellos) == 2
