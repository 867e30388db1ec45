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
import trio

from tgate.check import PROBE, Row, main, render
from tgate.check import check as run_check
from tgate.check.checker import Checker
from tgate.check.session import Session, validate

from conftest import missing, requires

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
LINE_ECHO = FIXTURES / "line_echo.py"
BROKEN = FIXTURES / "broken_handler.py"
CRASH_AT_START = FIXTURES / "crash_at_start.py"
FRAME_ONLY = FIXTURES / "frame_only_handler.py"
CLOSES_ON_DATA = FIXTURES / "closes_on_data.py"
ANSWERS_ONCE = FIXTURES / "answers_once.py"
ECHO_PL = ROOT / "examples" / "echo.pl"

needs_perl = requires("perl")
needs_node = requires("node")


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
    """The closing line's passed and failed counts."""
    found = re.search(r"^(\d+) passed, (\d+) failed(, \d+ skipped)?$", out, re.MULTILINE)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def skipped(out: str) -> int:
    found = re.search(r"^\d+ passed, \d+ failed(?:, (\d+) skipped)?$", out, re.MULTILINE)
    assert found, out
    return int(found.group(1) or 0)


PROBE_ROW = "speaks-protocol"
ALL_ROWS = [
    PROBE_ROW,
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
    # It crashes on its first data: the first check fails, nothing else is run.
    assert summary(out) == (0, 1) and skipped(out) == 2
    assert "handler exited with status 3 at start" in row(out, PROBE_ROW)
    assert row(out, "one-data").endswith("| SKIP")
    assert row(out, "valid-lines").endswith("| SKIP")
    assert "before answering its first data; it wrote nothing on stdout" in out
    assert out.count("| broken_handler: crashing on purpose") == 1  # the stderr tail


def test_missing_reply_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out = check(capsys, py(BROKEN, "silent"), "--timeout", "1", "--scenario", "one-data")
    assert time.monotonic() - started < 10
    assert code == 1, out
    assert "timed out after 1 s waiting for a consumed reply for client 1" in row(out, PROBE_ROW)
    assert "it wrote nothing on stdout" in out
    assert row(out, "one-data").endswith("| SKIP")


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
    assert len(pids) == 3  # speaks-protocol, one-data, stdin-eof
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)


def test_split_dependent_output_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN, "splitdep"), "--scenario", "split", "--scenario", "many-clients"
    )
    assert code == 1, out
    assert summary(out) == (2, 2)  # speaks-protocol and valid-lines pass
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
    assert summary(proc.stdout) == (3, 0)  # speaks-protocol, one-data, valid-lines


@pytest.mark.parametrize(
    "name",
    [
        "echo.py",
        pytest.param("echo.js", marks=needs_node),
        "chat.py",
        pytest.param("chat.js", marks=needs_node),
        pytest.param("echo.pl", marks=needs_perl),
        pytest.param("miniredis.js", marks=needs_node),
        "http.py",
    ],
)
def test_every_example_handler_passes(capsys: pytest.CaptureFixture[str], name: str) -> None:
    from conftest import example

    rc, out = check(capsys, example(name))
    assert rc == 0, out
    passed, failed = summary(out)
    assert failed == 0 and passed >= 10
    if name.startswith("chat"):
        # Channels: the checker applies subscribe and publish as tgate does, so
        # the bystander gets the others' lines.
        assert "writes across clients" in row(out, "many-clients"), out


# -- framed modes (--framing) ------------------------------------------------

BROKEN_FRAMED = FIXTURES / "broken_framed_handler.py"
FRAMED_ROWS = [
    PROBE_ROW,
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


@pytest.mark.parametrize(
    "name",
    ["echo.py", pytest.param("echo.js", marks=needs_node), "chat.py",
     pytest.param("chat.js", marks=needs_node)],
)
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
    else:
        assert "writes across clients" in row(out, "many-clients"), out


@pytest.mark.parametrize(
    ("name", "framing"),
    [
        ("echo.py", "netstring"),
        pytest.param("echo.js", "packet2", marks=needs_node),
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
    assert summary(out) == (len(scenarios) + 2, 0)  # with speaks-protocol and valid-lines
    assert f"bytes 0..255 in 5 frames ({framing}); still serving" in row(out, "binary") or (
        framing == "crlf" and "in 3 frames (crlf)" in row(out, "binary")
    )


def test_framed_handler_sending_consumed_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        capsys, py(BROKEN_FRAMED, "consumed"), "--framing", "line",
        "--scenario", "frames", "--scenario", "eof",
    )
    assert code == 1, out
    assert summary(out) == (2, 2)  # valid-lines passes: the lines are well-formed
    assert row(out, PROBE_ROW).endswith("| PASS")  # a wrong answer is still an answer
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


# -- failing fast: one verdict for a program that is not a handler --------------

FAST = 10  # seconds a hopeless handler may take, whole check included


def results(rows: list[Row]) -> list[str]:
    return [r.result for r in rows]


def assert_one_verdict(rows: list[Row], *seen: str) -> str:
    """The first check failed, saying `seen`; every other row was not run."""
    out = render(rows)
    assert results(rows)[0] == "FAIL", out
    assert set(results(rows)[1:]) == {"SKIP"}, out
    assert rows[0].name == PROBE_ROW
    for text in seen:
        assert text in rows[0].verdict.seen, out
    assert len(rows[0].verdict.problems) == 1, out
    assert out.count("\nFAIL ") == 1, out
    assert summary(out) == (0, 1) and skipped(out) == len(rows) - 1
    return out


@requires("cat")
async def test_cat_fails_fast_with_one_verdict() -> None:
    started = trio.current_time()
    with trio.fail_after(FAST):
        rows = await run_check(["cat"], 5.0, [])
    assert trio.current_time() - started < FAST
    assert [r.name for r in rows] == ALL_ROWS
    out = assert_one_verdict(rows, "echoed gateway messages back: it is not a tgate handler")
    assert '{"op":"hello"' in rows[0].verdict.seen  # what it echoed
    assert "valid-lines" in out  # not run either: the echoes are one verdict, not two


async def test_crash_at_start_gets_one_verdict_and_its_stderr_once() -> None:
    with trio.fail_after(FAST):
        rows = await run_check([sys.executable, str(CRASH_AT_START)], 5.0, [])
    out = assert_one_verdict(
        rows,
        "handler exited with status 1 at start, before answering its first data; "
        "it wrote nothing on stdout",
    )
    assert out.count("Traceback (most recent call last):") == 1, out
    assert out.count("RuntimeError: crash_at_start: no configuration found") == 1, out
    assert "    |   File " in out  # the traceback keeps its indentation


async def test_framed_check_of_a_crash_at_start_is_one_verdict() -> None:
    with trio.fail_after(FAST):
        rows = await run_check([sys.executable, str(CRASH_AT_START)], 5.0, [], "line")
    assert [r.name for r in rows] == FRAMED_ROWS
    assert_one_verdict(rows, "handler exited with status 1 at start, before closing a client")


async def test_frame_only_python_handler_fails_the_raw_check() -> None:
    """The adapter refuses to start in raw mode (or, before it did, closed every
    client on its data): the raw check fails at its first data either way."""
    with trio.fail_after(FAST):
        rows = await run_check([sys.executable, str(FRAME_ONLY)], 5.0, [])
    out = assert_one_verdict(rows)
    seen = rows[0].verdict.seen
    assert "does not serve raw mode" in seen or "exited with status" in seen, out
    assert "process_client_data" in out  # the adapter's own explanation, on stderr


async def test_frame_only_python_handler_passes_in_line_framing() -> None:
    with trio.fail_after(30):
        rows = await run_check([sys.executable, str(FRAME_ONLY)], 5.0, ["frames"], "line")
    assert results(rows) == ["PASS", "PASS", "PASS"], render(rows, "line")


async def test_closing_every_client_on_its_data_fails_the_first_check() -> None:
    with trio.fail_after(FAST):
        rows = await run_check([sys.executable, str(CLOSES_ON_DATA)], 5.0, [])
    out = assert_one_verdict(
        rows,
        "closed client 1 in answer to its first data",
        "consuming and writing nothing: the handler does not serve raw mode",
    )
    assert out.count("NotImplementedError: Shout.process_client_data is not implemented") == 1


async def test_a_handler_hanging_after_its_first_answer_cannot_take_minutes() -> None:
    """The split scenario has 40 runs: it stops at the first that times out.
    Several failures with the same stderr show it once."""
    started = trio.current_time()
    with trio.fail_after(20):
        rows = await run_check([sys.executable, str(ANSWERS_ONCE)], 1.0, ["split", "ids-live"])
    assert trio.current_time() - started < 15
    out = render(rows)
    assert results(rows) == ["PASS", "FAIL", "FAIL", "PASS"], out
    split = rows[1].verdict.problems
    assert split[0].startswith(
        "byte-by-byte: timed out after 1 s waiting for a consumed reply for client 1 "
        "(data #2 of 1 bytes; "
    ), out
    assert split[-1] == "38 more run(s) of this scenario not started after byte-by-byte timed out"
    assert out.count("answers_once: starting") == 1, out
    assert "handler stderr: the same as for split above" in out


def _console_script() -> str:
    """The tgate command installed next to this Python (the venv's)."""
    found = shutil.which("tgate", path=str(Path(sys.executable).parent)) or shutil.which(
        "tgate"
    )
    if found is None:
        missing("the tgate console script (pip install -e .)")
    return found


def test_console_script_fails_a_crash_at_start_fast() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [_console_script(), "check-handler", py(CRASH_AT_START)],
        capture_output=True,
        text=True,
        timeout=FAST,
    )
    assert time.monotonic() - started < FAST
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert row(out, PROBE_ROW).endswith("| FAIL")
    assert summary(out) == (0, 1) and skipped(out) == len(ALL_ROWS) - 1
    assert out.count("RuntimeError: crash_at_start: no configuration found") == 1, out


@requires("cat")
def test_console_script_fails_cat_fast() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [_console_script(), "check-handler", "cat"], capture_output=True, text=True, timeout=FAST
    )
    assert time.monotonic() - started < FAST
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "echoed gateway messages back" in row(proc.stdout, PROBE_ROW)
    assert summary(proc.stdout) == (0, 1)


def test_console_script_passes_a_good_handler() -> None:
    proc = subprocess.run(
        [_console_script(), "check-handler", "--scenario", "one-data", py(LINE_ECHO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc.stdout) == (3, 0)
    assert "answered its first data in" in row(proc.stdout, PROBE_ROW)


def test_verbose_shows_whole_cells() -> None:
    whole = (
        "handler exited with status 1 at start, before answering its first data; "
        "it wrote nothing on stdout"
    )

    def run(*flags: str) -> str:
        proc = subprocess.run(
            [_console_script(), "check-handler", *flags, py(CRASH_AT_START)],
            capture_output=True,
            text=True,
            timeout=FAST,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        return proc.stdout

    compact, verbose = run(), run("--verbose")
    assert whole not in row(compact, PROBE_ROW)
    assert row(compact, PROBE_ROW).split(" | ")[2].rstrip().endswith("...")
    assert whole in row(verbose, PROBE_ROW)
    assert whole in run("-v")
    assert f"  - {whole}" in compact  # the failure's details are whole either way


# -- workers and channels ----------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "problem"),
    [
        ({"op": "subscribe", "id": 1, "channel": "chat"}, None),
        ({"op": "unsubscribe", "id": 1, "channel": "é" * 256}, None),
        ({"op": "publish", "channel": "chat", "data": "hi\u00ff"}, None),
        ({"op": "publish", "channel": "c", "data": "", "exclude": 3, "raw": False}, None),
        ({"op": "subscribe", "channel": "chat"}, "subscribe id is missing or not an integer"),
        ({"op": "subscribe", "id": "1", "channel": "c"}, "subscribe id is missing or not an int"),
        ({"op": "unsubscribe", "id": True, "channel": "c"}, "unsubscribe id is missing"),
        ({"op": "subscribe", "id": 1}, "subscribe channel is missing or not a string: None"),
        ({"op": "subscribe", "id": 1, "channel": ""}, "subscribe channel is empty"),
        ({"op": "subscribe", "id": 1, "channel": "x" * 257},
         "subscribe channel has 257 characters (at most 256)"),
        ({"op": "publish", "channel": "x" * 300, "data": ""},
         "publish channel has 300 characters (at most 256)"),
        ({"op": "unsubscribe", "id": 1, "channel": 5}, "unsubscribe channel is missing or not a"),
        ({"op": "publish", "data": "x"}, "publish channel is missing or not a string"),
        ({"op": "publish", "channel": "", "data": "x"}, "publish channel is empty"),
        ({"op": "publish", "channel": "c"}, "publish data is missing or not a string"),
        ({"op": "publish", "channel": "c", "data": "\u20ac"}, "publish data has code point U+20AC"),
        ({"op": "publish", "channel": "c", "data": "x", "exclude": "2"},
         "publish exclude is not an integer"),
        ({"op": "publish", "channel": "c", "data": "x", "exclude": None}, None),  # as tgate
        ({"op": "publish", "channel": "c", "data": "x", "exclude": True},
         "publish exclude is not an integer or null: True"),
        ({"op": "publish", "channel": "c", "data": "x", "exclude": 1.0},
         "publish exclude is not an integer or null"),
        ({"op": "publish", "channel": "c", "data": "x", "raw": 1}, "publish raw is not true or"),
        ({"op": "join", "id": 1}, "a handler may send consumed, write, close, subscribe, "
                                  "unsubscribe, publish"),
    ],
)
def test_channel_ops_are_validated(msg: dict[str, object], problem: str | None) -> None:
    found = validate(msg)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


CHANNEL_HANDLER = """
import json, sys
mode = sys.argv[1]
held = {}
def send(msg):
    sys.stdout.write(json.dumps(msg) + "\\n")
    sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m["op"] == "hello" and (m.get("worker"), m.get("workers")) != (0, 1):
        sys.exit(f"hello without worker 0 of 1: {m}")
    if m["op"] == "connect" and mode == "good":
        send({"op": "subscribe", "id": m["id"], "channel": "room"})
    if m["op"] != "data":
        continue
    cid = m["id"]
    buf = held.get(cid, "") + m["data"]
    end = buf.rfind("\\n") + 1
    held[cid] = buf[end:]
    out = []
    if mode == "good" and end:
        out.append({"op": "publish", "channel": "room", "data": buf[:end], "exclude": cid})
    elif mode == "badsub":
        out.append({"op": "subscribe", "id": cid, "channel": ""})
    elif mode == "ghostsub":
        out.append({"op": "subscribe", "id": 999, "channel": "room"})
    send(out + [{"op": "consumed", "id": cid, "n": end}])
"""


@pytest.fixture
def channel_handler(tmp_path: Path) -> Path:
    script = tmp_path / "channel_handler.py"
    script.write_text(CHANNEL_HANDLER)
    return script


def test_a_malformed_subscribe_is_reported(
    capsys: pytest.CaptureFixture[str], channel_handler: Path
) -> None:
    code, out = check(capsys, py(channel_handler, "badsub"), "--scenario", "one-data")
    assert code == 1, out
    assert row(out, "valid-lines").endswith("| FAIL"), out
    assert "[one-data] subscribe channel is empty (in an array): " in out, out
    assert '{"op": "subscribe", "id": 1, "channel": ""}' in out, out


def test_a_subscribe_for_an_unknown_client_is_reported(
    capsys: pytest.CaptureFixture[str], channel_handler: Path
) -> None:
    code, out = check(capsys, py(channel_handler, "ghostsub"), "--scenario", "ids-live")
    assert code == 1, out
    assert row(out, "ids-live").endswith("| FAIL"), out
    assert "subscribe to channel 'room' for unknown client id 999 (never connected)" in out, out


def test_publishing_handler_passes_and_is_seen_writing_across_clients(
    capsys: pytest.CaptureFixture[str], channel_handler: Path
) -> None:
    """It also exits if hello lacks worker 0 of 1: the checker plays worker 0 of a pool of 1."""
    code, out = check(
        capsys, py(channel_handler, "good"), "--scenario", "many-clients", "--scenario", "ids-live"
    )
    assert code == 0, out
    assert "writes across clients" in row(out, "many-clients"), out
    assert "client writes over" in row(out, "ids-live"), out


async def test_session_applies_channels_as_tgate_does() -> None:
    """Subscribers get a publish (framed as a write would be) but the excluded
    one (``"exclude": null`` excludes nobody); a client leaves its channels at
    its disconnect."""
    async def body(s: Session) -> None:
        s.hello()
        for cid in (1, 2, 3):
            s.connect(cid)
        s.handle_line(b'[{"op":"subscribe","id":1,"channel":"c"},'
                      b'{"op":"subscribe","id":2,"channel":"c"},'
                      b'{"op":"subscribe","id":2,"channel":"c"},'
                      b'{"op":"publish","channel":"c","data":"a","exclude":2},'
                      b'{"op":"publish","channel":"nobody","data":"lost"},'
                      b'{"op":"publish","channel":"c","data":"b","exclude":null}]')
        s.disconnect(1, "reset")
        s.handle_line(b'{"op":"publish","channel":"c","data":"c","raw":true}')
        s.handle_line(b'{"op":"unsubscribe","id":2,"channel":"c"}')
        s.handle_line(b'{"op":"publish","channel":"c","data":"d"}')
        s.handle_line(b'{"op":"subscribe","id":3,"channel":"' + b"x" * 257 + b'"}')  # invalid
        s.handle_line(b'{"op":"subscribe","id":1,"channel":"c"}')  # gone: ignored

    ck = Checker([sys.executable, str(LINE_ECHO)], 5.0, "line")
    ck.begin("channels")
    run = await ck.run("channels", body)
    assert run.out(1) == b"a\nb\n"
    assert run.out(2) == b"b\nc"
    assert run.out(3) == b""
    assert run.session is not None
    assert run.session.channels == {}
    assert run.session.violations == []
    assert [e.split(":")[0] for e in run.session.line_errors] == [
        "[channels] subscribe channel has 257 characters (at most 256)"
    ]
