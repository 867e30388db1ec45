"""The tgate command as a user runs it: real process, real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import PY, REPO, example

TGATE = [sys.executable, "-m", "tgate"]


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


class Running:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, handler_pid: int,
                 lines: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.handler_pid = handler_pid
        self.lines = lines

    def rest_of_stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


@contextmanager
def tgate(handler: str, *extra: str) -> Iterator[Running]:
    proc = subprocess.Popen(
        [*TGATE, "--handler", handler, "--port", "0", *extra],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    port = handler_pid = 0
    try:
        deadline = time.monotonic() + 20
        while not port and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"handler started \(pid (\d+)\)", line):
                handler_pid = int(m.group(1))
            if m := re.fullmatch(r"tgate listening on 127\.0\.0\.1:(\d+)\n", line):
                port = int(m.group(1))
        assert port and handler_pid, lines
        yield Running(proc, port, handler_pid, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def echo_once(port: int, payload: bytes = b"ping\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_cleanly_and_reaps_the_handler(sig: signal.Signals) -> None:
    with tgate(example("echo.py")) as t:
        assert echo_once(t.port) == b"ping\n"
        idle = socket.create_connection(("127.0.0.1", t.port), timeout=10)
        t.proc.send_signal(sig)
        assert t.proc.wait(timeout=20) == 0
        assert idle.recv(10) == b""  # closed by the shutdown, not left hanging
        idle.close()
        assert wait_gone(t.handler_pid, 5)
        assert "shutting down" in t.rest_of_stderr()


def test_stubborn_handler_is_terminated_then_killed() -> None:
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    stubborn = f"{PY} -c '{code}'"
    with tgate(stubborn, "--shutdown-grace", "0.5") as t:
        t.proc.send_signal(signal.SIGTERM)
        assert t.proc.wait(timeout=30) == 0
        assert wait_gone(t.handler_pid, 5)


def test_killed_gateway_leaves_no_orphan() -> None:
    with tgate(example("echo.py")) as t:
        t.proc.send_signal(signal.SIGKILL)
        t.proc.wait(timeout=10)
        assert wait_gone(t.handler_pid, 10)


def test_handler_not_found_is_one_clear_line() -> None:
    r = subprocess.run([*TGATE, "--handler", "no-such-program-xyz", "--port", "0"],
                       capture_output=True, timeout=20)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        "tgate: error: cannot start handler 'no-such-program-xyz': No such file or directory"
    )


def test_handler_that_exits_at_once_is_an_error() -> None:
    r = subprocess.run([*TGATE, "--handler", f"{PY} -c 'raise SystemExit(7)'", "--port", "0"],
                       capture_output=True, timeout=20)
    assert r.returncode == 1
    last = r.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("tgate: error: handler") and "exited with code 7 at once" in last
    assert "Traceback" not in r.stderr.decode()


def test_help_lists_every_option_with_its_default() -> None:
    r = subprocess.run([*TGATE, "--help"], capture_output=True, timeout=20, text=True)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for option, default in [("--host", "127.0.0.1"), ("--port", "7000"),
                            ("--listen-count", "511"), ("--update-time", "1.0"),
                            ("--bufsize", "128"), ("--max-bufsize", "65536"),
                            ("--log-level", "info")]:
        assert option in text
        assert f"(default: {default})" in text.split(option, 1)[1], option
    v = subprocess.run([*TGATE, "--version"], capture_output=True, timeout=20, text=True)
    assert re.fullmatch(r"tgate \d+\.\d+\.\d+\n", v.stdout)


def test_handler_command_is_split_like_a_shell_without_a_shell(tmp_path) -> None:
    marker = tmp_path / "x y"
    # Quoted argument with a space survives; `;` is not interpreted.
    code = 'import sys, time; open(sys.argv[1], "w").write(sys.argv[2]); time.sleep(60)'
    handler = f"{PY} -c '{code}' '{marker}' 'a;b'"
    with tgate(handler) as t:
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.read_text() == "a;b"
        t.proc.send_signal(signal.SIGTERM)
        assert t.proc.wait(timeout=30) == 0


def test_python_m_tgate_is_the_same_command() -> None:
    assert os.path.exists(REPO / "src" / "tgate" / "__main__.py")
    r = subprocess.run([*TGATE, "--version"], capture_output=True, timeout=20, text=True)
    r2 = subprocess.run(["tgate", "--version"], capture_output=True, timeout=20, text=True)
    assert r.stdout == r2.stdout


BAD_VALUES = [
    (["--port", "99999"], "argument --port: must be 0-65535, not 99999"),
    (["--port", "-1"], "argument --port: must be 0-65535, not -1"),
    (["--port", "http"], "argument --port: must be 0-65535, not http"),
    (["--max-clients", "-5"], "argument --max-clients: must be an integer >= 0, not -5"),
    (["--max-clients-per-ip", "-1"],
     "argument --max-clients-per-ip: must be an integer >= 0, not -1"),
    (["--quarantine-after", "-2"], "argument --quarantine-after: must be an integer >= 0, not -2"),
    (["--bufsize", "0"], "argument --bufsize: must be an integer > 0, not 0"),
    (["--max-bufsize", "-3"], "argument --max-bufsize: must be an integer > 0, not -3"),
    (["--max-output", "0"], "argument --max-output: must be an integer > 0, not 0"),
    (["--listen-count", "0"], "argument --listen-count: must be an integer > 0, not 0"),
    (["--listen-count", "1.5"], "argument --listen-count: must be an integer > 0, not 1.5"),
    (["--update-time", "0"], "argument --update-time: must be a number > 0, not 0"),
    (["--update-time", "nan"], "argument --update-time: must be a number > 0, not nan"),
    (["--update-time", "inf"], "argument --update-time: must be a number > 0, not inf"),
    (["--handler-timeout", "-1"], "argument --handler-timeout: must be a number >= 0, not -1"),
    (["--shutdown-grace", "inf"], "argument --shutdown-grace: must be a number >= 0, not inf"),
    (["--idle-timeout", "nan"], "argument --idle-timeout: must be a number >= 0, not nan"),
    (["--idle-timeout", "soon"], "argument --idle-timeout: must be a number >= 0, not soon"),
    (["--on-crash", "retry"],
     "argument --on-crash: invalid choice: 'retry' (choose from 'keep', 'disconnect')"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_option_values_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """On main: --port 99999 listened on 34463, --max-clients -5 never accepted,
    and every argument error printed the whole usage first (issue 17)."""
    r = subprocess.run([*TGATE, "--handler", "cat", *args], capture_output=True, timeout=20,
                       text=True)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == [f"tgate: error: {message}", "Try 'tgate --help'."]


def test_missing_handler_is_one_line_and_a_hint() -> None:
    r = subprocess.run([*TGATE, "--port", "0"], capture_output=True, timeout=20, text=True)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "tgate: error: the following arguments are required: --handler", "Try 'tgate --help'."]


def test_inconsistent_buffer_sizes_are_one_line() -> None:
    r = subprocess.run([*TGATE, "--handler", "cat", "--bufsize", "100000"],
                       capture_output=True, timeout=20, text=True)
    assert r.returncode == 2
    assert r.stderr == "tgate: error: need 0 < bufsize <= max_bufsize\n"


@pytest.mark.parametrize("args", [
    ["--port", "0"], ["--port", "65535"], ["--max-clients", "0"], ["--max-clients-per-ip", "0"],
    ["--quarantine-after", "0"], ["--handler-timeout", "0"], ["--idle-timeout", "0.5"],
    ["--shutdown-grace", "0"], ["--update-time", "0.001"], ["--bufsize", "1"],
])
def test_edge_values_are_accepted(args: list[str]) -> None:
    from tgate.cli import build_parser

    ns = build_parser().parse_args(["--handler", "cat", *args])
    name = args[0].lstrip("-").replace("-", "_")
    assert getattr(ns, name) == type(getattr(ns, name))(args[1])
