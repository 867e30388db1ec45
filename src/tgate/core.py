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

from . import __version__
from .channels import Channels
from .framing import FrameError, Framer, FrameTooLarge, framer_class
from .lines import LineSplitter
from .metrics import Metrics
from .protocol import (
    MAX_HANDLER_LINE,
    TICK,
    encode_connect,
    encode_data,
    encode_disconnect,
    encode_eof,
    encode_frame,
    encode_hello,
)
from .quarantine import Quarantine
from .replies import Replies
from .state import (
    DEFAULT_MAX_CHANNELS_PER_CLIENT,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_QUARANTINE_AFTER,
    PIPE_HIGH_WATER,
    Client,
    Settings,
    Worker,
)

__all__ = [
    "DEFAULT_MAX_CHANNELS_PER_CLIENT",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_QUARANTINE_AFTER",
    "PIPE_HIGH_WATER",
    "Client",
    "Core",
    "Settings",
    "Worker",
]

log = logging.getLogger("tgate")


class Core(Replies):
    def __init__(
        self, settings: Settings | None = None, clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self.workers = [Worker(i, self.settings.quarantine_after)
                        for i in range(self.settings.workers)]
        #: clients whose output, close state or readability changed
        self.touched: set[Client] = set()
        #: stop reading clients (shutdown)
        self.stopping = False
        self.channels = Channels(self.settings.max_channels_per_client)
        self._out_high = max(1, self.settings.max_output // 2)
        self._framer_cls = framer_class(self.settings.framing)

    # The single-worker view (worker 0), for a pool of one and for tests.

    @property
    def outbox(self) -> bytearray:
        return self.workers[0].outbox

    @outbox.setter
    def outbox(self, value: bytearray) -> None:
        self.workers[0].outbox = value

    @property
    def pipe_pending(self) -> int:
        return self.workers[0].pipe_pending

    @pipe_pending.setter
    def pipe_pending(self, value: int) -> None:
        self.workers[0].pipe_pending = value

    @property
    def backlog(self) -> deque[Client]:
        return self.workers[0].backlog

    @property
    def quarantine(self) -> Quarantine:
        return self.workers[0].quarantine

    @property
    def handler_up(self) -> bool:
        """Some handler process is up."""
        return any(w.up for w in self.workers)

    @property
    def owed(self) -> int:
        return sum(w.owed for w in self.workers)

    @property
    def hold(self) -> bool:
        return all(w.hold for w in self.workers)

    @hold.setter
    def hold(self, value: bool) -> None:
        """Hold (or release) every worker's clients' bytes (shutdown)."""
        for w in self.workers:
            w.hold = value

    # ------------------------------------------------------------ queries

    @property
    def outbox_size(self) -> int:
        return sum(len(w.outbox) for w in self.workers)

    def can_read(self, c: Client) -> bool:
        w = self.workers[c.worker]
        return (
            c.closing is None
            and c.buffer.room() > 0
            and len(c.out) < self._out_high
            and len(w.outbox) + w.pipe_pending < PIPE_HIGH_WATER
            and not self.stopping
        )

    @property
    def ever_connected(self) -> bool:
        return self._next_id > 1

    @property
    def pipe_full(self) -> bool:
        """Every worker's budget is spent: accepting waits (a new client
        goes to the least loaded worker, whose budget may have room)."""
        return all(_full(w) for w in self.workers)

    def worker_full(self, c: Client) -> bool:
        return _full(self.workers[c.worker])

    @property
    def held_bytes(self) -> int:
        """Bytes the core holds for the handlers: the outboxes, the writes in
        progress and every client's unconsumed buffer (the accounting the
        memory tests assert on)."""
        return (
            sum(len(w.outbox) + w.pipe_pending for w in self.workers)
            + sum(len(c.buffer) for c in self.clients.values())
        )

    def take_outbox(self, w: int = 0) -> bytearray:
        """Everything queued for worker `w`, handed over without a copy."""
        worker = self.workers[w]
        data = worker.outbox
        worker.outbox = bytearray()
        return data

    def oldest_owed(self, w: int = 0) -> float | None:
        """When worker `w`'s oldest data message still awaiting its reply was sent."""
        if not self.workers[w].owed:
            return None
        return min((c.sent_at for c in self.clients.values()
                    if c.worker == w and c.buffer.awaiting), default=None)

    # ------------------------------------------------------------ client side

    def connect(self, peer: tuple[str, int], local: tuple[str, int]) -> Client:
        framer = self._framer_cls() if self._framer_cls is not None else None
        c = Client(self._next_id, peer, local, self.settings, framer)
        self._next_id += 1
        self.clients[c.id] = c
        # Sticky: the worker with the fewest clients serves it for life.
        w = min(self.workers, key=_load)
        c.worker = w.index
        w.nclients += 1
        if w.up:
            self._queue(w, encode_connect(c.id, peer, local))
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
        """The client's socket is closed: forget it and tell its worker."""
        if self.clients.pop(c.id, None) is None:
            return
        w = self.workers[c.worker]
        w.nclients -= 1
        if c.closing is None:
            c.closing = reason
        if c.buffer.awaiting:
            w.owed -= 1
        if c.known and w.up:
            self._queue(w, encode_disconnect(c.id, reason))
        c.known = False
        self.touched.discard(c)
        self.channels.leave_all(c)
        if w.quarantine.forget(c):
            self._next_trial(w)

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

    def handler_started(self, index: int = 0) -> None:
        """A new process for worker `index` is up: greet it and replay its
        clients, paced through its byte budget."""
        s = self.settings
        w = self.workers[index]
        w.outbox = bytearray()
        w.lines = LineSplitter(MAX_HANDLER_LINE)
        w.up = True
        w.hold = self.stopping
        self._queue(
            w,
            encode_hello(
                tgate_version=__version__,
                framing=s.framing,
                bufsize=s.bufsize,
                max_bufsize=s.max_bufsize,
                update_time=s.update_time,
                worker=index,
                workers=len(self.workers),
            ),
        )
        mine = [c for c in self.clients.values() if c.worker == index and c.closing is None]
        for c in mine:
            # replay: this client connected before this process started
            self._queue(w, encode_connect(c.id, c.peer, c.local, replay=True))
            c.known = True
        if w.quarantine.on_trial is None:
            self._next_trial(w)
        for c in mine:
            self._forward(c)

    def handler_lost(self, index: int = 0, *, crashed: bool) -> list[Client]:
        """Worker `index`'s process is gone. Returns its clients quarantined
        because their bytes alone crashed too many handlers."""
        w = self.workers[index]
        w.up = False
        w.outbox = bytearray()
        w.pipe_pending = 0
        w.owed = 0
        for c in w.backlog:
            c.queued = False
        w.backlog.clear()
        mine = [c for c in self.clients.values() if c.worker == index]
        in_flight = [
            c for c in mine
            if c.closing is None
            and (c.buffer.awaiting or (c.framer is not None and c.frame_gen == w.output_gen))
        ]
        quarantined = w.quarantine.crashed(in_flight) if crashed else []
        for c in quarantined:
            self.close(c, "quarantined")
        for c in mine:
            c.buffer.rewind()
            c.known = False
            c.frame_gen = -1
        return quarantined

    def tick(self) -> None:
        for w in self.workers:
            if w.up:
                self._queue(w, TICK)

    def pump(self) -> None:
        """Forward the clients waiting for budget, while there is room."""
        for w in self.workers:
            backlog = w.backlog
            while backlog and not _full(w):
                c = backlog.popleft()
                c.queued = False
                if c.closing is None and c.id in self.clients:
                    self._forward(c)

    @property
    def backlogged(self) -> bool:
        return any(w.backlog for w in self.workers)

    def handler_output(self, chunk: bytes, index: int = 0) -> None:
        """Bytes read from worker `index`'s stdout."""
        w = self.workers[index]
        w.output_gen += 1
        lines = w.lines.feed(chunk)
        if w.lines.overlong:
            for size in w.lines.overlong:
                log.warning(
                    "handler line dropped: longer than %d bytes (%d bytes)", MAX_HANDLER_LINE, size
                )
            w.lines.overlong.clear()
        for line in lines:
            self.handler_line(line, index)
        if self._framer_cls is not None:
            # Framed: output after a client's frames means it survived them.
            q = w.quarantine
            for c in [q.on_trial, *q.struck] if q.struck else [q.on_trial]:
                if c is not None and 0 <= c.frame_gen < w.output_gen:
                    self._acquit(c)

    # ------------------------------------------------------------ internals

    def _queue(self, w: Worker, msg: bytes) -> None:
        w.outbox += msg
        self.metrics.messages_to_handler += 1

    def _forward(self, c: Client) -> None:
        w = self.workers[c.worker]
        if not w.up or c.closing is not None or w.hold:
            return
        if c.suspect and c is not w.quarantine.on_trial:
            return  # held until tried alone
        if len(w.outbox) + w.pipe_pending >= PIPE_HIGH_WATER:
            if not c.queued:
                c.queued = True
                w.backlog.append(c)
            return
        if c.framer is None:
            self._send_data(w, c)
        else:
            self._send_frames(w, c, c.framer)

    def _send_frames(self, w: Worker, c: Client, framer: Framer) -> None:
        b = c.buffer
        try:
            frames, used = framer.split(b.data, b.max_size)
        except FrameError as exc:
            # The frames before the bad bytes were fine: deliver them first.
            for payload in exc.frames:
                self._queue(w, encode_frame(c.id, payload))
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
            self._queue(w, encode_frame(c.id, payload))
        if frames:
            c.frame_gen = w.output_gen
        if b.eof and not b.eof_sent:
            rest = bytes(b.data)
            b.drop(len(rest))
            last = framer.tail(rest)
            if last is not None:
                self._queue(w, encode_frame(c.id, last))
                c.frame_gen = w.output_gen
            elif rest:
                log.info("client %d: incomplete %s frame of %d bytes dropped at EOF",
                         c.id, framer.name, len(rest))
            self._queue(w, encode_eof(c.id))
            b.eof_sent = True

    def _send_data(self, w: Worker, c: Client) -> None:
        msg = c.buffer.take_message()
        if msg is not None:
            self._queue(w, encode_data(c.id, msg[0], msg[1]))
            w.owed += 1
            c.sent_at = self.clock()

    def _has_input(self, c: Client) -> bool:
        b = c.buffer
        return len(b) > 0 or (b.eof and not b.eof_sent)

    def _next_trial(self, w: Worker) -> None:
        """Put worker `w`'s next suspect on trial: its bytes alone go to it."""
        q = w.quarantine
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
        w = self.workers[c.worker]
        was_trial = c is w.quarantine.on_trial
        w.quarantine.acquit(c)
        if was_trial:
            self._next_trial(w)

def _full(w: Worker) -> bool:
    """Its byte budget is spent."""
    return len(w.outbox) + w.pipe_pending >= PIPE_HIGH_WATER


def _load(w: Worker) -> int:
    return w.nclients


