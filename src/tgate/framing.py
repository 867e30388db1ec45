"""Built-in framers for --framing (sans-IO).

In a framed mode tgate splits each client's byte stream into frames and sends
the handler one ``frame`` message per complete frame, so the handler never
counts bytes; what the handler writes is framed the same way on its way out.

Every framer finds frame boundaries without scanning a byte twice: the line
framer remembers how far it searched, the length-prefixed ones read a header
and jump.
"""

from __future__ import annotations

import struct
from typing import ClassVar

FRAMINGS = ("raw", "line", "crlf", "packet2", "packet4", "netstring")


class FrameError(Exception):
    """The client's bytes cannot be frames in this framing (remote error).

    ``frames`` holds the complete frames found before the bad bytes: they
    were valid and are still delivered.
    """

    frames: list[bytes] = []  # noqa: RUF012 - replaced per instance by split()


class FrameTooLarge(FrameError):
    """A frame announced or accumulated beyond max_bufsize."""


class Framer:
    """Per-client frame splitter and writer."""

    __slots__ = ()
    name: ClassVar[str]

    def split(self, buf: bytearray, max_size: int) -> tuple[list[bytes], int]:
        """Complete frames at the front of ``buf`` (payloads only) and how
        many bytes of ``buf`` they used. ``buf`` is not modified; the caller
        drops the used bytes and calls again only with more bytes appended.
        Raises FrameTooLarge when the next frame cannot fit in max_size
        bytes, FrameError when the bytes are not valid frames; either way
        the exception's ``frames`` are the valid frames before the bad bytes."""
        frames: list[bytes] = []
        try:
            used = self._split(buf, max_size, frames)
        except FrameError as exc:
            exc.frames = frames
            raise
        return frames, used

    def _split(self, buf: bytearray, max_size: int, frames: list[bytes]) -> int:
        """Append complete frames to ``frames``; return the bytes used."""
        raise NotImplementedError

    def tail(self, rest: bytes) -> bytes | None:
        """At EOF, what to do with an incomplete last frame: a payload to
        deliver, or None to drop it."""
        return None

    @staticmethod
    def encode(payload: bytes) -> bytes:
        """Frame bytes the handler writes. Raises FrameError if impossible."""
        raise NotImplementedError


class LineFramer(Framer):
    """Frames end with LF. A CR before the LF is stripped, so clients that
    send CRLF (telnet, nc -C, most text protocols) give the same frames.
    Writes get LF appended. An unterminated last line is still delivered at
    EOF."""

    __slots__ = ("_scanned",)
    name = "line"
    ending = b"\n"

    def __init__(self) -> None:
        self._scanned = 0  # bytes of the held partial line already searched

    def _split(self, buf: bytearray, max_size: int, frames: list[bytes]) -> int:
        end = buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(buf)
            if len(buf) >= max_size:
                raise FrameTooLarge(f"line longer than {max_size} bytes")
            return 0
        start = 0
        while end >= 0:
            if end - start >= max_size:
                raise FrameTooLarge(f"line longer than {max_size} bytes")
            stop = end - 1 if end > start and buf[end - 1] == 13 else end
            frames.append(bytes(buf[start:stop]))
            start = end + 1
            end = buf.find(b"\n", start)
        self._scanned = len(buf) - start
        if self._scanned >= max_size:
            raise FrameTooLarge(f"line longer than {max_size} bytes")
        return start

    def tail(self, rest: bytes) -> bytes | None:
        if not rest:
            return None
        return rest[:-1] if rest.endswith(b"\r") else rest

    @classmethod
    def encode(cls, payload: bytes) -> bytes:
        return payload + cls.ending


class CrlfFramer(LineFramer):
    """As ``line`` on input; writes get CR LF appended (for protocols that
    require CRLF line ends, such as SMTP, POP3, IRC)."""

    __slots__ = ()
    name = "crlf"
    ending = b"\r\n"


class PacketFramer(Framer):
    """A big-endian length prefix of 2 or 4 bytes before each payload
    (Erlang's {packet,2} and {packet,4}); writes get the same prefix."""

    __slots__ = ()
    size: ClassVar[int]
    fmt: ClassVar[str]

    def _split(self, buf: bytearray, max_size: int, frames: list[bytes]) -> int:
        pos = 0
        have = len(buf)
        size = self.size
        while have - pos >= size:
            (n,) = struct.unpack_from(self.fmt, buf, pos)
            if size + n > max_size:
                raise FrameTooLarge(f"frame of {n} bytes announced; max-bufsize is {max_size}")
            if have - pos - size < n:
                break
            frames.append(bytes(buf[pos + size : pos + size + n]))
            pos += size + n
        return pos

    @classmethod
    def encode(cls, payload: bytes) -> bytes:
        if len(payload) >= 1 << (8 * cls.size):
            raise FrameError(f"{len(payload)} bytes do not fit a {cls.size}-byte length prefix")
        return struct.pack(cls.fmt, len(payload)) + payload


class Packet2Framer(PacketFramer):
    __slots__ = ()
    name = "packet2"
    size = 2
    fmt = ">H"


class Packet4Framer(PacketFramer):
    __slots__ = ()
    name = "packet4"
    size = 4
    fmt = ">I"


#: More digits than this cannot be a length we would accept anyway.
_NETSTRING_MAX_DIGITS = 10


class NetstringFramer(Framer):
    """D. J. Bernstein's netstrings: ``<decimal length>:<payload>,``."""

    __slots__ = ()
    name = "netstring"

    def _split(self, buf: bytearray, max_size: int, frames: list[bytes]) -> int:
        pos = 0
        have = len(buf)
        while pos < have:
            colon = buf.find(b":", pos, pos + _NETSTRING_MAX_DIGITS + 1)
            if colon < 0:
                digits = bytes(buf[pos : pos + _NETSTRING_MAX_DIGITS + 1])
                if not digits.isdigit() or len(digits) > _NETSTRING_MAX_DIGITS:
                    raise FrameError(f"not a netstring length: {digits[:20]!r}")
                break
            digits = bytes(buf[pos:colon])
            if not digits.isdigit() or (len(digits) > 1 and digits[0] == 48):
                raise FrameError(f"not a netstring length: {digits!r}")
            n = int(digits)
            if colon + 1 + n + 1 - pos > max_size:
                raise FrameTooLarge(f"netstring of {n} bytes; max-bufsize is {max_size}")
            end = colon + 1 + n
            if end >= have:
                break
            if buf[end] != 44:  # ","
                raise FrameError(f"netstring of {n} bytes not followed by ','")
            frames.append(bytes(buf[colon + 1 : end]))
            pos = end + 1
        return pos

    @staticmethod
    def encode(payload: bytes) -> bytes:
        return b"%d:%s," % (len(payload), payload)


_FRAMERS: dict[str, type[Framer]] = {
    f.name: f for f in (LineFramer, CrlfFramer, Packet2Framer, Packet4Framer, NetstringFramer)
}


def framer_class(name: str) -> type[Framer] | None:
    """The framer for a --framing value; None for raw. ValueError if unknown."""
    if name == "raw":
        return None
    try:
        return _FRAMERS[name]
    except KeyError:
        raise ValueError(f"unknown framing {name!r}; choose from {', '.join(FRAMINGS)}") from None
