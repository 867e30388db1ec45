"""Issue 11 and 20 through the front door: a real tgate process, real
signals, real sockets on port 0, real handler processes. Each test is one
failure that was reproduced on the gateway before these fixes."""

from __future__ import annotations

import os
import re
import resource
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import PY, REPO, example, scripted

BANNER = re.compile(r"tgate listening on (\S+):(\d+)")


class Tgate:
    """`python -m tgate` with its stderr collected by a thread."""

    def __init__(self, args: list[str], preexec: Callable[[], None] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO / "src"), str(REPO / "adapters" / "python")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tgate", "--port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(BANNER).group(2))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode(errors="replace"))

    def log(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0,
                 count: int = 1) -> re.Match[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(rx.finditer(self.log()))
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None and len(found) < count:
                time.sleep(0.2)
                found = list(rx.finditer(self.log()))
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(f"tgate exited ({self.proc.returncode}) before "
                                     f"{rx.pattern!r}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"no {rx.pattern!r} within {timeout} s:\n{self.log()}")

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def handler_pids(self) -> list[int]:
        return [int(m) for m in re.findall(r"handler started \(pid (\d+)\)", self.log())]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


@contextmanager
def tgate(*args: str, preexec: Callable[[], None] | None = None) -> Iterator[Tgate]:
    t = Tgate(list(args), preexec)
    try:
        yield t
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


def recv_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    return buf


def echo_ok(t: Tgate, text: bytes = b"ping\n") -> None:
    with t.connect() as s:
        s.sendall(text)
        assert recv_line(s) == text


def rst_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def write_script(path: Path, text: str) -> str:
    path.write_text(text)
    return f"{PY} {shlex.quote(str(path))}"


def echo_after(path: Path, prelude: str) -> str:
    """A handler script: `prelude`, then examples/echo.py."""
    echo = str(REPO / "examples" / "echo.py")
    return write_script(path, prelude + f"import runpy\nrunpy.run_path({echo!r}, "
                        "run_name='__main__')\n")


# ------------------------------------------------------------------ 11.1 restarts


def test_sighup_with_handler_file_missing_keeps_the_old_handler(tmp_path: Path) -> None:
    src = (REPO / "examples" / "echo.py").read_text()
    script = tmp_path / "h.py"
    with tgate("--handler", write_script(script, src)) as t:
        with t.connect() as s:
            s.sendall(b"a\n")
            assert recv_line(s) == b"a\n"
            script.rename(tmp_path / "gone.py")  # mid-deploy
            t.signal(signal.SIGHUP)
            t.wait_for("reload failed")
            s.sendall(b"b\n")
            assert recv_line(s) == b"b\n"  # same client, old handler
        assert len(t.handler_pids()) == 1
        assert t.proc.poll() is None


def test_sighup_whose_new_handler_dies_at_once_keeps_the_old_one(tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    prelude = f"import os, sys\nif os.path.exists({str(flag)!r}): sys.exit('broken deploy')\n"
    with tgate("--handler", echo_after(tmp_path / "h.py", prelude)) as t:
        with t.connect() as s:
            s.sendall(b"up\n")
            assert recv_line(s) == b"up\n"  # the first handler is past its prelude
            flag.touch()
            t.signal(signal.SIGHUP)
            t.wait_for(r"reload failed: new handler \(pid \d+\) exited with code 1")
            s.sendall(b"still\n")
            assert recv_line(s) == b"still\n"


def test_crash_while_handler_cannot_start_keeps_clients_and_retries(tmp_path: Path) -> None:
    # The handler command is the script itself (a shebang), so that a missing
    # file is a failed exec (ENOENT), not an interpreter that exits at once.
    log = tmp_path / "log"
    script = tmp_path / "h.py"
    body = (REPO / "tests" / "fixtures" / "scripted_handler.py").read_text()
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    cmd = f"{shlex.quote(str(script))} {shlex.quote(str(log))} crash-on CRASH"
    with tgate("--handler", cmd) as t:
        with t.connect() as victim, t.connect() as s:
            s.sendall(b"x\n")
            assert recv_line(s) == b"x\n"
            script.rename(tmp_path / "away.py")
            victim.sendall(b"CRASH\n")  # consumed by nobody: replayed later
            t.wait_for("cannot start handler")
            t.wait_for("retrying in", count=2)
            s.sendall(b"queued\n")  # held while no handler runs
            (tmp_path / "away.py").rename(script)
            t.wait_for(r"handler started \(pid \d+\)", count=2)
            assert recv_line(s) == b"queued\n"
        assert t.proc.poll() is None


def test_sighup_at_the_open_file_limit_keeps_the_old_handler(tmp_path: Path) -> None:
    # tgate raises its soft limit to the hard limit: lower both.
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    with tgate("--handler", example("echo.py"), preexec=low_limit) as t:
        keep = t.connect()
        keep.sendall(b"k\n")
        assert recv_line(keep) == b"k\n"
        hogs: list[socket.socket] = []
        while "accept failed" not in t.log():  # fill tgate's fd table
            assert len(hogs) < 60, t.log()
            s = t.connect()
            hogs.append(s)
            time.sleep(0.01)
        t.signal(signal.SIGHUP)
        t.wait_for(r"reload failed: cannot start handler .*Too many open files")
        for s in hogs:
            s.close()
        keep.sendall(b"after\n")
        assert recv_line(keep) == b"after\n"  # the old handler kept serving
        t.signal(signal.SIGHUP)
        t.wait_for("replaced by pid")
        keep.sendall(b"new\n")
        assert recv_line(keep) == b"new\n"
        keep.close()


# ------------------------------------------------------------------ 11.2 stops


@pytest.mark.parametrize("moment", ["backoff", "hung", "stuck", "same-signal"])
def test_sigterm_at_any_moment_exits_within_the_grace(tmp_path: Path, moment: str) -> None:
    log = tmp_path / "log"
    timeout = "60"
    if moment == "hung":
        handler = scripted(log, "hang-on", "HANG")
    elif moment == "stuck":
        # Stops reading, ignores SIGTERM, and is detected as hung during the
        # shutdown's grace: the restart path must not start another.
        timeout = "0.5"
        handler = echo_after(tmp_path / "stuck.py", (
            "import os, signal, sys, time\n"
            f"flag = {str(tmp_path / 'once')!r}\n"
            "if not os.path.exists(flag):\n"
            "    open(flag, 'w').close()\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "    sys.stdin.readline()\n"
            "    time.sleep(3600)\n"
        ))
    else:
        handler = scripted(log, "crash-on", "CRASH")
    grace = 1.0
    with tgate("--handler", handler, "--shutdown-grace", str(grace),
               "--handler-timeout", timeout) as t:
        with t.connect() as s:
            if moment != "stuck":
                s.sendall(b"hi\n")
                assert recv_line(s) == b"hi\n"
            (pid,) = t.handler_pids()
            if moment == "stuck":
                s.sendall(b"never answered\n")
                time.sleep(0.2)
                t.signal(signal.SIGTERM)
            elif moment == "backoff":
                # two crashes in a row: the second restart waits (backoff)
                s.sendall(b"CRASH\n")
                t.wait_for("restarting in 0.00 s")
                t.wait_for(r"handler started \(pid \d+\)", count=2)
                t.wait_for("restarting in 0.[0-9][1-9]|restarting in 0.[1-9]", timeout=20)
                t.signal(signal.SIGTERM)
            elif moment == "hung":
                s.sendall(b"HANG\nmore\n")
                time.sleep(0.3)
                t.signal(signal.SIGTERM)
            else:
                # systemd's KillMode=control-group: both at once
                os.kill(pid, signal.SIGTERM)
                t.signal(signal.SIGTERM)
            start = time.monotonic()
            assert t.wait(timeout=grace + 4 + 5) == 0
            took = time.monotonic() - start
        assert took < grace + 4 + 3, t.log()
        for p in t.handler_pids():
            wait_gone(p)
        assert t.log().count("handler started") <= len(t.handler_pids())


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with tgate("--handler", scripted(log, "hang-on", "HANG"), "--shutdown-grace", "30",
               "--handler-timeout", "60") as t:
        with t.connect() as s:
            s.sendall(b"HANG\nx\n")
            time.sleep(0.3)
            t.signal(signal.SIGTERM)
            t.wait_for("shutting down")
            start = time.monotonic()
            t.signal(signal.SIGTERM)
            assert t.wait(timeout=10) == 0
            assert time.monotonic() - start < 5
        (pid,) = t.handler_pids()
        wait_gone(pid, 5)
        assert "again: stopping at once" in t.log()


# ------------------------------------------------------------------ 11.5 quarantine


def test_poison_client_alone_is_quarantined_with_busy_bystanders(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with tgate("--handler", scripted(log, "crash-on", "CRASH")) as t:
        poison = t.connect()  # the lowest id
        others = [t.connect() for _ in range(5)]
        for i, s in enumerate(others):
            s.sendall(f"warm {i}\n".encode())
            assert recv_line(s) == f"warm {i}\n".encode()
        stop = threading.Event()
        errors: list[BaseException] = []

        def chatter(s: socket.socket, i: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    msg = f"c{i} {n}\n".encode()
                    s.sendall(msg)
                    assert recv_line(s) == msg
                    n += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=chatter, args=(s, i)) for i, s in enumerate(others)]
        for th in threads:
            th.start()
        time.sleep(0.2)
        poison.sendall(b"ok\nCRASH\n")
        t.wait_for(r"client 1 disconnected \(quarantined\)", timeout=30)
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join(10)
        assert not errors, errors
        poison.settimeout(5)
        assert poison.recv(100) in (b"ok\n", b"")  # its own answer, if any, then EOF
        assert t.log().count("disconnected (quarantined)") == 1
        for s in others:
            s.sendall(b"alive\n")
            assert recv_line(s) == b"alive\n"
            s.close()
        poison.close()


# ------------------------------------------------------------------ 11.9 descendants


def test_handler_children_die_when_tgate_is_sigkilled(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    prelude = (
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
    )
    with tgate("--handler", echo_after(tmp_path / "h.py", prelude)) as t:
        echo_ok(t)
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(pidfile.read_text())
        (handler,) = t.handler_pids()
        assert alive(child)
        t.proc.kill()
        t.proc.wait()
    wait_gone(handler)
    wait_gone(child)  # the guardian killed the handler's process group


# ------------------------------------------------------------------ 20.3 framed reload


def test_framed_reload_answers_the_frames_in_flight(tmp_path: Path) -> None:
    slow = write_script(tmp_path / "slow.py", (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO / 'adapters' / 'python')!r})\n"
        "from tgate_handler import ServerLoop\n"
        "class Slow(ServerLoop):\n"
        "    def process_frame(self, client, frame):\n"
        "        time.sleep(0.02)\n"
        "        client.write(frame)\n"
        "Slow().run()\n"
    ))
    with tgate("--handler", slow, "--framing", "line", "--shutdown-grace", "5") as t:
        with t.connect() as s:
            s.sendall(b"".join(b"req %d\n" % i for i in range(20)))
            time.sleep(0.05)
            t.signal(signal.SIGHUP)
            got = b""
            s.settimeout(10)
            while got.count(b"\n") < 20:
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            assert got == b"".join(b"req %d\n" % i for i in range(20))
            t.wait_for("replaced by pid")
            s.sendall(b"new\n")
            assert recv_line(s) == b"new\n"


# ------------------------------------------------------------------ 20.4 EOF'd sockets


def test_reset_after_eof_frees_the_slot(tmp_path: Path) -> None:
    keeps = write_script(tmp_path / "keeps.py", (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'adapters' / 'python')!r})\n"
        "from tgate_handler import ServerLoop\n"
        "class Keep(ServerLoop):\n"
        "    def process_frame(self, client, frame):\n"
        "        client.write(frame)\n"
        "    def client_eof(self, client):\n"
        "        pass  # allowed: the handler keeps the client open\n"
        "Keep().run()\n"
    ))
    with tgate("--handler", keeps, "--framing", "line", "--max-clients", "5") as t:
        for _ in range(5):
            s = t.connect()
            s.sendall(b"bye\n")
            assert recv_line(s) == b"bye\n"
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
            rst_close(s)
        with t.connect() as sixth:
            sixth.settimeout(10)
            sixth.sendall(b"served\n")
            assert recv_line(sixth) == b"served\n"


# ------------------------------------------------------------------ 20.6 blocked stdin


def test_handler_not_reading_its_stdin_is_detected_as_hung(tmp_path: Path) -> None:
    blocked = echo_after(tmp_path / "blocked.py", (
        "import os, sys, time\n"
        f"flag = {str(tmp_path / 'once')!r}\n"
        "if not os.path.exists(flag):\n"
        "    open(flag, 'w').close()\n"
        "    sys.stdin.readline()\n"
        "    time.sleep(3600)\n"
    ))
    with tgate("--handler", blocked, "--handler-timeout", "1", "--framing", "line") as t:
        # Framed: nothing is ever owed, so only the pipe that takes nothing
        # can tell that this handler is stuck (connects, frames, disconnects).
        clients = []
        for _ in range(100):
            s = t.connect()
            s.sendall(b"x" * 2000 + b"\n")
            clients.append(s)
        t.wait_for("read none of its stdin", timeout=30)
        t.wait_for(r"handler started \(pid \d+\)", count=2)
        for s in clients:
            s.close()
        echo_ok(t)
        assert "a reply owed" not in t.log()


# ------------------------------------------------------------------ 20.8 output limit


def test_one_write_larger_than_max_output_reaches_a_reading_client(tmp_path: Path) -> None:
    big = write_script(tmp_path / "big.py", (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'adapters' / 'python')!r})\n"
        "from tgate_handler import ServerLoop\n"
        "class Big(ServerLoop):\n"
        "    def process_client_data(self, client, buf):\n"
        "        if b'\\n' not in buf:\n"
        "            return 0\n"
        "        client.write(b'B' * 1_100_000 + b'\\n')\n"
        "        return buf.index(b'\\n') + 1\n"
        "Big().run()\n"
    ))
    with tgate("--handler", big, "--max-output", str(1 << 20)) as t:
        with t.connect() as s:
            s.sendall(b"go\n")
            got = recv_line(s)
            assert len(got) == 1_100_001
        assert "(slow)" not in t.log()


# ------------------------------------------------------------------ 20.9 stdin closed


def test_handler_that_closes_its_stdin_is_replaced(tmp_path: Path) -> None:
    closer = echo_after(tmp_path / "closer.py", (
        "import os, sys, time\n"
        f"flag = {str(tmp_path / 'once')!r}\n"
        "if not os.path.exists(flag):\n"
        "    open(flag, 'w').close()\n"
        "    sys.stdin.readline()\n"
        "    os.close(0)\n"
        "    time.sleep(3600)\n"
    ))
    with tgate("--handler", closer) as t:
        deadline = time.monotonic() + 20
        while "the link is lost" not in t.log():
            assert time.monotonic() < deadline, t.log()
            try:
                with t.connect() as s:
                    s.sendall(b"x\n")
            except OSError:
                pass
            time.sleep(0.05)
        t.wait_for(r"handler started \(pid \d+\)", count=2)
        echo_ok(t)


# ------------------------------------------------------------------ 11.1 example


def test_example_echo_still_serves() -> None:
    with tgate("--handler", example("echo.py")) as t:
        echo_ok(t)
        t.signal(signal.SIGINT)
        assert t.wait(timeout=15) == 0
