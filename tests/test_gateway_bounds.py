"""Issue 20 in-process: deadlines on closes that wait for output, no fd
leaked per reload, bounded draining per pass, a stop that ends during a
crash backoff (with trio's clock where no process I/O is awaited)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

import tgate.clients
import tgate.link
from tgate.clients import DISCARD_READS, _discard_input

from conftest import example, read_log, recv_exactly, scripted, wait_for


class FloodSock:
    """A socket whose peer never stops sending."""

    def __init__(self) -> None:
        self.reads = 0

    def recv_into(self, buf: Any) -> int:
        self.reads += 1
        return len(buf)


def test_discard_input_is_bounded_per_pass() -> None:
    # Issue 20.11: a lingering socket flooded by its client stalled others.
    sock = FloodSock()
    scratch = memoryview(bytearray(65536))
    assert _discard_input(sock, scratch) is False  # type: ignore[arg-type]
    assert sock.reads == DISCARD_READS


async def test_idle_close_of_a_client_that_does_not_read_has_a_deadline(
    gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 20.5: "disconnected (idle)" waited for the output to flush with
    # no deadline; the handler never got its disconnect.
    monkeypatch.setattr(tgate.clients, "CLOSE_FLUSH_TIMEOUT", 0.5)
    log = tmp_path / "log"
    with trio.fail_after(30):
        async with gateway(scripted(log), idle_timeout=0.5, max_output=64 << 20) as (gw, port):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            try:
                sock.sendall(b"FLOOD 100\n")  # 6.4 MB it never reads
                await wait_for(lambda: any(m["op"] == "disconnect" for m in read_log(log)),
                               timeout=10)
                assert {"op": "disconnect", "id": 1, "reason": "idle"} in read_log(log)
                assert not gw.conns
            finally:
                sock.close()


async def test_reloads_leak_no_fds(gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 20.7: a handler that had exited before stop() looked kept its
    # pidfd open (5 leaked after 40 reloads).
    monkeypatch.setattr(tgate.link, "READY_WINDOW", 0.02)
    with trio.fail_after(60):
        async with gateway(example("echo.py")) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"a\n")
                assert await recv_exactly(s, 2) == b"a\n"

                async def settle() -> None:
                    await wait_for(lambda: len(gw.link.procs) == 1, timeout=10)

                await settle()
                before = len(os.listdir("/proc/self/fd"))
                for i in range(12):
                    pid = gw.handler_pid
                    gw.reload()
                    await wait_for(lambda: gw.handler_pid not in (None, pid), timeout=10)  # noqa: B023
                    await settle()
                    await s.send_all(b"%d\n" % i)
                    assert await recv_exactly(s, len(b"%d\n" % i)) == b"%d\n" % i
                after = len(os.listdir("/proc/self/fd"))
    assert after <= before + 1, (before, after)


async def test_stop_during_a_crash_backoff_ends_promptly(
    gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 11.2: the restart path ignored the stop request.
    monkeypatch.setattr(tgate.link, "restart_delay", lambda n: 0.0 if n <= 1 else 30.0)
    log = tmp_path / "log"
    with trio.fail_after(20):
        async with gateway(scripted(log, "crash-on", "CRASH"), shutdown_grace=1.0) as (gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"CRASH\n")
                await wait_for(lambda: gw.crashes >= 2, timeout=10)  # now in a 30 s backoff
                start = trio.current_time()
                gw.stop()
                await gw.stopped.wait()
                assert trio.current_time() - start < 5
                assert gw.link.pid is None and not gw.link.procs
