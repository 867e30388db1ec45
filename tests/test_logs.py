"""tgate.logs: the bounded stderr queue, its writer thread, rate limiting, and
tgate itself with a stderr that is closed, full, or never read (issue 11)."""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from tgate import logs

from conftest import FIXTURES, PY, REPO, example


@pytest.fixture(autouse=True)
def hard_timeout() -> Iterator[None]:
    """Every test here ends within 120 s: a hang dumps the stacks and exits."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
NOTICE = re.compile(rf"{TS} tgate: WARNING: (\d+) log lines dropped \(stderr full or closed\)")


class Sink:
    """A fake stderr: records writes; can fail, block, or take few bytes per call."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.error: OSError | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.max_per_call = 1 << 30

    def __call__(self, data: bytes) -> int:
        self.calls += 1
        self.gate.wait()
        if self.error is not None:
            raise self.error
        n = min(len(data), self.max_per_call)
        self.data += data[:n]
        return n

    def lines(self) -> list[str]:
        return self.data.decode().splitlines()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# ------------------------------------------------------------------ the queue


def test_iso_time() -> None:
    assert logs.iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert logs.iso_time(1_796_534_744.1239) == "2026-12-06T05:25:44.123Z"
    assert logs.iso_time(1_796_534_744.9999) == "2026-12-06T05:25:44.999Z"


def test_lines_are_written_in_order() -> None:
    sink = Sink()
    q = logs.LogQueue(sink)
    q.start()
    for i in range(1000):
        assert q.put(f"line {i}\n".encode())
    assert q.close(5)
    assert sink.lines() == [f"line {i}" for i in range(1000)]
    assert q.dropped == 0


def test_full_queue_drops_and_counts_then_says_so_where_the_gap_is() -> None:
    sink = Sink()
    q = logs.LogQueue(sink, max_entries=3)  # writer not started yet: nothing drains
    for i in range(10):
        q.put(f"line {i}\n".encode())
    assert q.dropped == 7
    q.start()
    wait_for(lambda: len(sink.lines()) == 4)
    q.put(b"after\n")
    assert q.close(5)
    out = sink.lines()
    assert out[:3] == ["line 0", "line 1", "line 2"]
    notice = NOTICE.fullmatch(out[3])
    assert notice and notice.group(1) == "7", out
    assert out[4:] == ["after"]


def test_queue_is_bounded_in_bytes() -> None:
    sink = Sink()
    q = logs.LogQueue(sink, max_bytes=100)
    results = [q.put(b"x" * 29 + b"\n") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert not q.put(b"y" * 200 + b"\n")  # never fits
    assert q.dropped == 3


@pytest.mark.parametrize("code", [errno.EPIPE, errno.EBADF, errno.ENOSPC, errno.EIO])
def test_writer_survives_write_errors_and_reports_the_loss(code: int) -> None:
    sink = Sink()
    sink.error = OSError(code, os.strerror(code))
    q = logs.LogQueue(sink)
    q.start()
    for i in range(20):
        q.put(f"lost {i}\n".encode())
    wait_for(lambda: q.dropped == 20)
    sink.error = None
    q.put(b"back\n")
    assert q.close(5)
    out = sink.lines()
    assert len(out) == 2 and out[1] == "back", out
    assert NOTICE.fullmatch(out[0]) and "20 log lines dropped" in out[0]


def test_writer_survives_any_exception_from_the_sink() -> None:
    sink = Sink()
    sink.error = ValueError("not even an OSError")  # type: ignore[assignment]
    q = logs.LogQueue(sink)
    q.start()
    q.put(b"one\n")
    wait_for(lambda: q.dropped == 1)
    sink.error = None
    q.put(b"two\n")
    assert q.close(5)
    assert sink.lines()[-1] == "two" and "1 log lines dropped" in sink.lines()[0]


def test_partial_writes_are_completed() -> None:
    sink = Sink()
    sink.max_per_call = 7
    q = logs.LogQueue(sink)
    q.start()
    text = b"".join(f"line {i} {'z' * i}\n".encode() for i in range(200))
    for line in text.splitlines(keepends=True):
        q.put(line)
    assert q.close(10)
    assert bytes(sink.data) == text


def test_stuck_sink_blocks_neither_producers_nor_shutdown() -> None:
    sink = Sink()
    sink.gate.clear()  # every write blocks, like a pipe nobody reads
    q = logs.LogQueue(sink, max_bytes=1 << 16)
    q.start()
    t0 = time.monotonic()
    for _ in range(100_000):
        q.put(b"x" * 99 + b"\n")
    produced = time.monotonic() - t0
    assert produced < 2.0  # about 0.1 s: never waits for the writer
    assert q.dropped > 99_000
    t0 = time.monotonic()
    assert not q.close(timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    sink.gate.set()  # let the thread go


# --------------------------------------------------------- handler and limiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def limited_logger(limit: int = 5, window: float = 10.0
                   ) -> Iterator[tuple[logging.Logger, logs.QueueHandler, Sink, Clock]]:
    sink, clock = Sink(), Clock()
    q = logs.LogQueue(sink)
    handler = logs.QueueHandler(q, limit=limit, window=window, clock=clock)
    logger = logging.getLogger(f"tgate.test{id(sink)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, handler, sink, clock
    finally:
        logger.removeHandler(handler)
        q.start()
        q.close(5)


def test_log_lines_have_an_iso_timestamp() -> None:
    with limited_logger() as (logger, _, sink, _):
        logger.warning("disk %s is %d%% full", "sda", 93)
        logger.error("handler (pid %d) crashed", 7)
    out = sink.lines()
    assert re.fullmatch(rf"{TS} tgate: WARNING: disk sda is 93% full", out[0]), out
    assert re.fullmatch(rf"{TS} tgate: ERROR: handler \(pid 7\) crashed", out[1]), out


def test_exceptions_are_logged_with_their_traceback() -> None:
    with limited_logger() as (logger, _, sink, _):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed")
    text = sink.data.decode()
    assert "tgate: ERROR: it failed\nTraceback" in text and "RuntimeError: boom" in text


def test_rate_limit_per_kind_with_a_summary_when_the_window_ends() -> None:
    with limited_logger() as (logger, handler, sink, clock):
        for i in range(12):
            logger.warning("junk line %d", i)
            logger.error("handler crashed: %d", i)  # another kind: never hidden by the first
        logger.info("once")
        clock.now += 5
        handler.flush_suppressed()  # window not over yet: nothing
        assert sum(b"more like this" in line for line in queued(handler)) == 0
        clock.now += 5
        handler.flush_suppressed()
        logger.warning("junk line %d", 99)  # a new window
    out = sink.lines()
    junk = [line for line in out if "junk line" in line]
    assert [j.split(": ", 1)[1] for j in junk[:5]] == [f"WARNING: junk line {i}" for i in range(5)]
    assert re.fullmatch(rf"{TS} tgate: WARNING: 7 more like this in the last 10 s: "
                        r"junk line 5", junk[5]), junk
    assert junk[6].endswith("WARNING: junk line 99") and len(junk) == 7
    crashes = [line for line in out if "crashed" in line]
    assert len(crashes) == 6 and crashes[5].endswith(
        "ERROR: 7 more like this in the last 10 s: handler crashed: 5")
    assert sum(line.endswith("INFO: once") for line in out) == 1


def queued(handler: logs.QueueHandler) -> list[bytes]:
    """What is queued (not written yet: these queues have no writer running)."""
    return [i for i in handler.queue._items if isinstance(i, bytes)]


def test_next_record_after_the_window_reports_the_suppressed_first() -> None:
    with limited_logger(limit=2) as (logger, handler, sink, clock):
        for i in range(5):
            logger.warning("again %d", i)
        clock.now += 10
        logger.warning("again %d", 5)
        handler.flush_suppressed(everything=True)  # nothing left to report
    out = [line.split(" ", 1)[1] for line in sink.lines()]
    assert out == ["tgate: WARNING: again 0", "tgate: WARNING: again 1",
                   "tgate: WARNING: 3 more like this in the last 10 s: again 2",
                   "tgate: WARNING: again 5"]


def test_flush_all_reports_open_windows_at_exit() -> None:
    with limited_logger(limit=1) as (logger, handler, sink, _):
        logger.warning("x %d", 1)
        logger.warning("x %d", 2)
        handler.flush_suppressed(everything=True)
    assert sink.lines()[1].endswith("WARNING: 1 more like this in the last 10 s: x 2")


def test_suppressed_records_are_not_formatted() -> None:
    formatted = 0

    class Costly:
        def __str__(self) -> str:
            nonlocal formatted
            formatted += 1
            return "costly"

    with limited_logger(limit=5) as (logger, _, _, _):
        for _ in range(1000):
            logger.warning("value %s", Costly())
    assert formatted == 6  # the 5 written and the first suppressed (for the summary)


# ----------------------------------------------------------------- forward_stderr


async def forward(chunks: list[bytes], queue: logs.LogQueue, pid: int = 42) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    with trio.fail_after(5):
        await _forward(send, receive, chunks, queue, pid)


async def _forward(send: trio.testing.MemorySendStream, receive: trio.testing.MemoryReceiveStream,
                   chunks: list[bytes], queue: logs.LogQueue, pid: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(logs.forward_stderr, receive, pid, queue=queue))
        for chunk in chunks:
            await send.send_all(chunk)
            await trio.testing.wait_all_tasks_blocked()
        await send.aclose()


async def test_forward_stderr_prefixes_lines_and_flushes_the_last_one() -> None:
    sink = Sink()
    q = logs.LogQueue(sink)
    await forward([b"one\ntw", b"o\n\nthree"], q)
    q.start()
    assert q.close(5)
    out = sink.lines()
    assert [line.split(" ", 1)[1] for line in out] == [
        "[handler 42] one", "[handler 42] two", "[handler 42] ", "[handler 42] three"]
    assert all(re.match(rf"{TS} \[handler 42\] ", line) for line in out)


async def test_forward_stderr_passes_a_newline_free_flood_in_64k_pieces() -> None:
    sink = Sink()
    q = logs.LogQueue(sink)
    await forward([b"y" * 50_000] * 6, q)  # 300,000 bytes, no newline
    q.start()
    assert q.close(5)
    pieces = [line.split(b"] ", 1)[1] for line in bytes(sink.data).splitlines()]
    assert [len(p) for p in pieces] == [65536] * 4 + [300_000 - 4 * 65536]


async def test_forward_stderr_keeps_reading_and_counts_when_the_queue_is_full() -> None:
    sink = Sink()
    q = logs.LogQueue(sink, max_bytes=1000)
    send, receive = trio.testing.memory_stream_one_way_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(logs.forward_stderr, receive, 7, queue=q))
            for _ in range(100):  # the sender never blocks: everything is read
                await send.send_all(b"0123456789\n" * 10)
                await trio.testing.wait_all_tasks_blocked()
            await send.aclose()
    assert q.dropped > 900
    q.start()
    assert q.close(5)
    assert NOTICE.fullmatch(sink.lines()[-1])


# ---------------------------------------------------- setup() in a real process


def test_setup_banner_and_shutdown_in_a_process() -> None:
    code = (
        "import logging, sys, warnings; from tgate import logs\n"
        "made = 0; factory = logging.getLogRecordFactory()\n"
        "def counting(*args, **kwargs):\n"
        "    global made; made += 1; return factory(*args, **kwargs)\n"
        "logging.setLogRecordFactory(counting)\n"
        "logs.setup(logging.INFO)\n"
        "log = logging.getLogger('tgate')\n"
        "log.debug('hidden'); log.info('hello %s', 'world')\n"
        "logs.banner('tgate listening on 127.0.0.1:7000')\n"
        "made = 0\n"
        "for i in range(20): log.warning('again %d', i)\n"
        "print(made)\n"  # 5 written, 1 first suppressed: the rest never made a LogRecord
        "warnings.warn('careful')\n"
        "logs.shutdown()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    out = r.stderr.decode().splitlines()
    assert r.returncode == 0, out
    assert r.stdout == b"6\n"
    assert re.fullmatch(rf"{TS} tgate: INFO: hello world", out[0]), out
    assert out[1] == "tgate listening on 127.0.0.1:7000"
    assert sum("again" in line for line in out) == 6  # 5 and one summary
    assert any(line.endswith("15 more like this in the last 10 s: again 5") for line in out)
    assert any("WARNING" in line and "careful" in line for line in out)
    assert "hidden" not in r.stderr.decode()


# ------------------------------------------------ tgate with a hostile stderr

TGATE = [sys.executable, "-m", "tgate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo(port: int, payload: bytes = b"ping\n", timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"tgate exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "tgate never listened"
            time.sleep(0.05)


@contextmanager
def tgate(port: int, handler: str, *extra: str, **popen: Any
          ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*TGATE, "--handler", handler, "--port", str(port), *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=REPO,
                            **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve_then_stop(proc: subprocess.Popen[bytes], port: int) -> None:
    wait_listening(proc, port)
    for i in range(5):
        assert echo(port, b"ping %d\n" % i) == b"ping %d\n" % i
        time.sleep(0.1)  # the loop keeps logging meanwhile
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def _close_fd2() -> None:  # pragma: no cover - runs in the child
    os.close(2)


@pytest.mark.parametrize("how", ["pipe-closed", "fd2-closed", "dev-full"])
def test_tgate_serves_and_exits_0_with_a_dead_stderr(how: str) -> None:
    """On main: exit 1 at once (BrokenPipeError, AttributeError, ENOSPC on the banner)."""
    port = free_port()
    popen: dict[str, Any] = {}
    if how == "pipe-closed":
        r, w = os.pipe()
        os.close(r)
        popen["stderr"] = w
    elif how == "fd2-closed":
        popen["preexec_fn"] = _close_fd2
    else:
        popen["stderr"] = open("/dev/full", "wb")
    try:
        with tgate(port, example("echo.py"), **popen) as proc:
            serve_then_stop(proc, port)
    finally:
        if "stderr" in popen:
            if how == "pipe-closed":
                os.close(popen["stderr"])
            else:
                popen["stderr"].close()


def read_for(fd: int, seconds: float, limit: int = 64 << 20) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(out) < limit:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            out += chunk
    return bytes(out)


def test_handler_flooding_stderr_does_not_stall_the_gateway() -> None:
    """tgate's stderr is a pipe nobody reads and the handler floods its own
    stderr: echo replies still come promptly. On main the loop blocks in
    forward_stderr's write as soon as the pipe is full, and echo never answers."""
    port = free_port()
    handler = f"{PY} {FIXTURES / 'stderr_flood.py'} 0"
    with tgate(port, handler, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        wait_listening(proc, port)
        time.sleep(1.0)  # well past the 64 KiB of both pipes
        worst = 0.0
        for i in range(20):
            t0 = time.monotonic()
            assert echo(port, b"ping %d\n" % i, timeout=5) == b"ping %d\n" % i
            worst = max(worst, time.monotonic() - t0)
        assert worst < 2.0, worst
        # Reading again: the lines come back, and a notice counts the lost ones.
        text = read_for(proc.stderr.fileno(), 3.0).decode(errors="replace")
        assert re.search(rf"^{TS} \[handler \d+\] flood x", text, re.M)
        assert NOTICE.search(text), text[-2000:]
        proc.send_signal(signal.SIGTERM)
        read_for(proc.stderr.fileno(), 0.5)
        assert proc.wait(timeout=20) == 0


def test_repeated_warnings_are_rate_limited() -> None:
    """A handler writing 100 junk lines to stdout: 5 warnings and a count, not 100
    (on main: 100 warning lines)."""
    code = ("import sys, time\n"
            "for i in range(100): print(\"junk-line-%d\" % i)\n"
            "sys.stdout.flush(); sys.stdin.read()\n")
    handler = f"{PY} -c '{code}'"  # the code has no single quote
    port = free_port()
    with tgate(port, handler, "--shutdown-grace", "0.5", stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        wait_listening(proc, port)
        deadline = time.monotonic() + 20
        text = ""
        while "junk-line-4" not in text:
            assert time.monotonic() < deadline, text
            text += read_for(proc.stderr.fileno(), 0.2).decode()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        text += read_for(proc.stderr.fileno(), 5.0).decode()
    junk = [line for line in text.splitlines() if "WARNING" in line and "junk-line-" in line]
    assert len(junk) == 6, junk
    summary = rf"{TS} tgate: WARNING: 95 more like this in the last 10 s: .*junk-line-5.*"
    assert re.fullmatch(summary, junk[-1]), junk


# ------------------------------------------ --log-format json and the access log


def json_lines(sink: Sink) -> list[dict[str, Any]]:
    """Every line of ``sink`` as a JSON object (fails on a line that is not one)."""
    out = [orjson.loads(line) for line in bytes(sink.data).splitlines()]
    assert all(isinstance(obj, dict) for obj in out)
    return out


JSON_TS = re.compile(TS)


@contextmanager
def json_logger(limit: int = 5) -> Iterator[tuple[logging.Logger, logs.QueueHandler, Sink, Clock]]:
    with limited_logger(limit=limit) as (logger, handler, sink, clock):
        handler.queue.fmt = "json"
        yield logger, handler, sink, clock


def test_json_records_are_one_object_per_line_with_their_fields() -> None:
    with json_logger() as (logger, _, sink, _):
        logger.warning("disk %s is %d%% full", "sda", 93,
                       extra={"fields": {"disk": "sda", "full": 93, "msg": "not me",
                                         "path": Path("/x")}})
        logger.info("two\nlines \"quoted\" \udcff")  # a lone surrogate
        logger.info("big %d", 1 << 70, extra={"fields": {"big": 1 << 70}})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("it failed")
    warn, info, big, exc = json_lines(sink)
    assert JSON_TS.fullmatch(warn.pop("ts"))
    assert warn == {"level": "warning", "logger": logger.name, "msg": "disk sda is 93% full",
                    "disk": "sda", "full": 93, "path": "/x"}  # a field never hides msg
    assert list(warn)[:3] == ["level", "logger", "msg"]
    assert info["level"] == "info" and info["msg"] == 'two\nlines "quoted" \\udcff'
    assert big["level"] == "info" and big["big"] == str(1 << 70)
    assert exc["level"] == "error" and exc["msg"] == "it failed"
    assert exc["exc"].startswith("Traceback") and "RuntimeError: boom" in exc["exc"]


def test_json_rate_limit_summary_is_an_object() -> None:
    with json_logger(limit=2) as (logger, handler, sink, clock):
        for i in range(7):
            logger.error("crashed %d", i)
        clock.now += 10
        handler.flush_suppressed()
    out = json_lines(sink)
    assert [o["msg"] for o in out[:2]] == ["crashed 0", "crashed 1"]
    summary = out[2]
    assert len(out) == 3 and JSON_TS.fullmatch(summary.pop("ts"))
    assert summary == {"level": "error", "logger": logger.name,
                       "msg": "5 more like this in the last 10 s: crashed 2",
                       "event": "suppressed", "suppressed": 5, "first": "crashed 2"}


def test_json_dropped_lines_notice_is_an_object() -> None:
    sink = Sink()
    q = logs.LogQueue(sink, max_entries=3, fmt="json")
    for i in range(10):
        q.put(b'{"n": %d}\n' % i)
    q.start()
    assert q.close(5)
    out = json_lines(sink)
    assert [o.get("n") for o in out[:3]] == [0, 1, 2]
    notice = out[3]
    assert len(out) == 4 and JSON_TS.fullmatch(notice.pop("ts"))
    assert notice == {"level": "warning", "logger": "tgate", "event": "dropped", "dropped": 7,
                      "msg": "7 log lines dropped (stderr full or closed)"}


async def test_json_handler_stderr_lines_are_objects() -> None:
    sink = Sink()
    q = logs.LogQueue(sink, fmt="json")
    await forward([b'one\n{"not": "parsed"}\nbad \xff\xfe\n', b"last"], q, pid=77)
    q.start()
    assert q.close(5)
    out = json_lines(sink)
    assert all(JSON_TS.fullmatch(o.pop("ts")) for o in out)
    assert out == [{"level": "stderr", "logger": "handler", "pid": 77, "msg": msg}
                   for msg in ["one", '{"not": "parsed"}', "bad \\xff\\xfe", "last"]]


@pytest.fixture
def access_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logs.LogQueue, Sink]]:
    """The process's queue replaced by one into a Sink; the access log on."""
    sink = Sink()
    q = logs.LogQueue(sink)
    monkeypatch.setattr(logs, "_queue", q)
    for name in ("_access_wanted", "_access_level", "_access_on"):
        monkeypatch.setattr(logs, name, True)
    yield q, sink
    q.start()
    q.close(5)


ACCESS_ARGS = [(12, ("127.0.0.1", 40312), 1.2344, 120, 340, "eof", 0),
               (13, ("::1", 5), 0.0, 0, 7, "overflow", 3)]


def test_access_lines_in_text(access_sink: tuple[logs.LogQueue, Sink]) -> None:
    q, sink = access_sink
    for args in ACCESS_ARGS:
        logs.access(*args)
    q.start()
    assert q.close(5)
    out = sink.lines()
    assert re.fullmatch(rf"{TS} tgate: access: client 12 127\.0\.0\.1:40312 worker 0 "
                        r"1\.234 s in 120 B out 340 B \(eof\)", out[0]), out
    assert re.fullmatch(rf"{TS} tgate: access: client 13 \[::1\]:5 worker 3 "
                        r"0\.000 s in 0 B out 7 B \(overflow\)", out[1]), out


def test_access_lines_in_json(access_sink: tuple[logs.LogQueue, Sink]) -> None:
    q, sink = access_sink
    q.fmt = "json"
    for args in ACCESS_ARGS:
        logs.access(*args)
    q.start()
    assert q.close(5)
    out = json_lines(sink)
    assert all(JSON_TS.fullmatch(o.pop("ts")) for o in out)
    assert out == [
        {"level": "info", "logger": "tgate.access", "event": "disconnect", "id": 12,
         "peer": "127.0.0.1", "port": 40312, "worker": 0, "duration_s": 1.2344,
         "bytes_in": 120, "bytes_out": 340, "reason": "eof"},
        {"level": "info", "logger": "tgate.access", "event": "disconnect", "id": 13,
         "peer": "::1", "port": 5, "worker": 3, "duration_s": 0.0,
         "bytes_in": 0, "bytes_out": 7, "reason": "overflow"}]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_lines_are_not_rate_limited(access_sink: tuple[logs.LogQueue, Sink],
                                           fmt: logs.Format) -> None:
    q, sink = access_sink
    q.fmt = fmt
    for i in range(100):
        logs.access(i, ("10.0.0.1", 1000 + i), 0.5, i, i, "eof", 0)
    q.start()
    assert q.close(5)
    out = sink.lines()
    assert len(out) == 100 and q.dropped == 0
    assert all("access" in line and "more like this" not in line for line in out)


def test_access_lines_are_dropped_and_counted_when_the_queue_is_full(
        access_sink: tuple[logs.LogQueue, Sink]) -> None:
    q, sink = access_sink
    q.max_entries = 10
    for i in range(25):
        logs.access(i, ("10.0.0.1", 1), 0.5, 1, 1, "eof", 0)
    assert q.dropped == 15
    q.start()
    assert q.close(5)
    out = sink.lines()
    assert len(out) == 11 and NOTICE.fullmatch(out[-1]) and "15 log lines" in out[-1]


def test_disabled_access_log_emits_nothing(access_sink: tuple[logs.LogQueue, Sink]) -> None:
    q, sink = access_sink
    logs.set_access_log(False)
    for args in ACCESS_ARGS:
        logs.access(*args)
    logs.set_access_log(True)
    logs.access(*ACCESS_ARGS[0])
    q.start()
    assert q.close(5)
    assert len(sink.lines()) == 1


def test_setup_json_in_a_process() -> None:
    """Records, the banner, a verbatim error line and warnings, all JSON; the banner
    still matches the text pattern; --log-level warning hides access lines."""
    code = (
        "import logging, warnings; from tgate import logs\n"
        "logs.setup(logging.INFO, 'json')\n"
        "log = logging.getLogger('tgate')\n"
        "log.debug('hidden'); log.info('hello %s', 'world', extra={'fields': {'n': 1}})\n"
        "logs.banner('tgate listening on [::1]:7000')\n"
        "logs.emit_line(b'tgate: error: cannot listen')\n"
        "for i in range(8): log.warning('again %d', i)\n"
        "logs.access(1, ('127.0.0.1', 2), 0.25, 3, 4, 'eof', 0)\n"
        "warnings.warn('careful')\n"
        "logs.setup(logging.WARNING, 'json')\n"
        "logs.access(2, ('127.0.0.1', 2), 0.25, 3, 4, 'eof', 0)\n"
        "logs.shutdown()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    out = [orjson.loads(line) for line in lines]
    assert all(JSON_TS.fullmatch(o.pop("ts")) for o in out), out
    assert out[0] == {"level": "info", "logger": "tgate", "msg": "hello world", "n": 1}
    assert out[1] == {"level": "info", "logger": "tgate", "event": "listening",
                      "host": "::1", "port": 7000, "msg": "tgate listening on [::1]:7000"}
    m = re.search(r"tgate listening on (\S+):(\d+)", lines[1])
    assert m is not None and m.groups() == ("[::1]", "7000")
    assert out[2] == {"level": "error", "logger": "tgate", "msg": "tgate: error: cannot listen"}
    assert sum(o.get("msg", "").startswith("again") for o in out) == 5
    assert [o["id"] for o in out if o["logger"] == "tgate.access"] == [1]
    assert any(o["level"] == "warning" and "careful" in o["msg"] for o in out)
    assert out[-1]["event"] == "suppressed" and out[-1]["suppressed"] == 3
    assert "hidden" not in r.stderr.decode()


class StderrReader:
    """Reads a process's stderr in a thread, line by line, until EOF."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[bytes] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def wait(self, cond: Callable[[list[bytes]], bool], timeout: float = 20.0) -> None:
        wait_for(lambda: cond(list(self.lines)), timeout)

    def join(self, timeout: float = 10.0) -> list[bytes]:
        self._thread.join(timeout)
        assert not self._thread.is_alive()
        return self.lines


@pytest.mark.parametrize(("fmt", "access"), [("json", "on"), ("text", "on"), ("json", "off")])
def test_tgate_access_log_end_to_end(fmt: str, access: str) -> None:
    """Clients connect, talk and leave: with the access log on, one access line each
    (with their bytes); with --log-format json every stderr line is a JSON object."""
    payloads = [b"ping\n", b"x" * 1000, b"hello there\n"]
    with tgate(0, example("echo.py"), "--log-format", fmt, "--access-log", access,
               stderr=subprocess.PIPE) as proc:
        reader = StderrReader(proc.stderr)
        reader.wait(lambda lines: any(b"tgate listening on" in line for line in lines))
        banner = next(line for line in reader.lines if b"tgate listening on" in line)
        m = re.search(rb"tgate listening on (\S+):(\d+)", banner)
        assert m is not None
        port = int(m[2])
        for payload in payloads:
            assert echo(port, payload) == payload
        if access == "on":
            reader.wait(lambda lines: sum(b"access" in line for line in lines) >= 3)
        else:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        lines = reader.join()
    text = b"".join(lines).decode()
    if fmt == "json":
        out = [orjson.loads(line) for line in lines]
        assert all(JSON_TS.fullmatch(o["ts"]) for o in out), text
        listening = [o for o in out if o.get("event") == "listening"]
        assert listening[0]["host"] == "127.0.0.1" and listening[0]["port"] == port
        got = [o for o in out if o["logger"] == "tgate.access"]
        if access == "off":
            assert got == [], text
            return
        assert len(got) == len(payloads), text
        assert len({o["id"] for o in got}) == len(payloads)
        for o, payload in zip(sorted(got, key=lambda o: o["id"]), payloads, strict=True):
            assert o["event"] == "disconnect" and o["level"] == "info"
            assert o["peer"] == "127.0.0.1" and 0 < o["port"] < 65536 and o["worker"] == 0
            assert o["bytes_in"] == o["bytes_out"] == len(payload), o
            assert 0 <= o["duration_s"] < 20 and o["reason"] == "eof", o
    else:
        got_text = [line for line in text.splitlines() if " tgate: access: " in line]
        assert len(got_text) == len(payloads), text
        sizes = sorted(len(p) for p in payloads)
        found = sorted(int(hit[1]) for line in got_text
                       if (hit := re.fullmatch(rf"{TS} tgate: access: client \d+ 127\.0\.0\.1:"
                                             r"\d+ worker 0 \d+\.\d{3} s in (\d+) B out "
                                             r"\1 B \(eof\)", line)))
        assert found == sizes, got_text
