"""Bounded under load: limits, slow peers, floods and hostile input."""

from __future__ import annotations

import logging
import random
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import tgate.core

from conftest import (
    FIXTURES,
    PY,
    example,
    read_log,
    recv_exactly,
    recv_until_eof,
    scripted,
    wait_for,
)


async def test_max_clients_holds_new_connections_in_the_backlog(gateway) -> None:
    with trio.fail_after(20):
        async with gateway(example("echo.py"), max_clients=3) as (gw, port):
            first = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
            await wait_for(lambda: len(gw.conns) == 3)
            waiting = await trio.open_tcp_stream("127.0.0.1", port)  # in the backlog
            await waiting.send_all(b"queued\n")
            with trio.move_on_after(0.5) as cs:
                await waiting.receive_some(100)
            assert cs.cancelled_caught, "served beyond --max-clients"
            assert len(gw.conns) == 3
            await first[0].aclose()
            assert await recv_exactly(waiting, 7) == b"queued\n"  # accepted on its own
            for s in [*first[1:], waiting]:
                await s.aclose()


async def test_max_clients_per_ip_refuses_the_extra_one(gateway, caplog) -> None:
    with trio.fail_after(20):
        async with gateway(example("echo.py"), max_clients_per_ip=2) as (gw, port):
            a = await trio.open_tcp_stream("127.0.0.1", port)
            b = await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: len(gw.conns) == 2)
            c = await trio.open_tcp_stream("127.0.0.1", port)
            assert await recv_until_eof(c) == b""
            await a.send_all(b"a\n")
            assert await recv_exactly(a, 2) == b"a\n"
            await a.aclose()
            await wait_for(lambda: len(gw.conns) == 1)
            d = await trio.open_tcp_stream("127.0.0.1", port)  # room again
            await d.send_all(b"d\n")
            assert await recv_exactly(d, 2) == b"d\n"
            for s in (b, c, d):
                await s.aclose()
    assert any("--max-clients-per-ip" in r.getMessage() for r in caplog.records)


async def test_idle_timeout_closes_silent_clients_only(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile), idle_timeout=0.4) as (_gw, port):
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            async with await trio.open_tcp_stream("127.0.0.1", port) as chatty:
                for _ in range(10):
                    await chatty.send_all(b"hi\n")
                    assert await recv_exactly(chatty, 3) == b"hi\n"
                    await trio.sleep(0.1)
                assert await recv_until_eof(silent) == b""
            await silent.aclose()
    assert {"op": "disconnect", "id": 1, "reason": "idle"} in read_log(logfile)


async def test_slow_handler_pipe_stops_reading_clients(gateway, monkeypatch) -> None:
    monkeypatch.setattr(tgate.core, "PIPE_HIGH_WATER", 2000)
    sleepy = f"sh -c 'sleep 1; exec {example('echo.py')}'"
    with trio.fail_after(30):
        # Big first reads, so that 40 first messages overfill the kernel pipe.
        async with gateway(sleepy, bufsize=8192) as (gw, port):
            streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(40)]
            payload = b"p" * 5000 + b"\n"
            for s in streams:
                await s.send_all(payload)
            # While the handler sleeps, the gateway stops reading: readers park.
            await wait_for(lambda: len(gw.clients.parked) > 0)
            # At most one more message than the high-water mark got queued.
            assert gw.core.outbox_size + gw.core.pipe_pending < 2000 + 8 * 1024
            for s in streams:
                assert await recv_exactly(s, len(payload)) == payload
                await s.aclose()


async def test_handler_flooding_a_non_reader_disconnects_it_as_slow(gateway, tmp_path,
                                                                    caplog) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(30):
        async with gateway(scripted(logfile), max_output=256 * 1024) as (_gw, port):
            hog = socket.create_connection(("127.0.0.1", port))
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.sendall(b"FLOOD 200\n")  # 12.5 MiB, never read
            await wait_for(lambda: {"op": "disconnect", "id": 1, "reason": "slow"}
                           in read_log(logfile))
            hog.close()
            async with await trio.open_tcp_stream("127.0.0.1", port) as ok:
                await ok.send_all(b"fine\n")
                assert await recv_exactly(ok, 5) == b"fine\n"
    assert any("(slow)" in r.getMessage() for r in caplog.records)


async def test_overlong_handler_line_is_dropped(gateway, tmp_path, caplog) -> None:
    with trio.fail_after(60):
        async with gateway(scripted(tmp_path / "log")) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"LONGLINE 17000000\nafter\n")
                assert await recv_exactly(s, 6) == b"after\n"
            assert gw.restarts == 0
    assert any("longer than" in r.getMessage() for r in caplog.records)


async def test_hostile_clients_and_handler_leave_a_good_client_served(gateway, caplog) -> None:
    """200 clients send random bytes, some vanish mid-write; the handler emits
    random valid and invalid lines. Then a well-behaved client is served."""
    caplog.set_level(logging.CRITICAL, logger="tgate")  # thousands of expected complaints
    rng = random.Random(1234)
    handler = f"{PY} {FIXTURES / 'chaos_handler.py'} 7 200"
    with trio.fail_after(90):
        async with gateway(handler, max_bufsize=4096) as (gw, port):

            async def hostile(i: int) -> None:
                try:
                    s = socket.create_connection(("127.0.0.1", port))
                    s.setblocking(False)
                    for _ in range(rng.randrange(1, 6)):
                        blob = rng.randbytes(rng.randrange(1, 3000))
                        if rng.random() < 0.5:
                            blob += b"\n"
                        try:
                            s.send(blob)
                        except (BlockingIOError, OSError):
                            break
                        await trio.sleep(rng.random() * 0.01)
                    if rng.random() < 0.3:  # vanish with a reset mid-stream
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.close()
                except OSError:
                    pass

            async with trio.open_nursery() as n:
                for i in range(200):
                    n.start_soon(hostile, i)
            await wait_for(lambda: not gw.conns, 30)
            async with await trio.open_tcp_stream("127.0.0.1", port) as good:
                for k in range(20):
                    msg = f"good {k}\n".encode()
                    await good.send_all(msg)
                    assert await recv_exactly(good, len(msg)) == msg
            assert gw.restarts == 0


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, "
        f"{hard})); from tgate.cli import _raise_nofile_limit; _raise_nofile_limit(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert int(out) == expected
