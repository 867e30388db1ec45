"""``tgate check-handler "CMD"``: drive a handler through protocol v1 as a fake gateway.

The checker plays tgate's side of docs/protocol.md from a script: it starts the
handler command (split like a shell would, no shell), sends ``hello``,
``connect``, ``data``, ``tick`` and ``disconnect`` lines, and checks every line
the handler writes back. The handler is a black box (an echo, a chat, a line
server...), so the checks are the protocol's own rules plus one invariant that
holds for any handler fit to sit behind TCP, whose segmentation is arbitrary:

    the same bytes from a client produce the same bytes to that client,
    however they were split into ``data`` messages.

Every scenario runs a fresh handler process (so one failure cannot poison the
next) under its own timeout; a scenario that needs several runs gives each run
that timeout. Whatever happens, the handler's process group is closed like
tgate does it (stdin EOF, grace, SIGTERM, grace, SIGKILL) and reaped.

What the checker has to assume, being unable to read the handler's mind:

- A handler reads its stdin in order. "Nothing for a client after its
  disconnect" is judged from the moment the handler has answered a ``data``
  sent after that ``disconnect``; before that, a reply may be on its way. In
  framed modes, where nothing is answered, the proof is the handler's
  ``close`` of a client whose ``eof`` was sent after that ``disconnect``
  (taken as the answer to that ``eof``).
- A handler's output depends only on the bytes its clients send, not on time,
  chance or the client ids. A handler that writes to other clients than the
  sender (a chat) is recognised with a bystander client, and then the
  per-client streams of many interleaved clients are not compared.

With ``--framing line|crlf|packet2|packet4|netstring`` the checker plays a
gateway in that framed mode: ``hello`` names the framing, clients send whole
``frame`` messages (no reply is expected, so there is nothing to split at the
protocol level) and ``eof`` when they half-close, and the checks become: no
``consumed`` ever; writes (framed as tgate would frame them, or ``raw``) only to
known, live ids; a client that sent ``eof`` is closed by the handler within the
timeout; many interleaved clients each get what they get alone. The end of a
client's output is recognised by that close, so a handler that never closes
after ``eof`` fails every scenario that needs it, each saying so.

Usage: ``tgate check-handler "python3 my_handler.py" [--timeout S] [--framing MODE]``,
or ``python -m tgate.check "python3 my_handler.py"``.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
import trio

from tgate import __version__
from tgate.framing import FRAMINGS, FrameError, Framer, framer_class

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
STDERR_KEEP = 64 * 1024
STDERR_LINES = 10
# One handler process at a time, as under tgate: a handler may assume it is alone
# (a lock file, a port of its own), so runs are never concurrent.
PARALLEL_RUNS = 1
MAX_PROBLEMS = 8  # problems listed per failing scenario
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

Msg = dict[str, object]


class Fail(Exception):
    """The scenario cannot go on; the message says concretely what was wrong."""


def _short(raw: bytes | str, limit: int = 120) -> str:
    """A line or value, cut to `limit` characters for a message."""
    if isinstance(raw, bytes):
        text = raw[: limit * 4].decode("utf-8", "backslashreplace")
    else:
        text = raw[: limit * 4]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def _diff(expected: bytes, got: bytes) -> str:
    i = 0
    while i < min(len(expected), len(got)) and expected[i] == got[i]:
        i += 1
    return (
        f"{len(got)} bytes instead of {len(expected)}, first difference at byte {i}: "
        f"{got[i : i + 16]!r} instead of {expected[i : i + 16]!r}"
    )


@dataclass
class Client:
    """What the fake gateway knows about one client."""

    cid: int
    sent: int = 0  # bytes sent in data messages
    consumed: int = 0  # bytes dropped by valid consumed replies
    awaiting: int | None = None  # sequence number of the data awaiting its consumed
    awaiting_len: int = 0
    ns: list[int] = field(default_factory=list)  # every consumed n received
    data_sent: int = 0
    eof_sent: bool = False
    closed_by_handler: bool = False
    disconnect_seq: int | None = None  # sequence number of our disconnect line
    fenced: bool = False  # the handler has provably seen the disconnect
    fence_proof: str = ""  # how we know it has (for the message)
    frames_sent: int = 0  # framed modes: frame messages sent
    eof_seq: int | None = None  # framed modes: sequence number of our eof line
    writes: int = 0  # write ops addressed to this client (kept or not)
    out: bytearray = field(default_factory=bytearray)  # bytes tgate would send the client

    @property
    def held(self) -> int:
        return self.sent - self.consumed

    @property
    def gone(self) -> bool:
        return self.disconnect_seq is not None


class Session:
    """One handler process, driven as tgate would drive it."""

    def __init__(self, proc: trio.Process, tag: str, framing: str = "raw") -> None:
        self.proc = proc
        self.tag = tag
        self.framing = framing
        self.framer: type[Framer] | None = framer_class(framing)
        self.clients: dict[int, Client] = {}
        self.violations: list[str] = []  # protocol misbehaviour (bounds, ids, replies)
        self.line_errors: list[str] = []  # lines that are not valid protocol v1
        self.lines: list[bytes] = []  # the first lines received
        self.line_count = 0
        self.closes = 0
        self.seq = 0
        self.waiting_for = "nothing"
        self.stdout_eof = False
        self.early_exit = False  # stdout closed before we closed stdin
        self.stdin_error: str | None = None
        self.eof_requested = False
        self.stderr = bytearray()
        self._status: int | None = None
        self._reaped = False
        self._changed = trio.Event()
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](math.inf)

    # -- sending (never blocks: a writer task feeds the handler's stdin in order)

    def send(self, msg: Msg) -> int:
        if self.eof_requested:
            raise RuntimeError("checker bug: send after stdin EOF")
        self.seq += 1
        self._send_q.send_nowait(orjson.dumps(msg) + b"\n")
        return self.seq

    def hello(self, **extra: object) -> None:
        msg: Msg = {
            "op": "hello",
            "protocol": 1,
            "tgate": __version__,
            "framing": self.framing,
            "bufsize": 128,
            "max_bufsize": 65536,
            "update_time": 1.0,
        }
        msg.update(extra)
        self.send(msg)

    def connect(self, cid: int, **extra: object) -> None:
        self.clients[cid] = Client(cid)
        msg: Msg = {
            "op": "connect",
            "id": cid,
            "peer": ["127.0.0.1", 40000 + cid],
            "local": ["127.0.0.1", 7000],
        }
        msg.update(extra)
        self.send(msg)

    def data(self, cid: int, chunk: bytes, *, eof: bool = False, **extra: object) -> bool:
        """Send new bytes for a client; False if tgate would not (client gone or at EOF)."""
        if self.framer is not None:
            raise RuntimeError("checker bug: data in a framed mode")
        c = self.clients[cid]
        if c.gone or c.eof_sent:
            return False
        if c.awaiting is not None:
            raise RuntimeError(f"checker bug: two data awaiting a reply for client {cid}")
        msg: Msg = {"op": "data", "id": cid, "data": chunk.decode("latin-1")}
        if eof:
            msg["eof"] = True
            c.eof_sent = True
        msg.update(extra)
        c.sent += len(chunk)
        c.data_sent += 1
        c.awaiting_len = len(chunk)
        c.awaiting = self.send(msg)
        return True

    def frames(self, cid: int, payloads: Sequence[bytes], **extra: object) -> int:
        """Framed modes: send whole frames for a client (no reply is expected);
        returns how many tgate would send (none once the client is gone or at EOF)."""
        if self.framer is None:
            raise RuntimeError("checker bug: frames in raw mode")
        c = self.clients[cid]
        sent = 0
        for payload in payloads:
            if c.gone or c.eof_sent:
                break
            msg: Msg = {"op": "frame", "id": cid, "data": payload.decode("latin-1")}
            msg.update(extra)
            self.send(msg)
            c.frames_sent += 1
            sent += 1
        return sent

    def eof(self, cid: int, **extra: object) -> bool:
        """Framed modes: the client half-closed. The handler must close it."""
        c = self.clients[cid]
        if self.framer is None:
            raise RuntimeError("checker bug: eof in raw mode")
        if c.gone or c.eof_sent:
            return False
        c.eof_sent = True
        msg: Msg = {"op": "eof", "id": cid}
        msg.update(extra)
        c.eof_seq = self.send(msg)
        return True

    async def closed(self, *cids: int) -> None:
        """Framed modes: wait until the handler has closed these clients (after their eof)."""
        while True:
            waiting = [
                self.clients[cid]
                for cid in cids
                if not (self.clients[cid].closed_by_handler or self.clients[cid].gone)
            ]
            if not waiting:
                return
            c = waiting[0]
            more = f" (and {len(waiting) - 1} other clients)" if len(waiting) > 1 else ""
            await self.wait_change(
                f"a close for client {c.cid}{more} after its eof ({c.frames_sent} frames "
                f"before it): in --framing {self.framing} the handler must send close for a "
                "client that sent eof, once it has answered it"
            )

    def disconnect(self, cid: int, reason: str) -> None:
        c = self.clients[cid]
        if c.gone:
            return
        if self.eof_requested:
            # e.g. a close that arrived after we closed the handler's stdin:
            # the client is gone, but there is no one left to tell.
            c.disconnect_seq = self.seq + 1
            return
        c.disconnect_seq = self.send({"op": "disconnect", "id": cid, "reason": reason})

    def tick(self) -> None:
        self.send({"op": "tick"})

    def close_stdin(self) -> None:
        if not self.eof_requested:
            self.eof_requested = True
            self._send_q.close()

    # -- waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def exit_text(self) -> str:
        return describe_status(self.poll_status())

    def _check_alive(self) -> None:
        if self.stdout_eof and not self.eof_requested:
            raise Fail(
                f"handler {self.exit_text()} (its stdout closed) while the checker was "
                f"waiting for {self.waiting_for}"
            )
        if self.stdin_error is not None and not self.eof_requested:
            raise Fail(
                f"handler stopped reading its stdin ({self.stdin_error}; it "
                f"{self.exit_text()}) while the checker was waiting for {self.waiting_for}"
            )

    async def wait_change(self, what: str) -> None:
        self.waiting_for = what
        self._check_alive()
        await self._changed.wait()

    def _replied(self, cid: int) -> bool:
        c = self.clients[cid]
        return c.awaiting is None or c.closed_by_handler

    async def reply(self, *cids: int) -> None:
        """Wait for the consumed replies to the data awaiting for these clients."""
        while True:
            waiting = [self.clients[cid] for cid in cids if not self._replied(cid)]
            if not waiting:
                return
            c = waiting[0]
            await self.wait_change(
                f"a consumed reply for client {c.cid} (data #{c.data_sent} of "
                f"{c.awaiting_len} bytes; handler holds {c.held} bytes)"
            )

    async def drive(self, plan: dict[int, list[bytes]]) -> None:
        """Feed each client its chunks, one data awaiting a reply per client at most."""
        queues = {cid: list(chunks) for cid, chunks in plan.items()}
        while True:
            for cid, queue in queues.items():
                c = self.clients[cid]
                if queue and c.awaiting is None and not c.gone:
                    self.data(cid, queue.pop(0))
            busy = [cid for cid in queues if not self._replied(cid)]
            if not busy:
                return
            c = self.clients[busy[0]]
            more = f" (and {len(busy) - 1} other clients)" if len(busy) > 1 else ""
            await self.wait_change(
                f"a consumed reply for client {c.cid}{more} (data #{c.data_sent} of "
                f"{c.awaiting_len} bytes; handler holds {c.held} bytes)"
            )

    async def settle(self, quiet: float) -> None:
        """Return once the handler has written nothing for `quiet` seconds."""
        self.waiting_for = f"{quiet:g} s without output"
        while not self.stdout_eof:
            event = self._changed
            with trio.move_on_after(quiet) as scope:
                await event.wait()
            if scope.cancelled_caught:
                return

    async def finish(self, limit: float | None = None) -> int | None:
        """Close stdin, read the handler's output to its end, return its exit status.

        None if it has not exited within `limit` seconds (None: the scenario timeout).
        """
        self.close_stdin()
        self.waiting_for = "the handler to exit after stdin EOF"
        with trio.move_on_after(math.inf if limit is None else limit):
            while not self.stdout_eof and self.poll_status() is None:
                with trio.move_on_after(0.01):
                    await self._changed.wait()
            # The rest of its output may still be in the pipe (or a child of the
            # handler holds the pipe open: then what it wrote so far is all we get).
            with trio.move_on_after(0.5):
                while not self.stdout_eof:
                    await self._changed.wait()
            while (status := self.poll_status()) is None:
                await trio.sleep(0.005)
            return status
        return None

    # -- the process

    def poll_status(self) -> int | None:
        """Exit status (negative: signal) without reaping, so the pgid stays ours."""
        if self._status is not None:
            return self._status
        if self._reaped:
            return self.proc.returncode
        try:
            res = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            self._reaped = True
            return self.proc.poll()
        if res is None:
            return None
        self._status = res.si_status if res.si_code == os.CLD_EXITED else -res.si_status
        return self._status

    async def _wait_exit(self, limit: float) -> None:
        with trio.move_on_after(limit):
            while self.poll_status() is None:
                await trio.sleep(0.005)

    def _signal_group(self, sig: int) -> None:
        if self._reaped:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def cleanup(self) -> None:
        """Stop the handler like tgate: stdin EOF, grace, SIGTERM, grace, SIGKILL; reap."""
        already_waited = self.eof_requested
        self.close_stdin()
        if not already_waited:
            await self._wait_exit(GRACE)
        if self.poll_status() is None:
            self._signal_group(signal.SIGTERM)
            await self._wait_exit(GRACE)
        if self.poll_status() is None:
            self._signal_group(signal.SIGKILL)
            await self._wait_exit(5.0)
        # Whatever the handler left behind in its process group goes too. The
        # leader is at worst a zombie here, so its pid (the pgid) cannot be reused.
        self._signal_group(signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.aclose()
        with trio.move_on_after(5.0):
            await self.proc.wait()  # reaps
            self._reaped = True

    async def write_stdin(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            async with self._recv_q:
                async for item in self._recv_q:
                    await stdin.send_all(item)
            await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.stdin_error = f"writing to its stdin failed: {type(exc).__name__}"
            self._notify()

    async def read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        try:
            while chunk := await stream.receive_some(65536):
                self.stderr += chunk
                if len(self.stderr) > 2 * STDERR_KEEP:
                    del self.stderr[:-STDERR_KEEP]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def stderr_tail(self) -> list[str]:
        text = self.stderr.decode("utf-8", "backslashreplace")
        return text.splitlines()[-STDERR_LINES:]

    async def read_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        buf = bytearray()
        skipping = False  # inside an over-long line, until its newline
        try:
            while chunk := await stream.receive_some(65536):
                start = len(buf)
                buf += chunk
                begin = 0
                while (end := buf.find(b"\n", start)) >= 0:
                    if skipping:
                        skipping = False
                    else:
                        self._handle_line(bytes(buf[begin:end]))
                    begin = start = end + 1
                del buf[:begin]
                if len(buf) > MAX_LINE:
                    if not skipping:
                        self._line_error(f"line longer than 16 MiB: {_short(bytes(buf[:60]))}")
                    skipping = True
                    buf.clear()
                self._notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if buf and not skipping:
            self._line_error(f"last line has no terminating newline: {_short(bytes(buf))}")
        if not self.eof_requested:
            self.early_exit = True
            await self._wait_exit(0.5)  # so the message can give the exit status
        self.stdout_eof = True
        self._notify()

    # -- what the handler writes

    def _line_error(self, text: str) -> None:
        self.line_errors.append(f"[{self.tag}] {text}")

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _handle_line(self, raw: bytes) -> None:
        self.line_count += 1
        if len(self.lines) < 50:
            self.lines.append(raw)
        shown = _short(raw)
        if not raw.strip():
            self._line_error("empty line (each line must hold a JSON object or array)")
            return
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._line_error(f"not JSON ({exc}): {shown}")
            return
        if isinstance(value, dict):
            elements: list[object] = [value]
        elif isinstance(value, list):
            elements = value
        else:
            self._line_error(f"not a JSON object or array of objects: {shown}")
            return
        for element in elements:
            problem = self._validate(element)
            if problem is not None:
                where = " (in an array)" if isinstance(value, list) else ""
                self._line_error(f"{problem}{where}: {shown}")
            else:
                assert isinstance(element, dict)
                self._apply(element)

    @staticmethod
    def _validate(msg: object) -> str | None:
        if not isinstance(msg, dict):
            return f"array element is not an object ({type(msg).__name__})"
        op = msg.get("op")
        if op not in ("consumed", "write", "close"):
            if "op" not in msg:
                return "object without an op"
            return f"unknown op {op!r} (a handler may send consumed, write, close)"
        if op == "write":
            has_id, has_ids = "id" in msg, "ids" in msg
            if has_id and has_ids:
                return "write with both id and ids"
            if not has_id and not has_ids:
                return "write without id or ids"
            if has_id and not _is_int(msg["id"]):
                return f"write id is not an integer: {msg['id']!r}"
            if has_ids:
                ids = msg["ids"]
                if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
                    return f"write ids is not a list of integers: {ids!r}"
            data = msg.get("data")
            if not isinstance(data, str):
                return f"write data is missing or not a string: {_short(repr(data), 40)}"
            if "raw" in msg and not isinstance(msg["raw"], bool):
                return f"write raw is not true or false: {_short(repr(msg['raw']), 40)}"
            try:
                data.encode("latin-1")
            except UnicodeEncodeError as exc:
                bad = ord(data[exc.start])
                return (
                    f"write data has code point U+{bad:04X} at index {exc.start} "
                    "(above U+00FF: not a byte)"
                )
            return None
        if not _is_int(msg.get("id")):
            return f"{op} id is missing or not an integer: {msg.get('id')!r}"
        if op == "consumed":
            n = msg.get("n")
            if not _is_int(n):
                return f"consumed n is missing or not an integer: {n!r}"
        return None

    def _target(self, cid: int, what: str) -> Client | None:
        """The client a handler message addresses, or None (reported) if it may not."""
        c = self.clients.get(cid)
        if c is None:
            self._violation(f"{what} for unknown client id {cid} (never connected)")
            return None
        if c.fenced:
            self._violation(f"{what} for client {cid} after its disconnect ({c.fence_proof})")
            return None
        return c

    def _fence(self, seq: int, proof: str) -> None:
        """The handler has read every line up to `seq`: disconnects before it are known."""
        for other in self.clients.values():
            if other.disconnect_seq is not None and other.disconnect_seq < seq and not other.fenced:
                other.fenced = True
                other.fence_proof = proof

    def _apply(self, msg: dict[str, object]) -> None:
        op = msg["op"]
        if op == "consumed":
            cid, n = msg["id"], msg["n"]
            assert isinstance(cid, int) and isinstance(n, int)
            if self.framer is not None:
                # tgate drops it with a warning: in framed modes nothing is owed.
                self._violation(
                    f"consumed n={n} for client {cid}: consumed is invalid in --framing "
                    f"{self.framing} (frames need no reply; tgate drops the line)"
                )
                return
            c = self._target(cid, f"consumed n={n}")
            if c is None:
                return
            # Each impossible consumed is dropped by tgate, which disconnects the client
            # with reason "error"; the checker does the same.
            if c.awaiting is None:
                self._violation(
                    f"consumed n={n} for client {cid} but no data was awaiting a reply "
                    f"(it had {c.data_sent} data and {len(c.ns)} consumed replies already)"
                )
                self.disconnect(cid, "error")
                return
            answered, c.awaiting = c.awaiting, None
            c.ns.append(n)
            if n < 0:
                self._violation(f"consumed n={n} (negative) for client {cid}")
                self.disconnect(cid, "error")
            elif n > c.held:
                self._violation(f"consumed n={n} but handler held {c.held} bytes for client {cid}")
                self.disconnect(cid, "error")
            else:
                c.consumed += n
            self._fence(
                answered, "the handler had already answered data sent after that disconnect"
            )
        elif op == "write":
            data = msg["data"]
            assert isinstance(data, str)
            raw = data.encode("latin-1")
            if self.framer is not None and msg.get("raw") is not True:
                try:
                    raw = self.framer.encode(raw)
                except FrameError as exc:
                    self._violation(
                        f"write of {len(raw)} bytes cannot be framed in --framing "
                        f"{self.framing}: {exc} (tgate drops it)"
                    )
                    return
            raw_ids = msg["ids"] if "ids" in msg else [msg["id"]]
            assert isinstance(raw_ids, list)
            what = "broadcast write" if "ids" in msg else "write"
            for cid in raw_ids:
                assert isinstance(cid, int)
                c = self._target(cid, f"{what} of {len(raw)} bytes")
                if c is None:
                    continue
                c.writes += 1
                if not c.gone:  # tgate drops writes for clients already closed
                    c.out += raw
        elif op == "close":
            cid = msg["id"]
            assert isinstance(cid, int)
            c = self._target(cid, "close")
            if c is None or c.gone:
                return
            self.closes += 1
            c.closed_by_handler = True
            if c.eof_seq is not None:
                # Closing after the eof proves the handler read up to it (a
                # handler reads its stdin in order).
                self._fence(
                    c.eof_seq,
                    f"the handler had already closed client {cid} in answer to an eof "
                    "sent after that disconnect",
                )
            # tgate flushes the client's writes, closes it, then tells the handler
            self.disconnect(cid, "closed")


@dataclass
class Run:
    """The outcome of one handler process."""

    tag: str
    session: Session | None
    error: str | None

    @property
    def problems(self) -> list[str]:
        found = [] if self.error is None else [self.error]
        if self.session is not None:
            found += self.session.violations
        return found

    @property
    def line_errors(self) -> list[str]:
        return [] if self.session is None else self.session.line_errors

    def out(self, cid: int) -> bytes:
        if self.session is None or cid not in self.session.clients:
            return b""
        return bytes(self.session.clients[cid].out)

    def stderr_tail(self) -> list[str]:
        return [] if self.session is None else self.session.stderr_tail()


Body = Callable[[Session], Awaitable[None]]


@dataclass
class Verdict:
    seen: str
    problems: list[str]
    stderr: list[str]


class Checker:
    def __init__(self, argv: list[str], timeout: float, framing: str = "raw") -> None:
        self.argv = argv
        self.timeout = timeout
        self.framing = framing
        self.runs: list[Run] = []
        self.scenario = ""  # the scenario being run, to label invalid lines
        self.limiter = trio.CapacityLimiter(PARALLEL_RUNS)
        self.quiet = min(0.3, timeout / 10)

    async def run(self, tag: str, body: Body) -> Run:
        """Run `body` against a fresh handler process, then stop and reap it."""
        async with self.limiter:
            result = await self._run(tag, body)
        self.runs.append(result)
        return result

    async def _run(self, tag: str, body: Body) -> Run:
        try:
            proc = await trio.lowlevel.open_process(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return Run(tag, None, f"cannot start handler {shlex.join(self.argv)}: {exc}")
        label = tag if tag == self.scenario else f"{self.scenario}: {tag}"
        session = Session(proc, label, self.framing)
        error: str | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.write_stdin)
            nursery.start_soon(session.read_stdout)
            nursery.start_soon(session.read_stderr)
            try:
                with trio.move_on_after(self.timeout) as scope:
                    await body(session)
                if scope.cancelled_caught:
                    error = f"timed out after {self.timeout:g} s waiting for {session.waiting_for}"
                else:
                    await session.finish(DRAIN_LIMIT)
            except Fail as exc:
                error = str(exc)
            finally:
                with trio.CancelScope(shield=True):
                    await session.cleanup()
                nursery.cancel_scope.cancel()
        if error is None and session.early_exit:
            error = f"handler {describe_status(session.poll_status())} before its stdin was closed"
        return Run(tag, session, error)

    def verdict(self, seen: str, runs: Sequence[Run], extra: Sequence[str] = ()) -> Verdict:
        problems: list[str] = []
        stderr: list[str] = []
        for r in runs:
            prefix = f"{r.tag}: " if len(runs) > 1 else ""
            problems += [prefix + p for p in r.problems]
            if r.problems and not stderr:
                stderr = r.stderr_tail()
        problems += extra
        if extra and not stderr and runs:
            stderr = runs[-1].stderr_tail()
        return Verdict(seen, problems, stderr)

    async def solo_reference(self, chunks: list[bytes] | None = None, tag: str = "") -> Run:
        """One client fed PROBE (default: in one data), then stdin EOF."""
        plan = [PROBE] if chunks is None else chunks

        async def body(s: Session) -> None:
            s.hello()
            s.connect(1)
            await s.drive({1: plan})

        return await self.run(tag or "unsplit run", body)

    async def framed_reference(self, tag: str = "client alone") -> Run:
        """Framed modes: one client sends FRAMES and eof; the handler closes it."""

        async def body(s: Session) -> None:
            s.hello()
            s.connect(1)
            s.frames(1, FRAMES)
            s.eof(1)
            await s.closed(1)

        return await self.run(tag, body)


# -- scenarios -------------------------------------------------------------


async def sc_hello(ck: Checker) -> Verdict:
    quiet = min(1.0, ck.timeout / 4)
    info: dict[str, float | int | None] = {}

    async def body(s: Session) -> None:
        s.hello()
        await s.settle(quiet)
        if s.line_count:
            raise Fail(
                f"wrote {s.line_count} line(s) after hello with no client: {_short(s.lines[0])}"
            )
        if s.stdout_eof:
            raise Fail(f"handler {s.exit_text()} after hello, before stdin EOF")
        t0 = trio.current_time()
        info["status"] = await s.finish()
        info["ms"] = (trio.current_time() - t0) * 1000

    run = await ck.run("hello-silence", body)
    status = info.get("status")
    extra = []
    if "status" in info and status != 0:
        extra.append(f"after stdin EOF the handler {describe_status(_as_int(status))}")
    seen = f"silent {quiet:g} s; {describe_status(_as_int(status))}"
    if "ms" in info:
        seen += f" {info['ms']:.0f} ms after stdin EOF"
    return ck.verdict(seen, [run], extra)


def _as_int(value: float | int | None) -> int | None:
    return None if value is None else int(value)


async def sc_one_data(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [PROBE]})
        await s.settle(ck.quiet)  # a second consumed would show up here

    run = await ck.run("one-data", body)
    extra = []
    seen = "no reply"
    if run.session is not None:
        c = run.session.clients[1]
        seen = f"{len(c.ns)} consumed: n={c.ns} for {len(PROBE)} bytes held"
        if run.error is None and len(c.ns) != 1:
            extra.append(f"{len(c.ns)} consumed replies to one data for client 1 (expected 1)")
    return ck.verdict(seen, [run], extra)


async def sc_split(ck: Checker) -> Verdict:
    variants: list[tuple[str, list[bytes]]] = [
        ("byte-by-byte", [PROBE[i : i + 1] for i in range(len(PROBE))])
    ]
    variants += [(f"split at byte {k}", [PROBE[:k], PROBE[k:]]) for k in range(1, len(PROBE))]
    reference = await ck.solo_reference()
    results: dict[str, Run] = {}

    async def one(label: str, chunks: list[bytes]) -> None:
        results[label] = await ck.solo_reference(chunks, label)

    async with trio.open_nursery() as nursery:
        for label, chunks in variants:
            nursery.start_soon(one, label, chunks)
    runs = [reference] + [results[label] for label, _ in variants]
    extra: list[str] = []
    expected = reference.out(1)
    mismatches = [
        f"{label}: output to client 1 differs from the unsplit run: "
        f"{_diff(expected, results[label].out(1))}"
        for label, _ in variants
        if not results[label].problems and results[label].out(1) != expected
    ]
    if reference.problems:
        mismatches = []  # no sound reference to compare with
    extra += mismatches[:3]
    if len(mismatches) > 3:
        extra.append(f"... and {len(mismatches) - 3} more splits whose output differs")
    seen = (
        f"{len(variants) + 1} runs (unsplit, bytewise, each 2-piece split): "
        f"same {len(expected)}-byte output"
    )
    if mismatches:
        seen = f"{len(mismatches)} of {len(variants)} splits changed the output"
    verdict = ck.verdict(seen, runs, extra)
    if mismatches and not verdict.stderr:
        bad = next(results[label] for label, _ in variants if results[label].out(1) != expected)
        verdict.stderr = bad.stderr_tail()
    return verdict


async def sc_ids_live(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        for cid in (1, 2, 3):
            s.connect(cid)
        await s.drive({1: [PROBE], 2: [PROBE], 3: [PROBE]})
        s.disconnect(2, "reset")
        await s.drive({1: [b"more\n"], 3: [b"more\n"]})  # their replies fence client 2
        s.tick()
        await s.drive({1: [b"again\n"], 3: [b"again\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("ids-live", body)
    seen = "no run"
    if run.session is not None:
        writes = sum(c.writes for c in run.session.clients.values())
        seen = f"{writes} client writes over {run.session.line_count} lines, all to live ids"
        if run.session.violations:
            seen = "writes to ids that are unknown or gone"
    return ck.verdict(seen, [run])


async def sc_close(ck: Checker) -> Verdict:
    last = len(REASONS) + 1

    async def body(s: Session) -> None:
        s.hello()
        for cid, reason in enumerate(REASONS, 1):
            s.connect(cid)
            await s.drive({cid: [PROBE]})
            s.disconnect(cid, reason)
        s.connect(last)
        await s.drive({last: [PROBE]})  # fences every client above
        await s.drive({last: [b"bye\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("close", body)
    seen = f"survived all {len(REASONS)} disconnect reasons; nothing for closed clients"
    if run.session is not None and run.session.closes:
        seen += f"; its {run.session.closes} close(s) answered with disconnect 'closed'"
    return ck.verdict(seen, [run])


async def sc_disconnect_pending(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.drive({1: [PROBE]})
        s.data(1, b"more\x00data")  # in flight when the client resets
        s.disconnect(1, "reset")
        await s.drive({2: [PROBE]})  # sent after the disconnect: its reply fences client 1
        s.tick()
        await s.drive({2: [b"again\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("disconnect-pending", body)
    seen = "nothing for client 1 after its disconnect"
    if run.session is not None:
        c = run.session.clients[1]
        seen += f" (it held {c.held} unconsumed bytes)"
    return ck.verdict(seen, [run])


async def sc_ticks(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.tick()
        s.connect(1)
        s.tick()
        s.data(1, PROBE[:7])
        s.tick()
        s.tick()
        await s.reply(1)
        s.tick()
        s.data(1, PROBE[7:])
        s.tick()
        await s.reply(1)
        for _ in range(5):
            s.tick()
        s.connect(2)
        await s.drive({2: [PROBE]})
        await s.settle(ck.quiet)

    run = await ck.run("ticks", body)
    return ck.verdict("11 ticks, no reply needed; still serving afterwards", [run])


async def sc_many(ck: Checker) -> Verdict:
    n = MANY_CLIENTS
    reference = await ck.solo_reference(tag="client alone")

    async def bystander(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.settle(ck.quiet)  # greetings for client 2, if any, come now
        info["before"] = s.clients[2].writes
        await s.drive({1: [PROBE]})

    info: dict[str, int] = {}
    probe = await ck.run("bystander", bystander)
    cross = probe.session is not None and probe.session.clients[2].writes > info.get("before", 0)

    def chunks_for(cid: int) -> list[bytes]:
        size = cid % 7 + 1
        return [PROBE[i : i + size] for i in range(0, len(PROBE), size)]

    async def many(s: Session) -> None:
        s.hello()
        for cid in range(1, n + 1):
            s.connect(cid)
        await s.drive({cid: chunks_for(cid) for cid in range(1, n + 1)})

    run = await ck.run(f"{n} clients", many)
    return _interleaved_verdict(
        ck, reference, probe, run, n, cross,
        lambda cid: f"fed {cid % 7 + 1}-byte chunks, interleaved with {n - 1} others",
        "bytes",
    )


def _unknown_ops_verdict(ck: Checker, reference: Run, run: Run) -> Verdict:
    """Unknown ops and fields must not change what client 1 gets."""
    extra = []
    if not reference.problems and not run.problems and run.out(1) != reference.out(1):
        extra.append(
            "output to client 1 changed when unknown ops and fields were added: "
            + _diff(reference.out(1), run.out(1))
        )
    seen = "ignored: same output as without them"
    if extra:
        seen = "unknown ops/fields changed the output"
    return ck.verdict(seen, [reference, run], extra)


def _interleaved_verdict(
    ck: Checker,
    reference: Run,
    probe: Run,
    run: Run,
    n: int,
    cross: bool,
    how: Callable[[int], str],
    what: str,
) -> Verdict:
    """Each of n interleaved clients must get the output one client gets
    alone, unless the handler writes across clients (a chat, say: then a
    client's output depends on the others and there is nothing to compare)."""
    extra: list[str] = []
    runs = [reference, probe, run]
    if cross:
        seen = f"{n} clients served; writes across clients, so streams not compared"
    else:
        expected = reference.out(1)
        mismatches = [
            f"client {cid} ({how(cid)}): output differs from the same {what} sent alone: "
            f"{_diff(expected, run.out(cid))}"
            for cid in range(1, n + 1)
            if run.out(cid) != expected
        ]
        if reference.problems or run.problems:
            mismatches = []
        extra += mismatches[:3]
        if len(mismatches) > 3:
            extra.append(f"... and {len(mismatches) - 3} more clients whose output differs")
        seen = f"{n} interleaved clients, each got the output it gets alone"
        if mismatches:
            seen = f"{len(mismatches)} of {n} clients got other output than alone"
    return ck.verdict(seen, runs, extra)


async def sc_binary(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [BINARY]})
        s.connect(2)
        await s.drive({2: [bytes([b]) for b in reversed(BINARY)]})
        s.connect(3)
        await s.drive({3: [bytes(range(0x80, 0x100)) * 4 + b"\r\n"]})
        s.connect(4)
        await s.drive({4: [PROBE]})
        await s.settle(ck.quiet)

    run = await ck.run("binary", body)
    return ck.verdict("bytes 0..255 whole and byte by byte; still serving", [run])


async def sc_eof(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [PROBE]})
        s.data(1, b"", eof=True)
        await s.reply(1)
        s.disconnect(1, "eof")
        s.connect(2)
        await s.drive({2: [PROBE[:10], PROBE[10:20]]})
        s.data(2, PROBE[20:], eof=True)
        await s.reply(2)
        s.disconnect(2, "eof")
        s.connect(3)
        await s.drive({3: [PROBE]})  # fences clients 1 and 2
        await s.settle(ck.quiet)

    run = await ck.run("eof", body)
    extra: list[str] = []
    seen = "no run"
    if run.session is not None:
        c1, c2 = run.session.clients.get(1), run.session.clients.get(2)
        if run.error is None:
            for c in (c1, c2):
                if c is not None and len(c.ns) != c.data_sent:
                    extra.append(
                        f"client {c.cid}: {len(c.ns)} consumed replies to {c.data_sent} data"
                    )
        seen = (
            f"eof data answered once each: empty eof n={c1.ns[-1:] if c1 else '-'}, "
            f"eof with bytes n={c2.ns[-1:] if c2 else '-'}"
        )
    return ck.verdict(seen, [run], extra)


async def sc_unknown(ck: Checker) -> Verdict:
    reference = await ck.solo_reference()

    async def body(s: Session) -> None:
        s.hello(features=["future"], limits={"x": 1})
        s.send({"op": "future-op", "what": "ignore me"})
        s.connect(1, tls=True, proxy=None)
        s.send({"op": "future-op", "id": 1, "data": "not client bytes"})
        s.data(1, PROBE, ts=1.5, seq=[1, 2])
        await s.reply(1)

    return _unknown_ops_verdict(ck, reference, await ck.run("with unknown ops", body))


async def sc_stdin_eof(ck: Checker) -> Verdict:
    info: dict[str, float | int | None] = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.drive({1: [PROBE], 2: [b"partial"]})
        t0 = trio.current_time()
        info["status"] = await s.finish()
        info["ms"] = (trio.current_time() - t0) * 1000

    run = await ck.run("stdin-eof", body)
    status = _as_int(info.get("status"))
    extra = []
    if "status" in info and status != 0:
        extra.append(f"after stdin EOF the handler {describe_status(status)} (expected status 0)")
    seen = describe_status(status)
    if "ms" in info:
        seen += f" {info['ms']:.0f} ms after stdin EOF"
    return ck.verdict(seen, [run], extra)

# -- scenarios in the framed modes ---------------------------------------------


def binary_frames(framing: str) -> list[bytes]:
    """Frames holding every byte 0..255 that the framing can carry in a frame."""
    if framing in ("line", "crlf"):  # a line holds no LF
        return [bytes(range(10)), bytes(range(11, 256)), bytes(range(0x80, 0x100)) * 4 + b"\r"]
    return [bytes(range(256)), bytes(range(255, -1, -1)), b"\n\n\n\r\n", b"", b"\x00" * 300]


async def fr_frames(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.frames(1, FRAMES)
        s.tick()
        await s.settle(ck.quiet)  # answers, and any consumed, come now

    run = await ck.run("frames", body)
    seen = "no run"
    if run.session is not None:
        c = run.session.clients[1]
        seen = (
            f"{c.frames_sent} frames, no consumed; {c.writes} writes back "
            f"({len(c.out)} bytes framed)"
        )
        if c.ns or run.session.violations:
            seen = "replies that are not allowed in a framed mode"
    return ck.verdict(seen, [run])


async def fr_ids_live(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        for cid in (1, 2, 3):
            s.connect(cid)
            s.frames(cid, FRAMES)
        s.disconnect(2, "reset")
        s.frames(1, [b"more"])
        s.eof(1)
        await s.closed(1)  # the handler read the disconnect of client 2
        s.tick()
        s.frames(3, [b"again"])
        s.connect(4)
        s.frames(4, FRAMES)
        s.eof(3)
        s.eof(4)
        await s.closed(3, 4)
        await s.settle(ck.quiet)

    run = await ck.run("ids-live", body)
    seen = "no run"
    if run.session is not None:
        writes = sum(c.writes for c in run.session.clients.values())
        seen = f"{writes} client writes over {run.session.line_count} lines, all to live ids"
        if run.session.violations:
            seen = "writes to ids that are unknown or gone"
    return ck.verdict(seen, [run])


async def fr_close(ck: Checker) -> Verdict:
    last = len(REASONS) + 1

    async def body(s: Session) -> None:
        s.hello()
        for cid, reason in enumerate(REASONS, 1):
            s.connect(cid)
            s.frames(cid, FRAMES)
            s.disconnect(cid, reason)
        s.connect(last)
        s.frames(last, FRAMES)
        s.eof(last)
        await s.closed(last)  # fences every client above
        await s.settle(ck.quiet)

    run = await ck.run("close", body)
    seen = f"survived all {len(REASONS)} disconnect reasons; nothing for closed clients"
    return ck.verdict(seen, [run])


async def fr_disconnect_pending(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.frames(1, FRAMES)  # still being handled when the client resets
        s.disconnect(1, "reset")
        s.frames(2, FRAMES)
        s.eof(2)
        await s.closed(2)  # closing after that eof: the disconnect was read
        s.tick()
        s.connect(3)
        s.frames(3, FRAMES)
        s.eof(3)
        await s.closed(3)
        await s.settle(ck.quiet)

    run = await ck.run("disconnect-pending", body)
    return ck.verdict("nothing for client 1 after its disconnect", [run])


async def fr_ticks(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.tick()
        s.connect(1)
        s.tick()
        s.frames(1, FRAMES[:2])
        s.tick()
        s.tick()
        s.frames(1, FRAMES[2:])
        s.tick()
        s.eof(1)
        s.tick()
        await s.closed(1)
        for _ in range(5):
            s.tick()
        s.connect(2)
        s.frames(2, FRAMES)
        s.eof(2)
        await s.closed(2)
        await s.settle(ck.quiet)

    run = await ck.run("ticks", body)
    return ck.verdict("10 ticks, no reply needed; still serving afterwards", [run])


async def fr_many(ck: Checker) -> Verdict:
    n = MANY_CLIENTS
    reference = await ck.framed_reference()
    info: dict[str, int] = {}

    async def bystander(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.settle(ck.quiet)  # greetings for client 2, if any, come now
        info["before"] = s.clients[2].writes
        s.frames(1, FRAMES)
        s.eof(1)
        await s.closed(1)  # client 1's frames were handled: did client 2 get anything?
        info["after"] = s.clients[2].writes

    probe = await ck.run("bystander", bystander)
    cross = info.get("after", 0) > info.get("before", 0)

    async def many(s: Session) -> None:
        s.hello()
        for cid in range(1, n + 1):
            s.connect(cid)
        for i in range(len(FRAMES)):  # round robin: one frame per client at a time
            for cid in range(1, n + 1):
                s.frames(cid, FRAMES[i : i + 1])
        for cid in range(1, n + 1):
            s.eof(cid)
        await s.closed(*range(1, n + 1))

    run = await ck.run(f"{n} clients", many)
    return _interleaved_verdict(
        ck, reference, probe, run, n, cross,
        lambda cid: f"frames interleaved with {n - 1} others", "frames",
    )


async def fr_binary(ck: Checker) -> Verdict:
    frames = binary_frames(ck.framing)

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.frames(1, frames)
        s.eof(1)
        await s.closed(1)
        s.connect(2)
        s.frames(2, frames[::-1])
        s.connect(3)
        s.frames(3, FRAMES)
        s.eof(2)
        s.eof(3)
        await s.closed(2, 3)
        await s.settle(ck.quiet)

    run = await ck.run("binary", body)
    return ck.verdict(
        f"bytes 0..255 in {len(frames)} frames ({ck.framing}); still serving", [run]
    )


async def fr_eof(ck: Checker) -> Verdict:
    info: dict[str, float] = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.connect(3)
        s.frames(1, FRAMES)
        s.frames(3, FRAMES[:2])
        t0 = trio.current_time()
        s.eof(1)
        await s.closed(1)
        info["1"] = trio.current_time() - t0
        t0 = trio.current_time()
        s.eof(2)  # no frame at all
        await s.closed(2)
        info["2"] = trio.current_time() - t0
        s.frames(3, FRAMES[2:])  # client 3 was not at EOF: still served
        s.eof(3)
        await s.closed(3)
        await s.settle(ck.quiet)

    run = await ck.run("eof", body)
    seen = "no close after eof"
    if "2" in info:
        seen = (
            f"closed on eof in {info['1'] * 1000:.0f} ms (after {len(FRAMES)} frames) "
            f"and {info['2'] * 1000:.0f} ms (no frame)"
        )
    return ck.verdict(seen, [run])


async def fr_unknown(ck: Checker) -> Verdict:
    reference = await ck.framed_reference("without unknown ops")

    async def body(s: Session) -> None:
        s.hello(features=["future"], limits={"x": 1})
        s.send({"op": "future-op", "what": "ignore me"})
        s.connect(1, tls=True, proxy=None)
        s.send({"op": "future-op", "id": 1, "data": "not client bytes"})
        s.frames(1, FRAMES, ts=1.5, seq=[1, 2])
        s.eof(1, why="future")
        await s.closed(1)

    return _unknown_ops_verdict(ck, reference, await ck.run("with unknown ops", body))


async def fr_stdin_eof(ck: Checker) -> Verdict:
    info: dict[str, float | int | None] = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.frames(1, FRAMES)
        s.frames(2, FRAMES[:1])
        s.eof(1)  # not waiting for its close: a handler must exit whatever it owes
        await s.settle(ck.quiet)
        t0 = trio.current_time()
        info["status"] = await s.finish()
        info["ms"] = (trio.current_time() - t0) * 1000

    run = await ck.run("stdin-eof", body)
    status = _as_int(info.get("status"))
    extra = []
    if "status" in info and status != 0:
        extra.append(f"after stdin EOF the handler {describe_status(status)} (expected status 0)")
    seen = describe_status(status)
    if "ms" in info:
        seen += f" {info['ms']:.0f} ms after stdin EOF"
    return ck.verdict(seen, [run], extra)


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    func: Callable[[Checker], Awaitable[Verdict]]


SCENARIOS = [
    Scenario("hello-silence", "no output after hello; exit 0 on stdin EOF", sc_hello),
    Scenario("one-data", "exactly one consumed, 0 <= n <= held", sc_one_data),
    Scenario("split", "same output however the bytes are split", sc_split),
    Scenario("ids-live", "writes only to known, live ids", sc_ids_live),
    Scenario("close", "any disconnect reason: survive, then silence", sc_close),
    Scenario(
        "disconnect-pending", "nothing for a client after its disconnect", sc_disconnect_pending
    ),
    Scenario("ticks", "ticks need no reply; handler survives", sc_ticks),
    Scenario("many-clients", f"{MANY_CLIENTS} interleaved = each alone", sc_many),
    Scenario("binary", "bytes 0..255: no crash, valid replies", sc_binary),
    Scenario("eof", "eof data gets exactly one consumed", sc_eof),
    Scenario("unknown-ops", "unknown ops and fields ignored", sc_unknown),
    Scenario("stdin-eof", "exit 0 promptly on stdin EOF", sc_stdin_eof),
]
FRAMED_SCENARIOS = [
    Scenario("hello-silence", "no output after hello; exit 0 on stdin EOF", sc_hello),
    Scenario("frames", "frames need no reply: never a consumed", fr_frames),
    Scenario("ids-live", "writes only to known, live ids", fr_ids_live),
    Scenario("close", "any disconnect reason: survive, then silence", fr_close),
    Scenario(
        "disconnect-pending", "nothing for a client after its disconnect", fr_disconnect_pending
    ),
    Scenario("ticks", "ticks need no reply; handler survives", fr_ticks),
    Scenario("many-clients", f"{MANY_CLIENTS} interleaved = each alone", fr_many),
    Scenario("binary", "bytes 0..255 in frames: valid replies", fr_binary),
    Scenario("eof", "eof: the handler closes that client", fr_eof),
    Scenario("unknown-ops", "unknown ops and fields ignored", fr_unknown),
    Scenario("stdin-eof", "exit 0 promptly on stdin EOF", fr_stdin_eof),
]


def scenarios_for(framing: str) -> list[Scenario]:
    return SCENARIOS if framing == "raw" else FRAMED_SCENARIOS


VALID_LINES = "valid-lines"
VALID_EXPECTED = "JSON object/array, known ops, typed fields, data <= U+00FF"


@dataclass
class Row:
    name: str
    expected: str
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return not self.verdict.problems


async def _run_scenario(ck: Checker, scenario: Scenario) -> Row:
    ck.scenario = scenario.name
    try:
        verdict = await scenario.func(ck)
    except Exception as exc:  # a checker bug must not hide the other scenarios
        verdict = Verdict(
            "checker error",
            [f"internal checker error: {exc!r}\n{traceback.format_exc()}"],
            [],
        )
    return Row(scenario.name, scenario.expected, verdict)


async def check(
    argv: list[str], timeout: float, names: Sequence[str], framing: str = "raw"
) -> list[Row]:
    ck = Checker(argv, timeout, framing)
    rows = [
        await _run_scenario(ck, s) for s in scenarios_for(framing) if not names or s.name in names
    ]
    # Every line of every run is checked, whichever scenarios were chosen.
    errors = [e for r in ck.runs for e in r.line_errors]
    total = sum(r.session.line_count for r in ck.runs if r.session is not None)
    seen = f"{total} lines in {len(ck.runs)} runs, all valid"
    if errors:
        seen = f"{len(errors)} invalid lines or array elements in {total} lines"
    rows.append(Row(VALID_LINES, VALID_EXPECTED, Verdict(seen, errors, [])))
    return rows


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render(rows: Sequence[Row], framing: str = "raw") -> str:
    seen_width = 72
    table = [
        (
            r.name,
            r.expected,
            _cell(r.verdict.problems[0] if r.verdict.problems else r.verdict.seen, seen_width),
            "PASS" if r.ok else "FAIL",
        )
        for r in rows
    ]
    header = ("scenario", "expected", "seen", "result")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [
        " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    for r in rows:
        if r.ok:
            continue
        problems = r.verdict.problems
        lines.append("")
        lines.append(f"FAIL {r.name}: expected {r.expected}")
        lines += [f"  - {p}" for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"  - ... and {len(problems) - MAX_PROBLEMS} more")
        if r.verdict.stderr:
            lines.append(f"  handler stderr (last {len(r.verdict.stderr)} lines):")
            lines += [f"    | {text}" for text in r.verdict.stderr]
    passed = sum(r.ok for r in rows)
    lines.append("")
    if framing != "raw":
        lines.append(f"(handler driven as tgate --framing {framing} drives it)")
    lines.append(f"{passed} passed, {len(rows) - passed} failed")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    names = list(dict.fromkeys(s.name for s in [*SCENARIOS, *FRAMED_SCENARIOS]))
    parser = argparse.ArgumentParser(
        prog="tgate check-handler",
        description=(
            "Check that a handler command speaks tgate protocol v1, by driving fresh "
            "handler processes through scripted scenarios as a fake gateway."
        ),
    )
    parser.add_argument("command", help='handler command, one string: "python3 handler.py"')
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds allowed for each handler run (default 5)",
    )
    parser.add_argument(
        "--framing",
        choices=FRAMINGS,
        default="raw",
        help="drive the handler as tgate --framing MODE does (default raw): frame and eof "
        "messages instead of data, no consumed",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names,
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)} (one-data and "
        "split are raw only, frames framed only); the "
        f"{VALID_LINES} row always covers the lines of every run",
    )
    return parser


def main(argv: list[str]) -> int:
    """CLI entry: ``tgate check-handler "CMD" [--timeout S] [--framing MODE]
    [--scenario NAME]...``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        command = shlex.split(args.command)
    except ValueError as exc:
        parser.error(f"cannot split the handler command: {exc}")
    if not command:
        parser.error("the handler command is empty")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    available = [s.name for s in scenarios_for(args.framing)]
    for name in args.scenario:
        if name not in available:
            parser.error(
                f"scenario {name!r} is not run with --framing {args.framing} "
                f"(choose from {', '.join(available)})"
            )
    if shutil.which(command[0]) is None:
        print(
            f"tgate check-handler: cannot run {command[0]!r}: not found or not executable",
            file=sys.stderr,
        )
        return 2
    rows = trio.run(check, command, float(args.timeout), list(args.scenario), args.framing)
    print(render(rows, args.framing), flush=True)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
