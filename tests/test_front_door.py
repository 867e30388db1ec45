"""Through the front door (issue 21): the installed `tgate` console script as
a user runs it, in a real process, with real signals and real TCP clients.

Each test starts the console script found next to sys.executable with
`--port 0` (unless it picks the port), reads the port from the banner
`tgate listening on HOST:PORT` on its stderr, and observes only what a user
could: sockets, exit status, stderr lines, /proc. Every wait has a deadline;
no assertion depends on tight timing (the slack is seconds, on purpose: CI
is a noisy 2-core box).

Where the code comes from: the console script imports `tgate` the usual
way, so PYTHONPATH=/some/copy/src makes it (and this file) run that copy;
bench/mutate.py relies on that.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import FIXTURES, PY, REPO, example

TGATE = Path(sys.executable).parent / "tgate"
PROBE = FIXTURES / "probe_handler.py"
BROKEN = FIXTURES / "broken_handler.py"
BANNER = re.compile(r"tgate listening on (\S+):(\d+)")
STARTED = re.compile(r"handler started \(pid (\d+)\)")


def probe(*args: str) -> str:
    return shlex.join([sys.executable, str(PROBE), *args])


# ---------------------------------------------------------------- processes


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def children(pid: int) -> set[int]:
    out: set[int] = set()
    with suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
    return out


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = children(pid)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo |= children(p)
    return out


class Tgate:
    """A running `tgate` console script; its stderr is collected by a thread."""

    def __init__(self, args: list[str], start_timeout: float = 30.0) -> None:
        argv = [str(TGATE), *args]
        if "--port" not in args:
            argv += ["--port", "0"]
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=REPO)
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            _, m = self.wait_for(BANNER, timeout=start_timeout)
        except BaseException:
            self.close()
            raise
        self.host = m.group(1).strip("[]")
        self.port = int(m.group(2))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def stderr(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def mark(self) -> int:
        """The number of stderr lines so far: pass it as `start` to wait_for."""
        with self._cond:
            return len(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, start: int = 0,
                 timeout: float = 20.0) -> tuple[int, re.Match[str]]:
        """The first stderr line from index `start` on that matches, waiting
        for it up to `timeout` seconds: (its index, the match)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return i, m
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "stderr ended" if self.eof else f"nothing after {timeout:g} s"
                    raise AssertionError(f"no line matching {rx.pattern!r} ({why}); "
                                         f"{shlex.join(self.argv)} said:\n"
                                         + "".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def has(self, pattern: str) -> bool:
        rx = re.compile(pattern)
        with self._cond:
            return any(rx.search(line) for line in self.lines)

    def handler_pids(self) -> list[int]:
        with self._cond:
            return [int(m.group(1)) for line in self.lines if (m := STARTED.search(line))]

    def wait_handlers(self, n: int, timeout: float = 20.0) -> list[int]:
        """Wait until `n` handler processes have been started: their pids."""
        deadline = time.monotonic() + timeout
        while len(pids := self.handler_pids()) < n:
            assert time.monotonic() < deadline and not self.eof, (
                f"{len(pids)} handler(s) started, waited for {n}:\n{self.stderr()}")
            time.sleep(0.02)
        return pids

    def connect(self, rcvbuf: int = 0, sndbuf: int = 0, timeout: float = 10.0) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.settimeout(timeout)
        s.connect((self.host, self.port))
        return s

    def signal(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        """Send sig to tgate and wait for it to exit: its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        # tgate's handlers die with it; make sure of it (they are ours)
        for pid in self.handler_pids():
            if not wait_gone(pid, 2):
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=5)


@contextmanager
def tgate(handler: str, *args: str) -> Iterator[Tgate]:
    t = Tgate(["--handler", handler, *args])
    try:
        yield t
    finally:
        t.close()


# ---------------------------------------------------------------- clients


def recv_line(s: socket.socket, buf: bytearray) -> bytes:
    """One line (with its newline) from s; `buf` keeps what follows it."""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(f"EOF; got {bytes(buf)!r}")
        buf += chunk
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line


def ask(s: socket.socket, line: bytes) -> bytes:
    s.sendall(line)
    return recv_line(s, bytearray())


def closed_by_peer(s: socket.socket, timeout: float = 15.0) -> bool:
    """True when the peer closes (EOF or reset) within timeout; what it
    sends before is read and dropped."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- signals


def test_sighup_reloads_under_load_and_every_reply_arrives_once_in_order() -> None:
    """Clients in a closed loop of numbered requests through examples/echo.py
    across two SIGHUPs: each reply is exactly its request, once, in order;
    each SIGHUP starts a new handler process and the old one goes away."""
    with tgate(example("echo.py")) as t:
        _, m = t.wait_for(STARTED)
        pids = [int(m.group(1))]
        stop = threading.Event()
        counts = [0, 0, 0]
        errors: list[str] = []

        def client(k: int) -> None:
            try:
                s = t.connect()
                with s:
                    buf = bytearray()
                    i = 0
                    while not stop.is_set():
                        req = f"client {k} request {i}\n".encode()
                        s.sendall(req)
                        got = recv_line(s, buf)
                        if got != req or buf:
                            errors.append(f"client {k}: sent {req!r}, got {got + buf!r}")
                            return
                        i += 1
                        counts[k] = i
                    s.shutdown(socket.SHUT_WR)
                    rest = b""
                    while chunk := s.recv(65536):
                        rest += chunk
                    if rest:
                        errors.append(f"client {k}: extra bytes after its last reply: {rest!r}")
            except Exception as exc:  # reported below, with tgate's stderr
                errors.append(f"client {k}: {exc!r}")

        def progress(n: int, timeout: float = 30.0) -> None:
            """Wait until every client did n more round trips."""
            target = [c + n for c in counts]
            deadline = time.monotonic() + timeout
            while any(c < g for c, g in zip(counts, target, strict=True)):
                assert not errors, errors
                assert time.monotonic() < deadline, f"no progress: {counts}\n{t.stderr()}"
                time.sleep(0.01)

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(3)]
        for th in threads:
            th.start()
        try:
            progress(50)
            for _ in range(2):
                mark = t.mark()
                t.proc.send_signal(signal.SIGHUP)
                _, m = t.wait_for(STARTED, start=mark, timeout=30)
                pids.append(int(m.group(1)))
                progress(50)  # served by the new handler
                assert pids[-1] != pids[-2]
                assert pids[-1] in descendants(t.proc.pid)
                assert wait_gone(pids[-2], 15), f"old handler {pids[-2]} still running"
        finally:
            stop.set()
            for th in threads:
                th.join(timeout=30)
        assert not errors, "\n".join(errors) + "\n" + t.stderr()
        assert all(c >= 150 for c in counts)
        assert t.signal(signal.SIGTERM) == 0
        assert wait_gone(pids[-1], 10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_exit_0_and_leave_no_handler(sig: signal.Signals) -> None:
    with tgate(example("echo.py")) as t:
        _, m = t.wait_for(STARTED)
        handler = int(m.group(1))
        with t.connect() as s:
            assert ask(s, b"ping\n") == b"ping\n"
            assert t.signal(sig) == 0
            assert closed_by_peer(s, 10)  # closed by the shutdown, not left hanging
        assert wait_gone(handler, 10), f"handler {handler} outlived tgate"


# ---------------------------------------------------------------- check-handler


def check_handler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TGATE), "check-handler", *args], cwd=REPO, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=180)


def test_check_handler_subcommand_passes_the_echo_example() -> None:
    r = check_handler(example("echo.py"))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, 0 failed(, \d+ skipped)?$", r.stdout, re.MULTILINE)
    assert m and int(m.group(1)) >= 10, r.stdout


def test_check_handler_subcommand_fails_a_broken_handler() -> None:
    r = check_handler(f"{PY} {shlex.quote(str(BROKEN))}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^\d+ passed, [1-9]\d* failed(, \d+ skipped)?$", r.stdout,
                     re.MULTILINE), r.stdout


# ---------------------------------------------------------------- every flag


def check_max_bufsize(t: Tgate) -> None:
    # the probe consumes nothing of a line without its newline
    with t.connect() as s:
        s.sendall(b"x" * 4000)  # > 1024, far below the default 65536
        assert closed_by_peer(s)
    t.wait_for(r"disconnected \(overflow\)")


def check_idle_timeout(t: Tgate) -> None:
    with t.connect() as s:
        assert closed_by_peer(s)  # silent: closed after ~0.5 s (default: never)
    t.wait_for(r"disconnected \(idle\)")


def check_max_clients(t: Tgate) -> None:
    first = t.connect()
    assert ask(first, b"one\n") == b"one\n"
    with t.connect() as second:  # connects: it waits in the listen backlog
        second.sendall(b"two\n")
        second.settimeout(1.0)
        with pytest.raises(TimeoutError):
            second.recv(100)  # not served while the first is there
        first.close()
        second.settimeout(15)
        assert recv_line(second, bytearray()) == b"two\n"


def check_max_clients_per_ip(t: Tgate) -> None:
    with t.connect() as first:
        assert ask(first, b"one\n") == b"one\n"
        with t.connect() as second:
            assert closed_by_peer(second)
        assert ask(first, b"still\n") == b"still\n"
    t.wait_for(r"--max-clients-per-ip")


def check_framing_line(t: Tgate) -> None:
    with t.connect() as s:
        # raw mode would answer "hi\n" (data, echoed as bytes)
        assert ask(s, b"hi\n") == b"frame hi\n"


def check_update_time(t: Tgate) -> None:
    with t.connect() as s:
        before = int(ask(s, b"TICKS\n").split()[1])
        time.sleep(2.0)
        after = int(ask(s, b"TICKS\n").split()[1])
    # ~20 ticks at 0.1 s; the default 1.0 s gives at most 3
    assert after - before >= 6, (before, after)


def check_handler_timeout(t: Tgate) -> None:
    first = t.handler_pids()[0]
    with t.connect() as s:
        s.sendall(b"SILENT\n")  # the handler never answers it
        # ~1.25 s with --handler-timeout 1; the default 10 s would miss this
        t.wait_for(r"\bhung\b", timeout=8)
        assert t.wait_handlers(2)[1] != first


def check_shutdown_grace(t: Tgate) -> None:
    with t.connect() as s:
        assert ask(s, b"warm\n") == b"warm\n"
        s.sendall(b"SLOW 3\n")  # answered after 3 s: within the default 5 s grace
        time.sleep(0.5)
        t.proc.send_signal(signal.SIGTERM)
        s.settimeout(15)
        got = b""
        with suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
        assert got == b"", "the reply came although --shutdown-grace 0.3 had passed"
    assert t.proc.wait(timeout=30) == 0


def check_on_crash_disconnect(t: Tgate) -> None:
    with t.connect() as a, t.connect() as b:
        assert ask(a, b"a\n") == b"a\n"
        b.sendall(b"CRASH\n")
        assert closed_by_peer(a)  # the default, keep, would keep it
    t.wait_handlers(2)
    with t.connect() as c:
        assert ask(c, b"c\n") == b"c\n"


def check_quarantine_after(t: Tgate) -> None:
    with t.connect() as good, t.connect() as bad:
        assert ask(good, b"a\n") == b"a\n"
        bad.sendall(b"CRASH\n")
        assert closed_by_peer(bad)
        t.wait_for(r"\(quarantined\)")
        assert ask(good, b"b\n") == b"b\n"
    # quarantined at the first crash: no second one (the default 3 replays it twice)
    assert len(t.handler_pids()) == 2, t.stderr()


def check_max_output(t: Tgate) -> None:
    with t.connect(rcvbuf=4096) as s:
        s.sendall(b"BIG 8000000\n")  # 8 MB that it never reads
        t.wait_for(r"\(slow\).*\b65536\b", timeout=60)  # "..., limit 65536"


def check_bufsize(t: Tgate) -> None:
    with t.connect() as s:
        line = b"x" * 100 + b"\n"
        assert ask(s, line) == line  # sent at once, 101 bytes
        sizes = [int(n) for n in ask(s, b"SIZES\n").split()[1].split(b",")]
    # the first read takes at most --bufsize bytes (the default 128 takes all 101)
    assert sizes[0] <= 16 and sum(sizes[:-1]) == 101, sizes


def check_listen_count(t: Tgate) -> None:
    # With --max-clients 1 the gateway stops accepting; the kernel then keeps
    # at most listen-count + 1 connections in the backlog and drops further
    # SYNs (the default 511 would take them all).
    first = t.connect()
    waiting: list[socket.socket] = []
    try:
        assert ask(first, b"one\n") == b"one\n"
        refused = 0
        for _ in range(5):
            try:
                waiting.append(t.connect(timeout=1.5))
            except (TimeoutError, ConnectionRefusedError):
                refused += 1
                break
        assert refused and len(waiting) <= 3, len(waiting)
    finally:
        first.close()
        for s in waiting:
            s.close()


def check_host_port(t: Tgate) -> None:
    assert t.host == "127.0.0.2" and t.port == int(t.argv[t.argv.index("--port") + 1])
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(10)
        s.connect(("127.0.0.1", t.port))  # not listening on the default host


def check_log_level_debug(t: Tgate) -> None:
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
    t.wait_for(r"DEBUG.*client \d+ connected")


def check_workers(t: Tgate) -> None:
    # three handler processes, and clients spread over them
    pids = t.wait_handlers(3)
    assert len(set(pids)) == 3
    with t.connect() as a, t.connect() as b:
        assert ask(a, b"hi\n") == b"hi\n"
        assert ask(b, b"hi\n") == b"hi\n"


def check_max_channels_per_client(t: Tgate) -> None:
    with t.connect() as s:
        for ch in ("a", "b"):
            assert ask(s, f"SUB {ch}\n".encode()) == f"SUB {ch}\n".encode()
    t.wait_for(r"--max-channels-per-client")


POOL_HANDLER = f"{PY} {FIXTURES / 'pool_handler.py'}"


def check_metrics(t: Tgate) -> None:
    _, m = t.wait_for(r"tgate metrics on http://(\S+):(\d+)/metrics")
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
        url = f"http://{m.group(1)}:{m.group(2)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    assert re.search(r"^tgate_clients 1$", text, re.MULTILINE), text


def check_drain_timeout(t: Tgate) -> None:
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
        t.proc.send_signal(signal.SIGTERM)
        t.wait_for(r"draining")
        with pytest.raises(ConnectionRefusedError):  # not accepting any more...
            socket.create_connection((t.host, t.port), timeout=5).close()
        assert ask(s, b"still\n") == b"still\n"  # ...but still serving


def check_log_format_json(t: Tgate) -> None:
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
    t.wait_for(r'"logger":"tgate.access"')
    for line in t.stderr().splitlines():
        json.loads(line)  # every line, the banner included


def check_access_log_off(t: Tgate) -> None:
    with t.connect() as s:
        assert ask(s, b"hi\n") == b"hi\n"
    with t.connect() as s:  # the first one's end has been handled by now
        assert ask(s, b"hi\n") == b"hi\n"
    assert "access:" not in t.stderr()


@dataclass
class Case:
    args: list[str] | Callable[[], list[str]]
    check: Callable[[Tgate], None]
    handler: str = field(default_factory=probe)


FLAGS: dict[str, Case] = {
    "--max-bufsize": Case(["--max-bufsize", "1024"], check_max_bufsize),
    "--idle-timeout": Case(["--idle-timeout", "0.5"], check_idle_timeout),
    "--max-clients": Case(["--max-clients", "1"], check_max_clients),
    "--max-clients-per-ip": Case(["--max-clients-per-ip", "1"], check_max_clients_per_ip),
    "--framing": Case(["--framing", "line"], check_framing_line),
    "--update-time": Case(["--update-time", "0.1"], check_update_time),
    "--handler-timeout": Case(["--handler-timeout", "1"], check_handler_timeout),
    "--shutdown-grace": Case(["--shutdown-grace", "0.3"], check_shutdown_grace),
    "--on-crash": Case(["--on-crash", "disconnect"], check_on_crash_disconnect),
    "--quarantine-after": Case(["--quarantine-after", "1"], check_quarantine_after),
    "--max-output": Case(["--max-output", "65536"], check_max_output),
    "--bufsize": Case(["--bufsize", "16"], check_bufsize),
    "--listen-count": Case(["--listen-count", "1", "--max-clients", "1"], check_listen_count),
    "--host/--port": Case(lambda: ["--host", "127.0.0.2", "--port", str(free_port("127.0.0.2"))],
                          check_host_port),
    "--log-level": Case(["--log-level", "debug"], check_log_level_debug),
    "--workers": Case(["--workers", "3"], check_workers, handler=POOL_HANDLER),
    "--metrics": Case(["--metrics", "127.0.0.1:0"], check_metrics),
    "--drain-timeout": Case(["--drain-timeout", "5"], check_drain_timeout),
    "--log-format": Case(["--log-format", "json"], check_log_format_json),
    "--access-log": Case(["--access-log", "off"], check_access_log_off),
    "--max-channels-per-client": Case(["--max-channels-per-client", "1"],
                                      check_max_channels_per_client, handler=POOL_HANDLER),
}


@pytest.mark.parametrize("flag", list(FLAGS))
def test_flag_takes_effect(flag: str) -> None:
    """Each option, given on the command line, changes what a user sees."""
    case = FLAGS[flag]
    args = case.args() if callable(case.args) else case.args
    with tgate(case.handler, *args) as t:
        t.wait_for(STARTED)
        case.check(t)


def test_every_option_is_in_the_flag_table() -> None:
    r = subprocess.run([str(TGATE), "--help"], capture_output=True, text=True, timeout=30)
    options = set(re.findall(r"(--[a-z][a-z-]+)", r.stdout)) - {"--help", "--version"}
    covered = {f for key in FLAGS for f in key.split("/")} | {"--handler"}
    assert options <= covered, f"no front-door test for {sorted(options - covered)}"


# ---------------------------------------------------------------- the hang timer


def test_hang_timer_counts_from_the_oldest_unanswered_data() -> None:
    """A handler that owes one client a reply is hung even while it keeps
    answering another: the timer runs from the oldest unanswered data, not
    from the handler's last output."""
    with tgate(probe(), "--handler-timeout", "1") as t:
        first = t.handler_pids()[0]
        with t.connect() as owed, t.connect() as busy:
            assert ask(owed, b"hello\n") == b"hello\n"
            owed.sendall(b"SILENT\n")  # never answered
            sent = time.monotonic()
            hung = None
            i = 0
            # `busy` is answered at once, again and again, for up to 10 s
            while hung is None and time.monotonic() - sent < 10:
                req = f"busy {i}\n".encode()
                assert ask(busy, req) == req
                i += 1
                time.sleep(0.05)
                if t.has(r"\bhung\b"):
                    hung = time.monotonic() - sent
            assert hung is not None, (
                f"not detected as hung in 10 s with --handler-timeout 1 while it answered "
                f"another client {i} times:\n{t.stderr()}")
            # the restart keeps both clients: busy is still served
            assert t.wait_handlers(2)[1] != first
            assert ask(busy, b"after\n") == b"after\n"


# ---------------------------------------------------------------- the read pause


def test_reading_pauses_at_half_max_output_before_the_client_is_slow() -> None:
    """A client that keeps sending requests but never reads, to a handler
    whose replies are 4x the request: once half of --max-output is queued
    for it, tgate must stop reading it, so the client's sends block, and it
    is never disconnected as slow. Without the pause tgate would go on
    reading and queueing until the client is past --max-output: kernel
    buffers absorb a few MB, not a client that keeps sending.

    Why no slow disconnect is certain with the pause: tgate holds at most
    --max-bufsize (64 KiB) of a client's unanswered bytes, so at most 4 x
    64 KiB of replies can still come once reading stops at 512 KiB, and
    512 + 256 KiB < 1 MiB. The client paces its requests (one per ms) so
    that they are read as they come rather than piling up to a full buffer
    (a full buffer stops reading too, which would hide a missing pause)."""
    limit = 1 << 20
    with tgate(probe("4"), "--max-output", str(limit), "--max-bufsize", "65536") as t:
        s = t.connect(rcvbuf=4096, sndbuf=4096)
        with s:
            s.setblocking(False)
            sent = bytearray()
            i = 0
            blocked = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(sent) < 64 << 20:
                pending = b"request %08d " % i + b"." * 980 + b"\n"  # 1000 bytes
                i += 1
                while pending:
                    try:
                        n = s.send(pending)
                    except BlockingIOError:
                        assert not t.has(r"\(slow\)"), t.stderr()
                        _, writable, _ = select.select([], [s], [], 3.0)
                        if not writable:  # nothing taken for 3 s: tgate stopped reading
                            blocked = True
                            break
                        continue
                    except OSError as exc:
                        pytest.fail(f"disconnected after {len(sent)} bytes sent ({exc!r}):\n"
                                    + t.stderr())
                    sent += pending[:n]
                    pending = pending[n:]
                if blocked:
                    break
                time.sleep(0.001)
            assert blocked, (f"tgate kept reading a client that never reads: {len(sent)} "
                             f"bytes sent:\n{t.stderr()}")
            # it stays paused: the client never reads, so nothing drains
            _, writable, _ = select.select([], [s], [], 1.0)
            assert not writable
            assert not t.has(r"\(slow\)"), t.stderr()
            # now read: every complete request is answered, 4 times, in order
            complete = bytes(sent[: sent.rindex(b"\n") + 1])
            expected = b"".join(line * 4 for line in complete.splitlines(keepends=True))
            s.setblocking(True)
            s.settimeout(30)
            got = bytearray()
            while len(got) < len(expected):
                chunk = s.recv(1 << 20)
                assert chunk, (f"EOF after {len(got)} of {len(expected)} bytes:\n"
                               + t.stderr())
                got += chunk
            assert got == expected
        assert not t.has(r"\(slow\)"), t.stderr()
