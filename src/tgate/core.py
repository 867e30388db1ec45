"""The gateway's state machine: clients, their buffers and output, and the
conversation with the handler (sans-IO).

The trio shell (server.py) feeds it socket events and handler output and
carries out what it decides: bytes queued in :attr:`Core.outbox` go to the
handler's stdin; clients in :attr:`Core.touched` get their output flushed,
their reader woken, or their socket closed once ``closing`` is set and their
output is empty.

Everything bound for the handler (hello, connect, data, frames, eof,
disconnect, replays) goes into one bytearray, the outbox, and counts against
one byte budget (:data:`PIPE_HIGH_WATER`). A client whose bytes would go past
it waits in :attr:`Core.backlog` with its bytes still in its own buffer, and
is forwarded as the pipe drains (:meth:`Core.pump`): a replay of 10,000 full
buffers costs the budget, not 10,000 messages at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__
from .buffer import DEFAULT_BUFSIZE, MAX_BUFSIZE, ClientBuffer
from .framing import FrameError, Framer, FrameTooLarge, framer_class
from .lines import LineSplitter
from .protocol import (
    MAX_HANDLER_LINE,
    TICK,
    Close,
    Consumed,
    HandlerError,
    Invalid,
    Write,
    encode_connect,
    encode_data,
    encode_disconnect,
    encode_eof,
    encode_frame,
    encode_hello,
    parse_line,
    quote,
)
from .quarantine import Quarantine

log = logging.getLogger("tgate")

DEFAULT_MAX_OUTPUT = 1 << 20
DEFAULT_QUARANTINE_AFTER = 3
#: The byte budget for everything queued for the handler's stdin: reading
#: clients, accepting and forwarding stop while this much is queued.
PIPE_HIGH_WATER = 4 << 20
#: At most this many client ids are named in one "write dropped" log line.
_IDS_LOGGED = 5


@dataclass(frozen=True, slots=True)
class Settings:
    bufsize: int = DEFAULT_BUFSIZE
    max_bufsize: int = MAX_BUFSIZE
    update_time: float = 1.0
    #: per-client queued output: reading pauses above half of it, and the
    #: client is disconnected ("slow") when more stays queued after a send
    max_output: int = DEFAULT_MAX_OUTPUT
    #: disconnect a client whose bytes alone crashed this many handlers in a
    #: row (0: never; see quarantine.py)
    quarantine_after: int = DEFAULT_QUARANTINE_AFTER
    framing: str = "raw"

    def __post_init__(self) -> None:
        if not 0 < self.bufsize <= self.max_bufsize:
            raise ValueError("need 0 < bufsize <= max_bufsize")
        if self.max_output <= 0 or self.update_time <= 0:
            raise ValueError("max_output and update_time must be positive")
        if self.quarantine_after < 0:
            raise ValueError("quarantine_after must be >= 0")
        framer_class(self.framing)  # ValueError if unknown


class Client:
    """One connected client as the core sees it."""

    __slots__ = (
        "buffer", "closing", "frame_gen", "framer", "id", "io", "known", "local", "out", "peer",
        "queued", "sent_at", "strikes", "suspect",
    )

    def __init__(
        self,
        cid: int,
        peer: tuple[str, int],
        local: tuple[str, int],
        settings: Settings,
        framer: Framer | None = None,
    ) -> None:
        self.id = cid
        self.peer = peer
        self.local = local
        self.buffer = ClientBuffer(settings.bufsize, settings.max_bufsize)
        #: output queued for the socket
        self.out = bytearray()
        #: why the client is being closed (once its output is flushed), or None
        self.closing: str | None = None
        #: the current handler process has been told about this client
        self.known = False
        #: handler crashes its bytes alone were in flight at, since its last reply
        self.strikes = 0
        #: in flight with others at a crash: held until tried alone
        self.suspect = False
        #: waiting in the backlog for room in the handler's byte budget
        self.queued = False
        #: the I/O shell's per-connection object
        self.io: object = None
        #: framed modes: the splitter, and the handler output generation at
        #: which a frame was last sent (in flight if no output came since)
        self.framer = framer
        self.frame_gen = -1
        #: raw mode: when the data message awaiting its reply was sent
        self.sent_at = 0.0

    def __repr__(self) -> str:
        return f"<client {self.id} {self.peer[0]}:{self.peer[1]}>"


class Core:
    def __init__(
        self, settings: Settings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        #: what the handler's stdin has still to receive
        self.outbox = bytearray()
        #: bytes taken from the outbox that the handler's stdin has not accepted yet
        self.pipe_pending = 0
        #: clients with bytes to forward once the budget has room, in order
        self.backlog: deque[Client] = deque()
        #: clients whose output, close state or readability changed
        self.touched: set[Client] = set()
        self.handler_up = False
        #: clients with a data message awaiting its consumed reply
        self.owed = 0
        #: stop reading clients (shutdown)
        self.stopping = False
        #: keep client bytes in their buffers instead of sending them (the
        #: handler is being replaced or the gateway is stopping)
        self.hold = False
        self.quarantine = Quarantine(self.settings.quarantine_after)
        self._lines = LineSplitter(MAX_HANDLER_LINE)
        self._out_high = max(1, self.settings.max_output // 2)
        self._framer_cls = framer_class(self.settings.framing)
        #: counts chunks of handler output (framed modes: what is in flight)
        self._output_gen = 0

    # ------------------------------------------------------------ queries

    @property
    def outbox_size(self) -> int:
        return len(self.outbox)

    def can_read(self, c: Client) -> bool:
        return (
            c.closing is None
            and c.buffer.room() > 0
            and len(c.out) < self._out_high
            and len(self.outbox) + self.pipe_pending < PIPE_HIGH_WATER
            and not self.stopping
        )

    @property
    def ever_connected(self) -> bool:
        return self._next_id > 1

    @property
    def pipe_full(self) -> bool:
        return len(self.outbox) + self.pipe_pending >= PIPE_HIGH_WATER

    @property
    def held_bytes(self) -> int:
        """Bytes the core holds for the handler: the outbox, the write in
        progress and every client's unconsumed buffer (the accounting the
        memory tests assert on)."""
        return (
            len(self.outbox)
            + self.pipe_pending
            + sum(len(c.buffer) for c in self.clients.values())
        )

    def take_outbox(self) -> bytearray:
        """Everything queued for the handler, handed over without a copy."""
        data = self.outbox
        self.outbox = bytearray()
        return data

    def oldest_owed(self) -> float | None:
        """When the oldest data message still awaiting its reply was sent."""
        if not self.owed:
            return None
        return min((c.sent_at for c in self.clients.values() if c.buffer.awaiting), default=None)

    # ------------------------------------------------------------ client side

    def connect(self, peer: tuple[str, int], local: tuple[str, int]) -> Client:
        framer = self._framer_cls() if self._framer_cls is not None else None
        c = Client(self._next_id, peer, local, self.settings, framer)
        self._next_id += 1
        self.clients[c.id] = c
        if self.handler_up:
            self._queue(encode_connect(c.id, peer, local))
            c.known = True
        return c

    def received(self, c: Client, data: bytes | memoryview) -> None:
        """Bytes read from the client's socket (at most buffer.room())."""
        if c.closing is not None:
            return
        c.buffer.feed(data)
        self._forward(c)

    def received_eof(self, c: Client) -> None:
        if c.closing is not None:
            return
        c.buffer.feed_eof()
        self._forward(c)

    def gone(self, c: Client, reason: str) -> None:
        """The client's socket is closed: forget it and tell the handler."""
        if self.clients.pop(c.id, None) is None:
            return
        if c.closing is None:
            c.closing = reason
        if c.buffer.awaiting:
            self.owed -= 1
        if c.known and self.handler_up:
            self._queue(encode_disconnect(c.id, reason))
        c.known = False
        self.touched.discard(c)
        if self.quarantine.forget(c):
            self._next_trial()

    def close(self, c: Client, reason: str, *, drop_output: bool = False) -> None:
        """Close `c` once its queued output is written (or at once)."""
        if c.closing is None or drop_output:
            # Dropping output overrides a gentler reason: nothing may be
            # written after the hole.
            c.closing = reason
        if drop_output:
            c.out.clear()
        self.touched.add(c)

    def sent(self, c: Client) -> None:
        """The shell tried to send `c`'s output: what stays queued past
        max_output means the client does not read (disconnect it, slow)."""
        limit = self.settings.max_output
        if len(c.out) > limit and c.closing != "slow":
            log.warning("client %d disconnected (slow): %d bytes of output queued, limit %d",
                        c.id, len(c.out), limit)
            self.close(c, "slow", drop_output=True)

    # ------------------------------------------------------------ handler side

    def handler_started(self) -> None:
        """A new handler process is up: greet it and replay every client,
        paced through the byte budget."""
        s = self.settings
        self.outbox = bytearray()
        self._lines = LineSplitter(MAX_HANDLER_LINE)
        self.handler_up = True
        self.hold = self.stopping
        self._queue(
            encode_hello(
                tgate_version=__version__,
                framing=s.framing,
                bufsize=s.bufsize,
                max_bufsize=s.max_bufsize,
                update_time=s.update_time,
            )
        )
        for c in self.clients.values():
            if c.closing is not None:
                continue
            self._queue(encode_connect(c.id, c.peer, c.local))
            c.known = True
        if self.quarantine.on_trial is None:
            self._next_trial()
        for c in self.clients.values():
            if c.closing is None:
                self._forward(c)

    def handler_lost(self, *, crashed: bool) -> list[Client]:
        """The handler process is gone. Returns the clients quarantined
        because their bytes alone crashed too many handlers."""
        self.handler_up = False
        self.outbox = bytearray()
        self.pipe_pending = 0
        self.owed = 0
        for c in self.backlog:
            c.queued = False
        self.backlog.clear()
        in_flight = [
            c for c in self.clients.values()
            if c.closing is None
            and (c.buffer.awaiting or (c.framer is not None and c.frame_gen == self._output_gen))
        ]
        quarantined = self.quarantine.crashed(in_flight) if crashed else []
        for c in quarantined:
            self.close(c, "quarantined")
        for c in self.clients.values():
            c.buffer.rewind()
            c.known = False
            c.frame_gen = -1
        return quarantined

    def tick(self) -> None:
        if self.handler_up:
            self._queue(TICK)

    def pump(self) -> None:
        """Forward the clients waiting for budget, while there is room."""
        backlog = self.backlog
        while backlog and not self.pipe_full:
            c = backlog.popleft()
            c.queued = False
            if c.closing is None and c.id in self.clients:
                self._forward(c)

    def handler_output(self, chunk: bytes) -> None:
        """Bytes read from the handler's stdout."""
        self._output_gen += 1
        lines = self._lines.feed(chunk)
        if self._lines.overlong:
            for size in self._lines.overlong:
                log.warning(
                    "handler line dropped: longer than %d bytes (%d bytes)", MAX_HANDLER_LINE, size
                )
            self._lines.overlong.clear()
        for line in lines:
            self.handler_line(line)
        if self._framer_cls is not None:
            # Framed: output after a client's frames means it survived them.
            q = self.quarantine
            for c in [q.on_trial, *q.struck] if q.struck else [q.on_trial]:
                if c is not None and 0 <= c.frame_gen < self._output_gen:
                    self._acquit(c)

    def handler_line(self, line: bytes) -> None:
        commands, errors = parse_line(line)
        if errors:
            if not line or line.isspace():
                return  # blank lines are allowed
            for err in errors:
                if err.startswith("not JSON"):
                    log.warning("handler stdout is not protocol, dropped: %s", quote(line))
                else:
                    log.warning("handler line dropped: %s: %s", err, quote(line))
        for cmd in commands:
            if type(cmd) is Write:
                self._write(cmd, line)
            elif type(cmd) is Consumed:
                self._consumed(cmd, line)
            elif type(cmd) is Close:
                self._close(cmd, line)
            else:
                assert type(cmd) is Invalid
                self._invalid(cmd, line)

    # ------------------------------------------------------------ internals

    def _queue(self, msg: bytes) -> None:
        self.outbox += msg

    def _forward(self, c: Client) -> None:
        if not self.handler_up or c.closing is not None or self.hold:
            return
        if c.suspect and c is not self.quarantine.on_trial:
            return  # held until tried alone
        if len(self.outbox) + self.pipe_pending >= PIPE_HIGH_WATER:
            if not c.queued:
                c.queued = True
                self.backlog.append(c)
            return
        if c.framer is None:
            self._send_data(c)
        else:
            self._send_frames(c, c.framer)

    def _send_frames(self, c: Client, framer: Framer) -> None:
        b = c.buffer
        try:
            frames, used = framer.split(b.data, b.max_size)
        except FrameError as exc:
            # The frames before the bad bytes were fine: deliver them first.
            for payload in exc.frames:
                self._queue(encode_frame(c.id, payload))
            if isinstance(exc, FrameTooLarge):
                log.info("client %d disconnected (overflow): %s", c.id, exc)
                self.close(c, "overflow")
            else:
                log.warning("client %d disconnected (malformed): %s", c.id, exc)
                self.close(c, "malformed")
            return
        if used:
            b.drop(used)
            self.touched.add(c)  # room for its reader again
        for payload in frames:
            self._queue(encode_frame(c.id, payload))
        if frames:
            c.frame_gen = self._output_gen
        if b.eof and not b.eof_sent:
            rest = bytes(b.data)
            b.drop(len(rest))
            last = framer.tail(rest)
            if last is not None:
                self._queue(encode_frame(c.id, last))
                c.frame_gen = self._output_gen
            elif rest:
                log.info("client %d: incomplete %s frame of %d bytes dropped at EOF",
                         c.id, framer.name, len(rest))
            self._queue(encode_eof(c.id))
            b.eof_sent = True

    def _send_data(self, c: Client) -> None:
        msg = c.buffer.take_message()
        if msg is not None:
            self._queue(encode_data(c.id, msg[0], msg[1]))
            self.owed += 1
            c.sent_at = self.clock()

    def _has_input(self, c: Client) -> bool:
        b = c.buffer
        return len(b) > 0 or (b.eof and not b.eof_sent)

    def _next_trial(self) -> None:
        """Put the next suspect on trial: its bytes alone go to the handler."""
        q = self.quarantine
        while q.on_trial is None:
            c = q.next_suspect()
            if c is None:
                return
            if c.id not in self.clients or c.closing is not None:
                q.acquit(c)
            elif not self._has_input(c):
                q.acquit(c)  # nothing left to try (framed frames are not replayed)
            else:
                q.on_trial = c
                self._forward(c)

    def _acquit(self, c: Client) -> None:
        was_trial = c is self.quarantine.on_trial
        self.quarantine.acquit(c)
        if was_trial:
            self._next_trial()

    def _lookup(self, cid: int) -> Client | None:
        c = self.clients.get(cid)
        if c is not None and c.known:
            return c
        return None

    def _unknown(self, cid: int, line: bytes, what: str) -> None:
        if 0 < cid < self._next_id:
            # A reply racing the client's disconnect is normal; a consumed for
            # a gone client is the commonest case and not worth a line.
            level = logging.DEBUG if what == "consumed" else logging.INFO
            log.log(level, "handler %s for client %d dropped: client is closed: %s",
                    what, cid, quote(line))
        else:
            log.warning("handler %s dropped: client id %d was never issued: %s",
                        what, cid, quote(line))

    def _write(self, cmd: Write, line: bytes) -> None:
        data = cmd.data
        if self._framer_cls is not None and not cmd.raw:
            try:
                data = self._framer_cls.encode(data)
            except FrameError as exc:
                log.warning("handler write dropped: %s: %s", exc, quote(line))
                return
        clients = self.clients
        closed: list[int] = []
        never: list[int] = []
        dropped: list[int] = []
        for cid in cmd.ids:
            c = clients.get(cid)
            if c is None or not c.known:
                (closed if 0 < cid < self._next_id else never).append(cid)
                continue
            if c.closing == "closed" or c.closing == "slow":
                dropped.append(cid)
                continue
            c.out += data
            self.touched.add(c)
        # One line per handler line, however many ids it named.
        if closed:
            log.info("handler write for %s dropped: client is closed: %s",
                     _some("client", closed), quote(line))
        if never:
            log.warning("handler write dropped: %s never issued: %s",
                        _some("client id", never, "was", "were"), quote(line))
        if dropped:
            log.info("handler write for %s dropped: the handler closed it or its output was "
                     "dropped (slow): %s", _some("client", dropped), quote(line))

    def _consumed(self, cmd: Consumed, line: bytes) -> None:
        if self._framer_cls is not None:
            log.warning("handler line dropped: consumed is only for --framing raw: %s",
                        quote(line))
            return
        c = self._lookup(cmd.id)
        if c is None:
            self._unknown(cmd.id, line, "consumed")
            return
        b = c.buffer
        was_awaiting = b.awaiting
        try:
            b.consume(cmd.n)
        except HandlerError as exc:
            log.warning("handler line dropped: client %d: %s; disconnecting it (error): %s",
                        cmd.id, exc, quote(line))
            self.close(c, "error")
            return
        if was_awaiting:
            self.owed -= 1
        if c.suspect or c.strikes:
            self._acquit(c)
        if c.closing is None:
            held = len(b.data)
            if b.eof:
                if b.finished:
                    self.close(c, "eof")
                else:
                    self._forward(c)
            elif held > b.seen:  # bytes arrived meanwhile: send them now
                self._forward(c)
            elif held >= b.max_size:
                log.info("client %d disconnected (overflow): %d bytes unconsumed", c.id, held)
                self.close(c, "overflow")
        self.touched.add(c)

    def _invalid(self, cmd: Invalid, line: bytes) -> None:
        c = self._lookup(cmd.id)
        if c is None:
            log.warning("handler line dropped: %s: %s", cmd.error, quote(line))
            return
        log.warning("handler line dropped: client %d: %s; disconnecting it (error): %s",
                    cmd.id, cmd.error, quote(line))
        self.close(c, "error")

    def _close(self, cmd: Close, line: bytes) -> None:
        c = self._lookup(cmd.id)
        if c is None:
            self._unknown(cmd.id, line, "close")
        else:
            self.close(c, "closed")


def _some(what: str, ids: list[int], one: str = "", many: str = "") -> str:
    """'client 3' or 'clients 3, 4, 5, ... (12 in all)' for one log line."""
    if len(ids) == 1:
        return f"{what} {ids[0]}" + (f" {one}" if one else "")
    shown = ", ".join(str(i) for i in ids[:_IDS_LOGGED])
    more = f", ... ({len(ids)} in all)" if len(ids) > _IDS_LOGGED else ""
    return f"{what}s {shown}{more}" + (f" {many}" if many else "")
