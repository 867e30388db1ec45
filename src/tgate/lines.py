"""Newline splitting that never scans a byte twice (sans-IO)."""

from __future__ import annotations


class LineSplitter:
    """Turns a byte stream into complete lines (without the ``\\n``).

    Only newly fed bytes are searched: a partial line is kept aside and joined
    once its end arrives, never searched again. A line longer than
    ``max_line`` is not kept: its bytes are counted and discarded up to the
    next newline, and it is reported once through ``overlong``.
    """

    __slots__ = ("_discarding", "_max_line", "_partial", "overlong")

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._partial = bytearray()
        self._discarding = 0  # bytes of an overlong line discarded so far
        #: lengths (at least) of overlong lines dropped since last cleared
        self.overlong: list[int] = []

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        parts = data.split(b"\n")
        tail = parts.pop()  # after the last newline: incomplete (maybe empty)
        if parts:
            head = parts[0]
            if self._discarding:
                self.overlong.append(self._discarding + len(head))
                self._discarding = 0
                del parts[0]
            elif self._partial:
                self._partial += head
                if len(self._partial) > self._max_line:
                    self.overlong.append(len(self._partial))
                    del parts[0]
                else:
                    parts[0] = bytes(self._partial)
                self._partial = bytearray()
            if self._max_line < len(data):
                keep = []
                for line in parts:
                    if len(line) > self._max_line:
                        self.overlong.append(len(line))
                    else:
                        keep.append(line)
                parts = keep
        if self._discarding:
            self._discarding += len(tail)
        else:
            self._partial += tail
            if len(self._partial) > self._max_line:
                self._discarding = len(self._partial)
                self._partial = bytearray()
        return parts
