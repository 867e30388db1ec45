"""What every part of the checker shares: the probe bytes, limits, `Fail`, text helpers."""

from __future__ import annotations

import signal

# A probe stream: text lines, then bytes that need JSON escapes (NUL, TAB, '"',
# '\\'), DEL, the UTF-8-encoded latin-1 range 0x80..0xFF, CRLF, and an
# unterminated tail that a line-based handler leaves unconsumed.
PROBE = b"probe one\nprobe two\n" + b'\x00\x01\t"\\/\x7f\x80\xa0\xc3\xa9\xfe\xff\r\n' + b"tail"
BINARY = bytes(range(256)) + b"\n"
# Framed modes: whole frames, valid in every mode (none holds a LF, so they are
# lines too): text, an empty frame, bytes that need JSON escapes and the
# latin-1 range, and a trailing CR (a line "tail\r\r\n" is the frame "tail\r").
FRAMES = [b"hello", b"world", b"", b'\x00\x01\t"\\/\x7f\x80\xa0\xc3\xa9\xfe\xff', b"tail\r"]
MANY_CLIENTS = 20
GRACE = 0.5  # seconds between stdin EOF, SIGTERM and SIGKILL when cleaning up
# After a scenario's script, the checker closes stdin and reads the handler's output
# to its end (so late writes count), waiting this long for the exit; not exiting only
# fails the scenarios about exiting.
DRAIN_LIMIT = 0.5
MAX_LINE = 16 * 1024 * 1024
MAX_CHANNEL_NAME = 256  # characters; tgate drops a subscribe to a longer name
STDERR_KEEP = 64 * 1024  # bytes of a run's stderr kept (its end)
STDERR_LINES = 200  # lines of a run's stderr handed to the report (which shows fewer)
MAX_LINE_ERRORS = 200  # invalid lines remembered per run; the rest are only counted
FLOOD_LINES = 10_000  # invalid lines after which a run's output is no longer parsed
# One handler process at a time, as under tgate: a handler may assume it is alone
# (a lock file, a port of its own), so runs are never concurrent.
PARALLEL_RUNS = 1
REASONS = (
    "eof",
    "reset",
    "overflow",
    "closed",
    "shutdown",
    "error",
    "quarantined",
    "slow",
    "idle",
    "some-future-reason",
)
# What tgate sends: a handler writing these back is echoing its stdin.
GATEWAY_OPS = frozenset({"hello", "connect", "data", "tick", "disconnect", "frame", "eof"})

Msg = dict[str, object]


class Fail(Exception):
    """The scenario cannot go on; the message says concretely what was wrong."""


def short(raw: bytes | str, limit: int = 120) -> str:
    """A line or value, cut to `limit` characters for a message."""
    if isinstance(raw, bytes):
        text = raw[: limit * 4].decode("utf-8", "backslashreplace")
    else:
        text = raw[: limit * 4]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def as_int(value: float | int | None) -> int | None:
    return None if value is None else int(value)


def describe_status(status: int | None) -> str:
    if status is None:
        return "is still running"
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"was killed by {name}"


def diff(expected: bytes, got: bytes) -> str:
    i = 0
    while i < min(len(expected), len(got)) and expected[i] == got[i]:
        i += 1
    return (
        f"{len(got)} bytes instead of {len(expected)}, first difference at byte {i}: "
        f"{got[i : i + 16]!r} instead of {expected[i : i + 16]!r}"
    )
