"""One client's receive buffer, with neko.net.ServerLoop's semantics (sans-IO).

The buffer holds every byte the handler has not consumed yet. It starts at
``bufsize`` bytes of room, doubles when a read fills it, and never holds more
than ``max_bufsize`` bytes. Bytes are forwarded to the handler in ``data``
messages; at most one message per client awaits its ``consumed`` reply, and
bytes that arrive meanwhile are sent together in the next one.

Because nothing is dropped until the handler says it consumed it, a new
handler process can be replayed everything that was in flight (:meth:`rewind`).
"""

from __future__ import annotations

from .protocol import HandlerError

DEFAULT_BUFSIZE = 128
MAX_BUFSIZE = 1 << 16


class ClientBuffer:
    __slots__ = ("_buf", "awaiting", "capacity", "eof", "eof_sent", "max_size", "seen")

    def __init__(self, bufsize: int = DEFAULT_BUFSIZE, max_bufsize: int = MAX_BUFSIZE) -> None:
        if not 0 < bufsize <= max_bufsize:
            raise ValueError(f"need 0 < bufsize ({bufsize}) <= max_bufsize ({max_bufsize})")
        self._buf = bytearray()
        self.capacity = bufsize
        self.max_size = max_bufsize
        #: how many bytes at the front of the buffer the handler has been sent
        self.seen = 0
        #: a data message is waiting for its consumed reply
        self.awaiting = False
        #: the client half-closed; eof_sent: the handler has been told
        self.eof = False
        self.eof_sent = False

    def __len__(self) -> int:
        return len(self._buf)

    def __bytes__(self) -> bytes:
        return bytes(self._buf)

    def room(self) -> int:
        """How many bytes the next read may take (0: do not read)."""
        if self.eof:
            return 0
        return self.capacity - len(self._buf)

    def feed(self, data: bytes | memoryview) -> None:
        """Append bytes read from the client. Taking more than room() is a bug."""
        if len(data) > self.room():
            raise RuntimeError(f"read of {len(data)} bytes exceeds room {self.room()}")
        self._buf += data
        if len(self._buf) == self.capacity and self.capacity < self.max_size:
            self.capacity = min(self.capacity * 2, self.max_size)

    @property
    def data(self) -> bytearray:
        """The held bytes (for framers to search; do not modify)."""
        return self._buf

    def drop(self, n: int) -> None:
        """Framed modes: the first n bytes were sent as frames."""
        if n == len(self._buf):
            self._buf = bytearray()
        else:
            del self._buf[:n]

    def feed_eof(self) -> None:
        self.eof = True

    def take_message(self) -> tuple[bytes, bool] | None:
        """The next ``data`` message as (new bytes, eof flag), or None when a
        reply is still awaited or there is nothing new to say."""
        if self.awaiting:
            return None
        buf = self._buf
        if self.seen == len(buf):
            if not self.eof or self.eof_sent:
                return None
            chunk = b""
        else:
            chunk = bytes(buf) if self.seen == 0 else bytes(buf[self.seen :])
            self.seen = len(buf)
        self.awaiting = True
        if self.eof:
            self.eof_sent = True
        return chunk, self.eof_sent

    def consume(self, n: int) -> None:
        """Apply the handler's reply to the awaited data message.

        Raises HandlerError (and changes nothing) when no reply was awaited or
        ``n`` is negative or more than the handler was sent.
        """
        if not self.awaiting:
            raise HandlerError("consumed without a data message awaiting a reply")
        if not 0 <= n <= self.seen:
            raise HandlerError(f"consumed n={n} but the handler holds {self.seen} bytes")
        self.awaiting = False
        if n == len(self._buf):
            self._buf = bytearray()  # let an emptied buffer's memory go
        elif n:
            del self._buf[:n]
        self.seen -= n

    @property
    def finished(self) -> bool:
        """The client sent EOF and the handler answered its last data."""
        return self.eof_sent and not self.awaiting

    def rewind(self) -> None:
        """The handler is gone: whatever it was sent must be sent again."""
        self.seen = 0
        self.awaiting = False
        self.eof_sent = False
