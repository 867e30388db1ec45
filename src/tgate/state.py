"""The state the core keeps: its settings, one client, one worker of the
pool (sans-IO, no behaviour beyond bookkeeping)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .buffer import DEFAULT_BUFSIZE, MAX_BUFSIZE, ClientBuffer
from .framing import Framer, framer_class
from .lines import LineSplitter
from .protocol import MAX_HANDLER_LINE
from .quarantine import Quarantine

DEFAULT_MAX_OUTPUT = 1 << 20
DEFAULT_QUARANTINE_AFTER = 3
DEFAULT_MAX_CHANNELS_PER_CLIENT = 64
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
    #: handler processes in the pool
    workers: int = 1
    #: a subscribe past this many channels for one client is refused
    max_channels_per_client: int = DEFAULT_MAX_CHANNELS_PER_CLIENT

    def __post_init__(self) -> None:
        if not 0 < self.bufsize <= self.max_bufsize:
            raise ValueError("need 0 < bufsize <= max_bufsize")
        if self.max_output <= 0 or self.update_time <= 0:
            raise ValueError("max_output and update_time must be positive")
        if self.quarantine_after < 0:
            raise ValueError("quarantine_after must be >= 0")
        if self.workers < 1 or self.max_channels_per_client < 1:
            raise ValueError("workers and max_channels_per_client must be positive")
        framer_class(self.framing)  # ValueError if unknown


class Client:
    """One connected client as the core sees it."""

    __slots__ = (
        "buffer", "channels", "closing", "frame_gen", "framer", "id", "io", "known", "local", "out",
        "peer", "queued", "sent_at", "strikes", "suspect", "worker",
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
        #: the index of the worker that serves it
        self.worker = 0
        #: the channels it is subscribed to
        self.channels: set[str] = set()

    def __repr__(self) -> str:
        return f"<client {self.id} {self.peer[0]}:{self.peer[1]}>"


class Worker:
    """The core's side of one handler process of the pool: what is queued
    for its stdin (its own byte budget), what it owes, its output stream."""

    __slots__ = ("backlog", "hold", "index", "lines", "nclients", "outbox", "output_gen", "owed",
                 "pipe_pending", "quarantine", "up")

    def __init__(self, index: int, quarantine_after: int) -> None:
        self.index = index
        #: what the handler's stdin has still to receive
        self.outbox = bytearray()
        #: bytes taken from the outbox that the handler's stdin has not accepted yet
        self.pipe_pending = 0
        #: clients with bytes to forward once the budget has room, in order
        self.backlog: deque[Client] = deque()
        self.up = False
        #: its clients with a data message awaiting the consumed reply
        self.owed = 0
        #: keep its clients' bytes in their buffers (it is being replaced)
        self.hold = False
        #: clients assigned to it
        self.nclients = 0
        self.quarantine = Quarantine(quarantine_after)
        self.lines = LineSplitter(MAX_HANDLER_LINE)
        #: counts chunks of its output (framed modes: what is in flight)
        self.output_gen = 0
