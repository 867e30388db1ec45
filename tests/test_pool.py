"""Issue 12: a pool of handler workers with sticky clients, and channels.

Core-level tests (sans-IO) first, then a real tgate process with
`--workers`, real sockets and real signals."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
from typing import Any

import orjson
import pytest
from test_faults_e2e import Tgate, recv_line, tgate

from tgate.core import Core, Settings

from conftest import FIXTURES, PY, example, requires

PEER = ("127.0.0.1", 40312)
LOCAL = ("127.0.0.1", 7000)
POOL = f"{PY} {FIXTURES / 'pool_handler.py'}"


def pool(n: int = 3, **kw: Any) -> Core:
    core = Core(Settings(workers=n, **kw))
    for i in range(n):
        core.handler_started(i)
        core.take_outbox(i)
    return core


def out(core: Core, w: int) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in bytes(core.take_outbox(w)).splitlines()]


def say(core: Core, w: int, obj: object) -> None:
    core.handler_output(orjson.dumps(obj) + b"\n", w)


# ------------------------------------------------------------------ core


def test_clients_go_to_the_least_loaded_worker_for_life() -> None:
    core = pool(3)
    cs = [core.connect(PEER, LOCAL) for _ in range(6)]
    assert [c.worker for c in cs] == [0, 1, 2, 0, 1, 2]
    core.gone(cs[1], "reset")
    assert core.connect(PEER, LOCAL).worker == 1  # worker 1 had the fewest
    assert [m["op"] for m in out(core, 0)] == ["connect", "connect"]


def test_hello_names_the_worker_and_the_pool() -> None:
    core = Core(Settings(workers=4))
    core.handler_started(2)
    (hello,) = out(core, 2)
    assert hello["worker"] == 2 and hello["workers"] == 4


def test_data_goes_to_its_worker_and_ticks_to_all() -> None:
    core = pool(2)
    a, b = core.connect(PEER, LOCAL), core.connect(PEER, LOCAL)
    out(core, 0), out(core, 1)
    core.received(b, b"x")
    core.tick()
    assert out(core, 0) == [{"op": "tick"}]
    assert out(core, 1) == [{"op": "data", "id": b.id, "data": "x"}, {"op": "tick"}]
    assert core.workers[1].owed == 1 and core.workers[0].owed == 0
    assert a.worker == 0


def test_any_worker_writes_and_closes_any_client() -> None:
    core = pool(2)
    a, b = core.connect(PEER, LOCAL), core.connect(PEER, LOCAL)
    say(core, 0, {"op": "write", "id": b.id, "data": "from 0"})
    say(core, 1, {"op": "close", "id": a.id})
    assert bytes(b.out) == b"from 0"
    assert a.closing == "closed"


def test_consumed_only_from_the_clients_own_worker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tgate")
    core = pool(2)
    core.connect(PEER, LOCAL)
    b = core.connect(PEER, LOCAL)
    core.received(b, b"abc")
    say(core, 0, {"op": "consumed", "id": b.id, "n": 3})  # not its worker
    assert b.buffer.awaiting and b.closing is None
    assert "worker 1 serves it" in caplog.text
    say(core, 1, {"op": "consumed", "id": b.id, "n": 3})
    assert not b.buffer.awaiting and len(b.buffer) == 0


def test_a_worker_crash_replays_only_its_clients() -> None:
    core = pool(2, quarantine_after=0)
    a, b = core.connect(PEER, LOCAL), core.connect(PEER, LOCAL)
    core.received(a, b"aa")
    core.received(b, b"bb")
    out(core, 0), out(core, 1)
    core.handler_lost(1, crashed=True)
    assert a.buffer.awaiting and not b.buffer.awaiting  # worker 0 untouched
    core.received(a, b"more")  # worker 0 keeps serving
    core.handler_started(1)
    replay = out(core, 1)
    assert [m["op"] for m in replay] == ["hello", "connect", "data"]
    assert replay[1]["id"] == b.id and replay[1]["replay"] is True
    assert replay[2] == {"op": "data", "id": b.id, "data": "bb"}
    assert core.workers[1].owed == 1 and core.workers[0].owed == 1


def test_channels_publish_exclude_and_leave_on_disconnect() -> None:
    core = pool(2)
    cs = [core.connect(PEER, LOCAL) for _ in range(4)]
    for c in cs[:3]:
        say(core, c.worker, {"op": "subscribe", "id": c.id, "channel": "room"})
    say(core, 1, {"op": "publish", "channel": "room", "data": "hi", "exclude": cs[0].id})
    assert [bytes(c.out) for c in cs] == [b"", b"hi", b"hi", b""]
    core.gone(cs[1], "reset")
    assert core.channels.members("room") == [cs[0], cs[2]]
    say(core, 0, {"op": "unsubscribe", "id": cs[0].id, "channel": "room"})
    say(core, 0, {"op": "unsubscribe", "id": cs[2].id, "channel": "room"})
    assert len(core.channels) == 0  # an empty channel is forgotten
    say(core, 0, {"op": "publish", "channel": "room", "data": "nobody"})
    assert bytes(cs[3].out) == b""


def test_publish_is_framed_like_a_write() -> None:
    core = pool(1, framing="line")
    c = core.connect(PEER, LOCAL)
    say(core, 0, {"op": "subscribe", "id": c.id, "channel": "r"})
    say(core, 0, {"op": "publish", "channel": "r", "data": "x"})
    say(core, 0, {"op": "publish", "channel": "r", "data": "y", "raw": True})
    assert bytes(c.out) == b"x\ny"


def test_channel_limits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tgate")
    core = pool(1, max_channels_per_client=2)
    c = core.connect(PEER, LOCAL)
    for ch in ("a", "b", "c"):
        say(core, 0, {"op": "subscribe", "id": c.id, "channel": ch})
    assert c.channels == {"a", "b"} and c.closing is None
    assert "max-channels-per-client" in caplog.text
    say(core, 0, {"op": "subscribe", "id": c.id, "channel": "x" * 257})
    assert "channel name must be 1 to 256" in caplog.text
    assert c.closing is None


def test_budget_is_per_worker() -> None:
    core = pool(2)
    a, b = core.connect(PEER, LOCAL), core.connect(PEER, LOCAL)
    core.workers[0].outbox += b"x" * (4 << 20)
    assert not core.can_read(a) and core.can_read(b)
    assert core.worker_full(a) and not core.pipe_full  # worker 1 can take new clients


# ------------------------------------------------------------------ a real pool


def connect_all(t: Tgate, n: int) -> list[socket.socket]:
    return [t.connect() for _ in range(n)]


def who(s: socket.socket) -> tuple[int, int]:
    s.sendall(b"WHO\n")
    m = re.match(rb"worker (\d+) of \d+ pid (\d+)\n", recv_line(s))
    assert m
    return int(m.group(1)), int(m.group(2))


def test_clients_spread_over_four_workers() -> None:
    with tgate("--handler", POOL, "--workers", "4") as t:
        socks = connect_all(t, 8)
        seen = [who(s) for s in socks]
        assert sorted(w for w, _ in seen) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert len({p for _, p in seen}) == 4
        assert len(t.handler_pids()) == 4
        for s in socks:
            s.close()


class Loop:
    """A client in a closed loop of numbered requests; records gaps."""

    def __init__(self, s: socket.socket, name: str) -> None:
        self.s, self.name = s, name
        self.n = 0
        self.max_gap = 0.0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        try:
            last = time.monotonic()
            while not self.stop.is_set():
                msg = f"{self.name} {self.n}\n".encode()
                self.s.sendall(msg)
                got = recv_line(self.s)
                assert got == msg, (got, msg)  # exactly once, in order
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.n += 1
        except BaseException as exc:  # reported by the test
            self.error = exc


def run_loops(socks: list[socket.socket]) -> list[Loop]:
    loops = [Loop(s, f"c{i}") for i, s in enumerate(socks)]
    for lp in loops:
        lp.thread.start()
    return loops


def stop_loops(loops: list[Loop]) -> None:
    for lp in loops:
        lp.stop.set()
    for lp in loops:
        lp.thread.join(15)
        assert lp.error is None, (lp.name, lp.error)
        assert lp.n > 0


def test_a_killed_worker_does_not_pause_the_others() -> None:
    with tgate("--handler", POOL, "--workers", "4") as t:
        socks = connect_all(t, 8)
        workers = [who(s) for s in socks]
        loops = run_loops(socks)
        time.sleep(0.5)
        victim = workers[1][1]  # worker 1's pid
        os.kill(victim, signal.SIGKILL)
        t.wait_for(rf"handler \(pid {victim}\) was killed by SIGKILL")
        time.sleep(0.5)
        before = [lp.n for lp in loops]
        time.sleep(0.5)
        stop_loops(loops)
        # every client, the victim's too, kept going: nobody disconnected,
        # every reply exactly once and in order (checked in the loops)
        assert all(lp.n > b for lp, b in zip(loops, before, strict=True))
        others = [lp for lp, (w, _) in zip(loops, workers, strict=True) if w != 1]
        # the other workers' clients saw no pause anywhere near a restart
        assert max(lp.max_gap for lp in others) < 1.0, [lp.max_gap for lp in others]
        assert "disconnected" not in t.log()


def test_rolling_sighup_keeps_n_minus_1_serving() -> None:
    with tgate("--handler", POOL, "--workers", "3") as t:
        socks = connect_all(t, 6)
        old = {w: p for w, p in (who(s) for s in socks)}
        loops = run_loops(socks)
        time.sleep(0.3)
        t.signal(signal.SIGHUP)
        t.wait_for(r"replaced by pid \d+ \[worker 2\]", timeout=30)
        time.sleep(0.3)
        stop_loops(loops)
        new = {w: p for w, p in (who(s) for s in socks)}
        assert set(new) == {0, 1, 2}
        assert all(new[w] != old[w] for w in new)
        # one worker at a time: each reload ends before the next begins
        events = re.findall(r"(reload: handler|replaced by pid \d+) .*?\[worker (\d)\]", t.log())
        assert [w for _, w in events] == ["0", "0", "1", "1", "2", "2"], events
        assert "disconnected" not in t.log()


def test_channels_and_writes_across_workers() -> None:
    with tgate("--handler", POOL, "--workers", "2") as t:
        a, b, c = connect_all(t, 3)
        assert [who(s)[0] for s in (a, b, c)] == [0, 1, 0]
        for s in (a, b, c):
            s.sendall(b"SUB room\n")
            assert recv_line(s) == b"SUB room\n"  # the subscribe is applied by now
        b.sendall(b"PUB room hello from 1\n")
        assert recv_line(a) == b"hello from 1\n"
        assert recv_line(c) == b"hello from 1\n"
        a.sendall(b"TO 2 direct from worker 0\n")
        assert recv_line(b) == b"direct from worker 0\n"
        c.close()  # leaves its channels
        time.sleep(0.2)
        b.sendall(b"PUB room again\n")
        assert recv_line(a) == b"again\n"
        a.close()
        b.close()


@pytest.mark.parametrize("name", ["chat.py", pytest.param("chat.js", marks=requires("node"))])
def test_chat_examples_work_unchanged_with_four_workers(name: str) -> None:
    with tgate("--handler", example(name), "--workers", "4") as t:
        socks = connect_all(t, 4)
        assert len(t.handler_pids()) == 4
        # A client is in the room once its own worker has read its connect;
        # until then it may miss lines, so the sender repeats itself.
        got = {i: b"" for i in (0, 1, 3)}
        for s in socks:
            s.setblocking(False)
        deadline = time.monotonic() + 15
        n = 0
        while not all(b"3: hello room" in g for g in got.values()):
            assert time.monotonic() < deadline, got
            socks[2].sendall(b"hello room %d\n" % n)
            n += 1
            time.sleep(0.1)
            for i in got:
                try:
                    got[i] += socks[i].recv(65536)
                except BlockingIOError:
                    pass
        # ...and the sender never gets its own lines back
        time.sleep(0.3)
        try:
            own = socks[2].recv(65536)
        except BlockingIOError:
            own = b""
        assert b"hello room" not in own
        for s in socks:
            s.close()


async def test_rolling_reload_moves_on_from_a_stuck_worker(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio

    import tgate.server

    monkeypatch.setattr(tgate.server, "ROLLING_RELOAD_SLACK", 0.1)
    with trio.fail_after(30):
        async with gateway(POOL, workers=2, shutdown_grace=0.1) as (gw, _port):
            never = trio.Event()  # worker 0's reload never finishes (e.g. in backoff)
            monkeypatch.setattr(gw.links[0], "reload", lambda: never)
            pid1 = gw.links[1].pid
            gw.reload()
            while gw.links[1].pid in (None, pid1):
                await trio.sleep(0.05)
            assert gw.links[1].restarts == 1


def test_every_worker_start_is_logged_however_many_workers() -> None:
    # The log's rate limiter allows 5 lines of a kind per 10 s: each
    # worker's lifecycle lines are a kind of their own, so 8 starts show.
    with tgate("--handler", POOL, "--workers", "8") as t:
        t.wait_for(r"handler started \(pid \d+\).*\[worker 7\]")
        starts = re.findall(r"handler started \(pid \d+\).*\[worker (\d)\]", t.log())
        assert sorted(starts) == [str(i) for i in range(8)]
        assert "more like this" not in t.log()
