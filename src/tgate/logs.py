r"""tgate's stderr: log records, the banner and handler stderr, never blocking the loop.

Everything tgate writes to stderr goes through ONE bounded queue (1 MiB, 10,000
entries). The trio thread only appends to it; a daemon thread drains it with
plain blocking ``os.write(2, ...)`` (the stdlib's QueueHandler/QueueListener
pattern). Why a thread: fd 2 may be a pipe, a tty, a file or a socket
(journald), and its open file description is shared with the parent shell, so
``O_NONBLOCK`` on it (the only way to write it from the loop without blocking)
would leak into the shell and its other children; a thread works for all kinds.

When the queue is full (nobody reads our stderr) or a write fails (EPIPE, EBADF,
ENOSPC, EIO, ...), lines are dropped and counted; once a write works again, one
line says how many. A write error never raises out of the writer, and producers
never wait for it: a writer stuck in ``write`` only means new lines are dropped.

Log lines are ``2026-12-06T05:12:24.123Z tgate: WARNING: message``, handler
stderr lines ``2026-12-06T05:12:24.123Z [handler PID] text``, access lines (one per
connection when it ends, :func:`access`) ``2026-12-06T05:12:24.123Z tgate: access:
client 12 127.0.0.1:40312 worker 0 1.234 s in 120 B out 340 B (eof)``. The banner and
the ``tgate: error: ...`` lines are written verbatim (scripts match ``^tgate listening on``).

With ``setup(level, fmt="json")`` (``--log-format json``) every line is one JSON object
with ``ts`` (the same ISO 8601 UTC time), ``level``, ``logger`` and ``msg``: records
(plus the fields of ``extra={"fields": {...}}``, and ``exc``/``stack`` text), handler
stderr (``level`` "stderr", ``logger`` "handler", ``pid``), the banner (``event``
"listening", ``host``, ``port``; its ``msg`` comes last, so ``tgate listening on
(\S+):(\d+)`` still finds host and port in the line), access lines (``logger``
"tgate.access", ``event`` "disconnect"), summaries (``event`` "suppressed") and
dropped-lines notices (``event`` "dropped").

Rate limiting, per kind (logger name + format string ``record.msg``), all levels:
at most ``RATE_LIMIT`` records per ``RATE_WINDOW`` s, then one line says ``N more
like this in the last 10 s: <first suppressed message>`` when the next record of
that kind comes, at :func:`flush_suppressed` (for the gateway's tick) or at exit.

The gateway calls :func:`setup`, :func:`banner`, :func:`forward_stderr` per handler
process, :func:`flush_suppressed` each tick and :func:`shutdown` at exit (bounded).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Literal

import orjson
import trio

MAX_BYTES, MAX_ENTRIES = 1 << 20, 10_000  # bounds of the queue
PIECE = 65536  # handler stderr is read, and a newline-free flood passed on, in such pieces
CHUNK = 65536  # bytes per write() of the writer thread
RATE_LIMIT, RATE_WINDOW = 5, 10.0  # at most 5 records of one kind per 10 s
MAX_KINDS = 1000  # rate-limit windows remembered (each f-string message is a kind)

Write = Callable[[bytes], int]
Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")
_write_stderr: Write = functools.partial(os.write, 2)
_second: tuple[int, str] = (-1, "")  # replaced as a whole: safe across threads


def iso_time(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2026-12-06T05:12:24.123Z``."""
    global _second
    sec = int(t)
    cached = _second
    if cached[0] != sec:  # strftime once per second
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((t - sec) * 1000):03d}Z"


_OPT = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _json(obj: dict[str, Any]) -> bytes:
    """One JSON line; never raises (what orjson cannot encode becomes its ``str``)."""
    try:
        return orjson.dumps(obj, default=str, option=_OPT)
    except Exception:  # a lone surrogate (undecodable bytes), an int past 64 bits, ...
        safe = {str(k): v if type(v) in (int, float, bool) and abs(v) < 1 << 63 else
                str(v).encode(errors="backslashreplace").decode() for k, v in obj.items()}
        try:
            return orjson.dumps(safe, option=_OPT)
        except Exception:
            return orjson.dumps({"ts": iso_time(time.time()), "level": "error",
                                 "logger": "tgate", "msg": repr(obj)}, option=_OPT)


def _notice(n: int, fmt: Format = "text") -> bytes:
    when = iso_time(time.time())
    text = f"{n} log lines dropped (stderr full or closed)"
    if fmt == "json":
        return _json({"ts": when, "level": "warning", "logger": "tgate", "msg": text,
                      "event": "dropped", "dropped": n})
    return f"{when} tgate: WARNING: {text}\n".encode()


class LogQueue:
    """A bounded queue of whole lines, written by a thread with ``write``. ``put`` never
    blocks: it enqueues, or drops and counts; a gap (an ``int``: lines dropped there)
    marks where lines were lost so that the notice lands in the right place.
    ``fmt``: the format of the lines (text or json) for everyone who writes here."""

    def __init__(self, write: Write = _write_stderr, *, max_bytes: int = MAX_BYTES,
                 max_entries: int = MAX_ENTRIES, fmt: Format = "text") -> None:
        self._write, self.max_bytes, self.max_entries = write, max_bytes, max_entries
        self.fmt: Format = fmt
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[bytes | int] = deque()
        self._nbytes = self._entries = 0  # queued or being written
        self._idle = self._stopping = False  # _idle: the writer waits for items
        self._thread: threading.Thread | None = None
        self.dropped = 0  # lines dropped so far (queue full or write failed)

    def has_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` would fit now (a racy hint that lets callers skip formatting)."""
        return self._nbytes + nbytes <= self.max_bytes and self._entries < self.max_entries

    def put(self, data: bytes) -> bool:
        """Queue ``data`` (whole lines), or drop and count its lines if full."""
        with self._cond:
            if self._nbytes + len(data) > self.max_bytes or self._entries >= self.max_entries:
                self._gap(data.count(b"\n") or 1)
                return False
            self._items.append(data)
            self._nbytes, self._entries = self._nbytes + len(data), self._entries + 1
            if self._idle:
                self._cond.notify()
            return True

    def drop(self, lines: int) -> None:
        """Count ``lines`` lines as dropped (the caller found no room)."""
        with self._cond:
            self._gap(lines)

    def _gap(self, lines: int) -> None:
        self.dropped += lines
        items = self._items
        if items and isinstance(items[-1], int):
            items[-1] += lines
        else:
            items.append(lines)
            if self._idle:
                self._cond.notify()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tgate-log", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 1.0) -> bool:
        """Write what is queued, waiting at most ``timeout`` s; True if all was written."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            return not self._items
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        pending = 0  # lines dropped and not reported yet
        with contextlib.suppress(BaseException):  # a bug: producers just drop from now on
            while True:
                with self._cond:
                    while not self._items and not self._stopping:
                        self._idle = True
                        self._cond.wait()
                        self._idle = False
                    if not self._items:
                        break
                    batch, self._items = self._items, deque()
                pending = self._write_batch(batch, pending)
            if pending:
                self._write_all(_notice(pending, self.fmt))

    def _write_batch(self, batch: deque[bytes | int], pending: int) -> int:
        """Write ``batch``; ``pending``: lines lost before it. Returns lines lost unreported."""
        buf: list[bytes] = []
        size, ok = 0, True  # ok: the last write worked, so the notice is worth a try
        for item in [*batch, b""]:  # b"": the end
            if isinstance(item, int):
                pending += item
                continue
            if (pending and ok) or size >= CHUNK or not item:
                pending, ok = self._flush(buf, pending)
                size = 0
                if pending and ok:
                    ok = self._write_all(notice := _notice(pending, self.fmt)) == len(notice)
                    pending = 0 if ok else pending
            buf.append(item)
            size += len(item)
        real = [item for item in batch if not isinstance(item, int)]
        with self._cond:
            self._nbytes -= sum(map(len, real))
            self._entries -= len(real)
        return pending

    def _flush(self, buf: list[bytes], pending: int) -> tuple[int, bool]:
        """Write and empty ``buf``: ``pending`` plus the lines lost, and whether all went out."""
        data = b"".join(buf)
        buf.clear()
        done = self._write_all(data)
        if done == len(data):
            return pending, True
        lost = data.count(b"\n", done)
        with self._cond:
            self.dropped += lost
        return pending + lost, False

    def _write_all(self, data: bytes) -> int:
        """Bytes of ``data`` written before an error (never raises)."""
        done = 0
        while done < len(data):
            try:
                n = self._write(data[done:] if done else data)
            except Exception:  # EPIPE, EBADF, ENOSPC, EIO, ...: stderr is gone
                break
            if n <= 0:
                break
            done += n
        return done


class _Kind:
    __slots__ = ("count", "first", "level", "logger", "start", "suppressed")

    def __init__(self, start: float) -> None:  # first: the first suppressed message
        self.start, self.count, self.suppressed, self.first, self.level = start, 0, 0, "", ""
        self.logger = ""


class QueueHandler(logging.Handler):
    """Formats records as timestamped lines (text or JSON: the queue's ``fmt``),
    rate-limited per kind, into a LogQueue."""

    def __init__(self, queue: LogQueue, *, limit: int = RATE_LIMIT,
                 window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.queue, self.limit, self.window, self.clock, self.wall = (
            queue, limit, window, clock, wall)
        self._kinds: dict[Hashable, _Kind] = {}
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        msg = record.msg
        key = (record.name, msg if isinstance(msg, str) else id(type(msg)))
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is None or now - kind.start >= self.window:
            if kind is not None and kind.suppressed:
                self._summary(kind)
            elif kind is None and len(self._kinds) >= MAX_KINDS:
                self._expire(now, everything=len(self._kinds) >= 2 * MAX_KINDS)
            kind = self._kinds[key] = _Kind(now)
        if kind.count < self.limit:
            kind.count += 1
            self.queue.put(self._line(record))
            return
        kind.suppressed += 1
        if kind.suppressed == 1:
            kind.first, kind.level, kind.logger = (
                self._message(record), record.levelname, record.name)

    def suppressed_early(self, name: str, msg: object) -> bool:
        """Count a record of a kind being suppressed already, before it is even made."""
        with self.lock:  # type: ignore[union-attr]
            kind = self._kinds.get((name, msg if isinstance(msg, str) else id(type(msg))))
            if kind is None or not kind.suppressed or self.clock() - kind.start >= self.window:
                return False
            kind.suppressed += 1
            return True

    def flush_suppressed(self, everything: bool = False) -> None:
        """Report and forget the kinds whose window is over (all of them at exit)."""
        with self.lock:  # type: ignore[union-attr]  # createLock() always sets it
            self._expire(self.clock(), everything)

    def _expire(self, now: float, everything: bool) -> None:
        window = -1.0 if everything else self.window
        for key in [k for k, v in self._kinds.items() if now - v.start >= window]:
            if (kind := self._kinds.pop(key)).suppressed:
                self._summary(kind)

    def _summary(self, kind: _Kind) -> None:
        text = f"{kind.suppressed} more like this in the last {self.window:g} s: {kind.first}"
        if self.queue.fmt == "json":
            self.queue.put(_json({
                "ts": iso_time(self.wall()), "level": kind.level.lower(), "logger": kind.logger,
                "msg": text, "event": "suppressed", "suppressed": kind.suppressed,
                "first": kind.first}))
        else:
            self.queue.put(f"{iso_time(self.wall())} tgate: {kind.level}: {text}\n"
                           .encode(errors="backslashreplace"))
        kind.suppressed = 0

    def _message(self, record: logging.LogRecord, details: bool = True) -> str:
        try:
            text = record.getMessage()
        except Exception as exc:  # a bad format string must not kill the caller
            text = f"{record.msg!r} % {record.args!r} (logging error: {exc})"
        if not details:
            return text
        if record.exc_info:
            text += "\n" + self._formatter.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self._formatter.formatStack(record.stack_info)
        return text

    def _line(self, record: logging.LogRecord) -> bytes:
        if self.queue.fmt == "json":
            return self._json_line(record)
        return (f"{iso_time(record.created)} tgate: {record.levelname}: "
                f"{self._message(record)}\n").encode(errors="backslashreplace")

    def _json_line(self, record: logging.LogRecord) -> bytes:
        obj: dict[str, Any] = {
            "ts": iso_time(record.created), "level": record.levelname.lower(),
            "logger": record.name, "msg": self._message(record, details=False)}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                obj.setdefault(str(key), value)  # never hides ts, level, logger or msg
        if record.exc_info:
            obj.setdefault("exc", self._formatter.formatException(record.exc_info))
        if record.stack_info:
            obj.setdefault("stack", self._formatter.formatStack(record.stack_info))
        return _json(obj)


class _Logger(logging.Logger):
    """The ``tgate`` logger: a record of a kind being suppressed is dropped before it is
    made (making a LogRecord costs far more than the rest of a suppressed call)."""

    def _log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if _handler is None or not _handler.suppressed_early(self.name, msg):
            super()._log(level, msg, *args, **kwargs)


_queue: LogQueue | None = None
_handler: QueueHandler | None = None
_format: Format = "text"  # for queues made after setup (e.g. after a shutdown)
_access_wanted = True  # set_access_log
_access_level = True  # the level set up lets INFO through
_access_on = True  # both: the one test access() makes when the log is off


def _guard_std_fds() -> bool:
    """Put /dev/null on closed fds 0-2 (so that no socket is ever opened as "stderr");
    return whether stderr is gone: fd 2 was closed, now or when Python started."""
    gone = sys.stderr is None
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            gone = gone or fd == 2
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)
    if sys.stderr is None:  # for code that still writes to sys.stderr
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    return gone


def get_queue() -> LogQueue:
    """The process's stderr queue, its writer started on first use."""
    global _queue
    if _queue is None:
        _queue = LogQueue(len if _guard_std_fds() else _write_stderr, fmt=_format)  # len: discard
        _queue.start()
    return _queue


def setup(level: int, fmt: Format = "text") -> None:
    """Send all logging (``tgate`` and everything else) at ``level`` and up to the queue,
    as text lines or JSON objects (``fmt``). Access lines are INFO: a ``level`` above
    INFO turns them off too."""
    global _handler, _format, _access_level, _access_on
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    _format = fmt
    _access_level = level <= logging.INFO
    _access_on = _access_wanted and _access_level
    queue = get_queue()
    queue.fmt = fmt
    if _handler is not None:  # set up again: what the old one suppressed is not lost
        _handler.flush_suppressed(everything=True)
    logging._srcfile = None  # records need no caller, thread or process info
    for flag in ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks"):
        setattr(logging, flag, False)
    _handler = QueueHandler(queue)
    logging.basicConfig(handlers=[_handler], level=level, force=True)  # the root's only one
    logging.getLogger("tgate").__class__ = _Logger
    logging.captureWarnings(True)


_ERROR_LINE = re.compile(rb"\S+: error: ")
_BANNER = re.compile(r"tgate listening on (\S+):(\d+)")


def emit_line(line: bytes) -> bool:
    """Queue one line verbatim (a newline is added if missing); False if it was dropped.
    In JSON mode the line becomes the ``msg`` of an object (level "error" for a
    ``PROG: error: ...`` line, else "info")."""
    queue = get_queue()
    if queue.fmt == "json":
        level = "error" if _ERROR_LINE.match(line) else "info"
        return queue.put(_json({
            "ts": iso_time(time.time()), "level": level, "logger": "tgate",
            "msg": line.rstrip(b"\n").decode(errors="backslashreplace")}))
    return queue.put(line if line.endswith(b"\n") else line + b"\n")


def banner(text: str) -> bool:
    """Queue ``text`` as it is, e.g. ``tgate listening on HOST:PORT``. In JSON mode:
    ``{"ts", "level": "info", "logger": "tgate", "event": "listening", "host", "port",
    "msg": text}``, ``msg`` last so that the text pattern still finds host and port."""
    queue = get_queue()
    if queue.fmt != "json":
        return emit_line(text.encode(errors="backslashreplace"))
    obj: dict[str, Any] = {"ts": iso_time(time.time()), "level": "info", "logger": "tgate"}
    if m := _BANNER.fullmatch(text):
        host = m[1][1:-1] if m[1].startswith("[") and m[1].endswith("]") else m[1]
        obj.update(event="listening", host=host, port=int(m[2]))
    obj["msg"] = text
    return queue.put(_json(obj))


def set_access_log(enabled: bool) -> None:
    """Turn the access log (one line per connection when it ends) on or off."""
    global _access_wanted, _access_on
    _access_wanted = bool(enabled)
    _access_on = _access_wanted and _access_level


def access(client_id: int, peer: tuple[str, int], duration: float, bytes_in: int,
           bytes_out: int, reason: str, worker: int) -> None:
    """The access line of a connection that ended: INFO, never rate-limited (each
    connection gets one), dropped and counted like any line when the queue is full.
    One test of a global when the access log is off."""
    if not _access_on:
        return
    queue = _queue if _queue is not None else get_queue()
    if not queue.has_room(256):  # skip the formatting
        queue.drop(1)
        return
    now = iso_time(time.time())
    if queue.fmt == "json":
        queue.put(_json({
            "ts": now, "level": "info", "logger": "tgate.access", "event": "disconnect",
            "id": client_id, "peer": peer[0], "port": peer[1], "worker": worker,
            "duration_s": round(duration, 6), "bytes_in": bytes_in, "bytes_out": bytes_out,
            "reason": reason}))
        return
    host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    queue.put(f"{now} tgate: access: client {client_id} {host}:{peer[1]} worker {worker} "
              f"{duration:.3f} s in {bytes_in} B out {bytes_out} B ({reason})\n"
              .encode(errors="backslashreplace"))


def flush_suppressed() -> None:
    """Write the "N more like this" lines of windows that are over: for the gateway's
    tick (not called here), so counts show up even if no record of that kind follows."""
    if _handler is not None:
        _handler.flush_suppressed()


def shutdown(timeout: float = 1.0) -> bool:
    """Report suppressed records, write what is queued (waiting at most ``timeout`` s)
    and stop the writer; True if everything was written. Safe to call twice."""
    global _queue
    if _handler is not None:
        _handler.flush_suppressed(everything=True)
    queue, _queue = _queue, None
    return queue is None or queue.close(timeout)


def _enqueue(queue: LogQueue, pid: int, tag: bytes, lines: list[bytes]) -> None:
    when = iso_time(time.time())
    if queue.fmt == "json":
        size = sum(map(len, lines)) + len(lines) * 80  # about: escapes can add more
        if not queue.has_room(size):
            queue.drop(len(lines))
            return
        queue.put(b"".join(_json({
            "ts": when, "level": "stderr", "logger": "handler", "pid": pid,
            "msg": line.decode(errors="backslashreplace")}) for line in lines))
        return
    prefix = when.encode() + tag
    size = sum(map(len, lines)) + len(lines) * (len(prefix) + 1)
    if not queue.has_room(size):
        queue.drop(len(lines))  # skip the formatting
        return
    queue.put(prefix + (b"\n" + prefix).join(lines) + b"\n")


async def forward_stderr(stream: trio.abc.ReceiveStream, pid: int, *,
                         queue: LogQueue | None = None) -> None:
    """Copy a handler's stderr to ours, each line prefixed with a timestamp and its pid
    (in JSON mode: ``{"ts", "level": "stderr", "logger": "handler", "pid", "msg"}``).

    Into the bounded queue, so a flooding handler cannot stall the loop: lines that do
    not fit are dropped (and counted) but reading goes on, so the handler never blocks
    on its stderr. A newline-free flood goes in pieces of at most 64 KiB, a partial
    last line at EOF; ``stream`` is closed at the end."""
    q = queue if queue is not None else get_queue()
    tag = f" [handler {pid}] ".encode()
    partial = b""
    try:
        while True:
            chunk = await stream.receive_some(PIECE)
            if not chunk:
                break
            data = partial + chunk if partial else bytes(chunk)  # bytes(bytes) is no copy
            end = data.rfind(b"\n")
            if end < 0:
                lines: list[bytes] = []
                partial = data
            else:
                lines = data[:end].split(b"\n")
                partial = data[end + 1:]
            while len(partial) >= PIECE:  # a newline-free flood: pass it on anyway
                lines.append(partial[:PIECE])
                partial = partial[PIECE:]
            if lines:
                _enqueue(q, pid, tag, lines)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
    finally:
        await stream.aclose()
    if partial:
        _enqueue(q, pid, tag, [partial])
