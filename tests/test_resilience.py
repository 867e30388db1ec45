"""A crashing, hanging or replaced handler never costs a client its connection."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from conftest import example, read_log, recv_exactly, recv_until_eof, requires, scripted, wait_for

ECHOES = [
    pytest.param(example("echo.py"), id="py"),
    pytest.param(example("echo.js"), id="js", marks=requires("node")),
]


@pytest.mark.parametrize("handler", ECHOES)
async def test_fifty_clients_survive_kills_and_reloads(gateway, handler: str) -> None:
    """50 clients in a closed loop of numbered requests while the handler is
    SIGKILLed four times and reloaded twice: nobody is disconnected and every
    request gets exactly one correct reply, in order."""
    with trio.fail_after(120):
        async with gateway(handler) as (gw, port):
            chaos_done = trio.Event()
            counts: dict[int, int] = {}

            async def client(i: int) -> None:
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    seq = 0
                    while not chaos_done.is_set() or seq < 20:
                        req = f"client {i} request {seq} ".encode() + b"." * (seq % 7) + b"\n"
                        # Send in two pieces so some requests are mid-message
                        # when the handler dies.
                        await s.send_all(req[:5])
                        await trio.sleep(0)
                        await s.send_all(req[5:])
                        assert await recv_exactly(s, len(req)) == req
                        seq += 1
                    # A duplicated reply anywhere would now be read instead.
                    await s.send_all(b"end\n")
                    assert await recv_exactly(s, 4) == b"end\n"
                    counts[i] = seq

            async def chaos() -> None:
                for step in ["kill", "kill", "reload", "kill", "reload", "kill"]:
                    await trio.sleep(0.3)
                    pid = gw.handler_pid
                    assert pid is not None
                    if step == "kill":
                        os.kill(pid, signal.SIGKILL)
                    else:
                        gw.reload()
                    await wait_for(lambda pid=pid: gw.handler_pid not in (None, pid), 20)
                    assert len(gw.core.clients) == 50, "a client was disconnected"
                chaos_done.set()

            async with trio.open_nursery() as n:
                for i in range(50):
                    n.start_soon(client, i)
                await wait_for(lambda: len(gw.core.clients) == 50)
                n.start_soon(chaos)
            assert len(counts) == 50 and min(counts.values()) >= 20
            assert gw.crashes == 4 and gw.restarts == 6


async def test_poison_message_is_quarantined_others_keep_going(gateway, tmp_path: Path,
                                                                caplog) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(30):
        async with gateway(scripted(logfile, "crash-on", "POISON"),
                           quarantine_after=3) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as good:
                await good.send_all(b"before\n")
                assert await recv_exactly(good, 7) == b"before\n"
                async with await trio.open_tcp_stream("127.0.0.1", port) as bad:
                    await bad.send_all(b"POISON\n")
                    assert await recv_until_eof(bad) == b""  # quarantined
                await good.send_all(b"after\n")
                assert await recv_exactly(good, 6) == b"after\n"
            assert gw.crashes == 3
    assert any("quarantined" in r.getMessage() for r in caplog.records)
    # The fourth handler never saw the poison.
    last_hello = max(i for i, m in enumerate(read_log(logfile)) if m["op"] == "hello")
    assert all(m.get("data") != "POISON\n" for m in read_log(logfile)[last_hello:])


async def test_hung_handler_is_killed_and_replaced(gateway, tmp_path: Path, caplog) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(30):
        async with gateway(scripted(logfile, "hang-on", "HANG"), handler_timeout=0.5,
                           quarantine_after=1) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as other:
                async with await trio.open_tcp_stream("127.0.0.1", port) as a:
                    await a.send_all(b"HANG\n")
                    # Quarantined after one hang (quarantine_after=1).
                    assert await recv_until_eof(a) == b""
                await other.send_all(b"served\n")
                assert await recv_exactly(other, 7) == b"served\n"
            assert gw.crashes == 1
    assert any("hung" in r.getMessage() for r in caplog.records)


async def test_handler_with_unanswered_work_but_output_is_not_hung(gateway, tmp_path) -> None:
    """Silence is measured from the handler's last output, not its start."""
    with trio.fail_after(30):
        async with gateway(example("echo.py"), handler_timeout=0.3) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                for _ in range(10):
                    await s.send_all(b"x\n")
                    assert await recv_exactly(s, 2) == b"x\n"
                    await trio.sleep(0.1)
            assert gw.crashes == 0


async def test_stdout_pollution_is_logged_not_a_crash(gateway, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tgate")
    with trio.fail_after(20):
        async with gateway(scripted(tmp_path / "log")) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"EMIT Debug: x = 42\nok\n")
                assert await recv_exactly(s, 3) == b"ok\n"
            assert gw.restarts == 0
    assert any("not protocol" in r.getMessage() and "x = 42" in r.getMessage()
               for r in caplog.records)


async def test_on_crash_disconnect_drops_the_clients(gateway) -> None:
    with trio.fail_after(20):
        async with gateway(example("echo.py"), on_crash="disconnect") as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"x\n")
                assert await recv_exactly(s, 2) == b"x\n"
                pid = gw.handler_pid
                assert pid
                os.kill(pid, signal.SIGKILL)
                assert await recv_until_eof(s) == b""
            # New clients are served by the new handler.
            await wait_for(lambda: gw.handler_pid not in (None, pid))
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"y\n")
                assert await recv_exactly(s, 2) == b"y\n"


async def test_reload_replays_a_partial_message(gateway, tmp_path: Path) -> None:
    logfile = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(logfile)) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"hal")
                await wait_for(lambda: any(m["op"] == "data" for m in read_log(logfile)))
                pid = gw.handler_pid
                gw.reload()
                await wait_for(lambda: gw.handler_pid not in (None, pid))
                await s.send_all(b"f\n")
                assert await recv_exactly(s, 5) == b"half\n"
            assert gw.crashes == 0
