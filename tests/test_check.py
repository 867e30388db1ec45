"""Tests for `tgate check-handler` (tgate.check): good handlers pass, broken ones fail loudly.

Run from a checkout with: PYTHONPATH=src python -m pytest tests/test_check.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tgate.check import PROBE, main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
LINE_ECHO = FIXTURES / "line_echo.py"
BROKEN = FIXTURES / "broken_handler.py"
ECHO_PL = ROOT / "examples" / "echo.pl"

needs_perl = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


def py(script: Path, *args: str) -> str:
    return shlex.join([sys.executable, str(script), *args])


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def row(out: str, scenario: str) -> str:
    """The table row of one scenario."""
    for line in out.splitlines():
        if line.split(" | ")[0].strip() == scenario:
            return line
    raise AssertionError(f"no row for {scenario!r} in:\n{out}")


def summary(out: str) -> tuple[int, int]:
    found = re.search(r"^(\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert found, out
    return int(found.group(1)), int(found.group(2))


ALL_ROWS = [
    "hello-silence",
    "one-data",
    "split",
    "ids-live",
    "close",
    "disconnect-pending",
    "ticks",
    "many-clients",
    "binary",
    "eof",
    "unknown-ops",
    "stdin-eof",
    "valid-lines",
]


def test_line_echo_fixture_is_the_doc_example() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    block = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)[-1]
    fixture = LINE_ECHO.read_text()
    assert fixture.endswith(block), "tests/fixtures/line_echo.py no longer matches the doc"


def test_doc_line_echo_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, py(LINE_ECHO))
    assert code == 0, out
    assert summary(out) == (len(ALL_ROWS), 0)
    for name in ALL_ROWS:
        assert row(out, name).endswith("| PASS"), row(out, name)
    assert "FAIL" not in out
    assert re.match(r"scenario +\| expected +\| seen +\| result$", out.splitlines()[0])


@needs_perl
def test_echo_pl_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert os.access(ECHO_PL, os.X_OK), "examples/echo.pl must be executable"
    code, out = check(capsys, str(ECHO_PL))
    assert code == 0, out
    assert summary(out) == (len(ALL_ROWS), 0)
    # An echo consumes everything it is sent, and sends it all back.
    n = len(PROBE)
    assert f"1 consumed: n=[{n}] for {n} bytes held" in row(out, "one-data")
    assert f"same {n}-byte output" in row(out, "split")


def _talk(argv: list[str], lines: list[bytes]) -> list[object]:
    proc = subprocess.run(argv, input=b"".join(lines), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@needs_perl
@pytest.mark.parametrize("encode", ["orjson", "ascii-escapes"])
def test_echo_pl_is_byte_exact(encode: str) -> None:
    payload = bytes(range(256)) + b'\\"\n' + "é".encode()

    def dump(msg: dict[str, object]) -> bytes:
        if encode == "orjson":  # raw UTF-8 for 0x80..0xFF, as tgate sends it
            return orjson.dumps(msg) + b"\n"
        return json.dumps(msg).encode() + b"\n"  # \u00XX escapes: any valid JSON

    replies = _talk(
        [str(ECHO_PL)],
        [
            dump({"op": "hello", "protocol": 1}),
            dump({"op": "connect", "id": 7, "peer": ["::1", 1], "local": ["::1", 2]}),
            dump({"op": "data", "id": 7, "data": payload.decode("latin-1")}),
            dump({"op": "tick"}),
            dump({"op": "data", "id": 7, "data": "", "eof": True}),
            dump({"op": "disconnect", "id": 7, "reason": "eof"}),
        ],
    )
    assert replies == [
        [
            {"op": "write", "id": 7, "data": payload.decode("latin-1")},
            {"op": "consumed", "id": 7, "n": len(payload)},
        ],
        [{"op": "consumed", "id": 7, "n": 0}],
    ]


def test_broken_handler_fails_with_concrete_messages(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, py(BROKEN))
    assert code == 1, out
    passed, failed = summary(out)
    assert failed >= 10 and passed + failed == len(ALL_ROWS)
    assert row(out, "one-data").endswith("| FAIL")
    assert row(out, "ids-live").endswith("| FAIL")
    assert f"consumed n={len(PROBE) + 3} but handler held {len(PROBE)} bytes for client 1" in out
    assert "write of 4 bytes for unknown client id 999 (never connected)" in out
    assert "FAIL one-data: expected exactly one consumed, 0 <= n <= held" in out
    # its lines are well-formed: the fault is in what they say
    assert row(out, "valid-lines").endswith("| PASS")


def test_crash_is_reported_with_status_and_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, py(BROKEN, "crash"), "--scenario", "one-data")
    assert code == 1, out
    assert summary(out) == (1, 1)  # one-data fails; valid-lines passes
    assert "handler exited with status 3" in row(out, "one-data")
    assert "waiting for a consumed reply for client 1" in out
    assert "| broken_handler: crashing on purpose" in out  # the stderr tail


def test_missing_reply_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out = check(capsys, py(BROKEN, "silent"), "--timeout", "1", "--scenario", "one-data")
    assert time.monotonic() - started < 10
    assert code == 1, out
    assert "timed out after 1 s waiting for a consumed reply for client 1" in out


def test_handler_ignoring_stdin_eof_is_killed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("BROKEN_PIDFILE", str(pidfile))
    started = time.monotonic()
    code, out = check(
        capsys,
        py(BROKEN, "noexit"),
        "--timeout",
        "1",
        "--scenario",
        "stdin-eof",
        "--scenario",
        "one-data",
    )
    assert time.monotonic() - started < 15
    assert code == 1, out
    assert row(out, "stdin-eof").endswith("| FAIL")
    assert "timed out after 1 s waiting for the handler to exit after stdin EOF" in row(
        out, "stdin-eof"
    )
    assert row(out, "one-data").endswith("| PASS")  # not exiting fails only the exit checks
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)


def test_split_dependent_output_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN, "splitdep"), "--scenario", "split", "--scenario", "many-clients"
    )
    assert code == 1, out
    assert summary(out) == (1, 2)
    assert "byte-by-byte: output to client 1 differs from the unsplit run" in out
    assert "split at byte 1: output to client 1 differs from the unsplit run" in out
    assert "output differs from the same bytes sent alone" in out


def test_invalid_lines_fail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN, "badline"), "--scenario", "hello-silence", "--scenario", "one-data"
    )
    assert code == 1, out
    assert row(out, "hello-silence").endswith("| FAIL")
    assert row(out, "valid-lines").endswith("| FAIL")
    assert "[hello-silence] not JSON" in out
    assert (f"write data has code point U+20AC at index {len(PROBE)} (above U+00FF: not a byte)"
            in out)


def test_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["/nonexistent/handler --flag"])
    assert code == 2
    assert "cannot run '/nonexistent/handler'" in capsys.readouterr().err


def test_python_dash_m(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tgate.check", py(LINE_ECHO), "--scenario", "one-data"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc.stdout) == (2, 0)


@pytest.mark.parametrize(
    "name", ["echo.py", "echo.js", "chat.py", "chat.js", "echo.pl", "miniredis.js", "http.py"]
)
def test_every_example_handler_passes(capsys: pytest.CaptureFixture[str], name: str) -> None:
    from conftest import example

    rc, out = check(capsys, example(name))
    assert rc == 0, out
    passed, failed = summary(out)
    assert failed == 0 and passed >= 10


# -- framed modes (--framing) ------------------------------------------------

BROKEN_FRAMED = FIXTURES / "broken_framed_handler.py"
FRAMED_ROWS = [
    "hello-silence",
    "frames",
    "ids-live",
    "close",
    "disconnect-pending",
    "ticks",
    "many-clients",
    "binary",
    "eof",
    "unknown-ops",
    "stdin-eof",
    "valid-lines",
]


@pytest.mark.parametrize("name", ["echo.py", "echo.js", "chat.py", "chat.js"])
def test_examples_pass_in_line_framing(capsys: pytest.CaptureFixture[str], name: str) -> None:
    from conftest import example

    code, out = check(capsys, example(name), "--framing", "line")
    assert code == 0, out
    assert summary(out) == (len(FRAMED_ROWS), 0)
    for scenario in FRAMED_ROWS:
        assert row(out, scenario).endswith("| PASS"), row(out, scenario)
    assert "(handler driven as tgate --framing line drives it)" in out
    assert "no consumed" in row(out, "frames")
    assert "closed on eof in" in row(out, "eof")
    if name.startswith("echo"):
        assert "5 frames, no consumed; 5 writes back (33 bytes framed)" in row(out, "frames")


@pytest.mark.parametrize(
    ("name", "framing"),
    [
        ("echo.py", "netstring"),
        ("echo.js", "packet2"),
        ("echo.py", "packet4"),
        pytest.param("echo.pl", "crlf", marks=needs_perl),
    ],
)
def test_echoes_pass_in_other_framings(
    capsys: pytest.CaptureFixture[str], name: str, framing: str
) -> None:
    from conftest import example

    scenarios = ["frames", "binary", "eof", "many-clients"]
    code, out = check(
        capsys, example(name), "--framing", framing, *(f"--scenario={s}" for s in scenarios)
    )
    assert code == 0, out
    assert summary(out) == (len(scenarios) + 1, 0)
    assert f"bytes 0..255 in 5 frames ({framing}); still serving" in row(out, "binary") or (
        framing == "crlf" and "in 3 frames (crlf)" in row(out, "binary")
    )


def test_framed_handler_sending_consumed_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN_FRAMED, "consumed"), "--framing", "line",
        "--scenario", "frames", "--scenario", "eof",
    )
    assert code == 1, out
    assert summary(out) == (1, 2)  # valid-lines passes: the lines are well-formed
    assert row(out, "frames").endswith("| FAIL")
    assert (
        "consumed n=5 for client 1: consumed is invalid in --framing line "
        "(frames need no reply; tgate drops the line)"
    ) in out


def test_framed_handler_that_never_closes_after_eof_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    code, out = check(
        capsys, py(BROKEN_FRAMED, "noclose"), "--framing", "netstring", "--timeout", "1",
        "--scenario", "eof", "--scenario", "frames", "--scenario", "stdin-eof",
    )
    assert time.monotonic() - started < 15
    assert code == 1, out
    assert row(out, "eof").endswith("| FAIL")
    assert row(out, "frames").endswith("| PASS")  # only what needs the close fails
    assert row(out, "stdin-eof").endswith("| PASS")
    assert (
        "timed out after 1 s waiting for a close for client 1 after its eof (5 frames before "
        "it): in --framing netstring the handler must send close for a client that sent eof"
    ) in out


def test_framed_writes_after_disconnect_fail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN_FRAMED, "ghost"), "--framing", "line", "--scenario", "ids-live"
    )
    assert code == 1, out
    assert (
        "broadcast write of 6 bytes for client 2 after its disconnect (the handler had "
        "already closed client 1 in answer to an eof sent after that disconnect)"
    ) in out


def test_framed_write_that_cannot_be_framed_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN_FRAMED, "toolong"), "--framing", "packet2", "--scenario", "frames"
    )
    assert code == 1, out
    assert (
        "write of 70000 bytes cannot be framed in --framing packet2: 70000 bytes do not fit "
        "a 2-byte length prefix (tgate drops it)"
    ) in out


def test_raw_only_scenarios_are_refused_in_a_framed_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([py(LINE_ECHO), "--framing", "line", "--scenario", "split"])
    assert exc.value.code == 2
    assert "scenario 'split' is not run with --framing line" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([py(LINE_ECHO), "--scenario", "frames"])
    assert "scenario 'frames' is not run with --framing raw" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([py(LINE_ECHO), "--framing", "bogus"])
