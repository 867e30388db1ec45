"""Channels: named groups of clients that a handler publishes to without
knowing who is in them (sans-IO). They live in the gateway, so they span
every worker of a pool and survive a worker's crash or reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Client


class Channels:
    __slots__ = ("_members", "limit")

    def __init__(self, limit: int) -> None:
        #: most channels one client may be in
        self.limit = limit
        # Dicts keep insertion order: subscribers get a publish in the order
        # they joined, which keeps runs repeatable.
        self._members: dict[str, dict[Client, None]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def members(self, channel: str) -> list[Client]:
        group = self._members.get(channel)
        return list(group) if group else []

    def join(self, c: Client, channel: str) -> bool:
        """Subscribe `c`; False when it is in `limit` channels already."""
        if channel in c.channels:
            return True
        if len(c.channels) >= self.limit:
            return False
        c.channels.add(channel)
        self._members.setdefault(channel, {})[c] = None
        return True

    def leave(self, c: Client, channel: str) -> None:
        if channel not in c.channels:
            return
        c.channels.discard(channel)
        group = self._members[channel]
        del group[c]
        if not group:
            del self._members[channel]

    def leave_all(self, c: Client) -> None:
        for channel in list(c.channels):
            self.leave(c, channel)
