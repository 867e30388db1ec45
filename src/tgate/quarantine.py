"""Finding the client whose bytes crash the handler (sans-IO).

A crash with several clients' bytes in flight says only that one of them may
be guilty. Blaming them all (as a plain strike count does) quarantines
innocent clients that happened to be sending at the time, and the replay puts
every one of them in flight again at the next crash. Instead:

- A crash with exactly one client in flight is a strike against it; at
  ``limit`` strikes it is quarantined (disconnected, reason ``quarantined``).
- A crash with several in flight makes each of them a *suspect*, and nobody
  gets a strike. Suspects are held (their bytes stay in tgate's buffers) and
  tried one at a time: the client *on trial* alone among the suspects has its
  bytes sent to the handler. If the handler answers them (a ``consumed``; in
  framed modes, any output after its frames), the client is acquitted and the
  next suspect goes on trial. If the handler crashes with only the trial's
  bytes in flight, that is a strike, and the same client stays on trial.
- Clients that are not suspects are never held. If one of them is in flight
  with the trial at a crash, both are suspects again and no strike is counted.

So a client is quarantined only when its own bytes alone crashed the handler
``limit`` times in a row, and an innocent client costs at most a few replays
of waiting (raw mode replays exactly once: it never loses or repeats a byte).
A reply to any of a client's data resets its strikes.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Client


class Quarantine:
    __slots__ = ("limit", "on_trial", "struck", "suspects")

    def __init__(self, limit: int) -> None:
        #: strikes that quarantine a client (0: never quarantine, never hold)
        self.limit = limit
        self.suspects: deque[Client] = deque()
        #: the suspect whose bytes alone may go to the handler now
        self.on_trial: Client | None = None
        #: clients with strikes (framed modes: acquitted by output after their frames)
        self.struck: set[Client] = set()

    def crashed(self, in_flight: list[Client]) -> list[Client]:
        """A handler crashed with these clients' bytes in flight. Returns
        the clients to quarantine."""
        if not self.limit or not in_flight:
            return []
        if len(in_flight) == 1:
            c = in_flight[0]
            c.strikes += 1
            if c.strikes < self.limit:
                self.struck.add(c)
                return []
            self.struck.discard(c)
            c.suspect = False
            if c is self.on_trial:
                self.on_trial = None
            return [c]
        trial = self.on_trial
        for c in in_flight:
            if c is trial:
                # Not alone after all: back to the front of the queue.
                self.on_trial = None
                self.suspects.appendleft(c)
            elif not c.suspect:
                c.suspect = True
                self.suspects.append(c)
        return []

    def next_suspect(self) -> Client | None:
        while self.suspects:
            c = self.suspects.popleft()
            if c.suspect:
                return c
        return None

    def acquit(self, c: Client) -> None:
        """The handler survived `c`'s bytes (or `c` has none left to try)."""
        c.suspect = False
        c.strikes = 0
        self.struck.discard(c)
        if c is self.on_trial:
            self.on_trial = None

    def forget(self, c: Client) -> bool:
        """`c` is gone. True when it was on trial (the next one's turn)."""
        c.suspect = False
        self.struck.discard(c)
        if c is self.on_trial:
            self.on_trial = None
            return True
        return False
