"""Readiness of many client sockets, awaited by trio as one file descriptor.

trio's own wait_readable() re-arms its epoll registration (an epoll_ctl
call) and schedules a task on every wait: per message, for a gateway. The
gateway instead keeps its client sockets in a level-triggered epoll set of
its own, registered once, and one trio task waits for that set's fd and
handles every ready socket in one pass. Interest changes (stop reading a
client under backpressure, watch for writability while its output is
blocked) are the only epoll_ctl calls, and they are rare.

On systems without epoll, a kqueue selector does the same, more slowly.
"""

from __future__ import annotations

import select
import selectors

READ = 1
WRITE = 2
#: As an interest: keep the fd registered for errors and hang-ups even with
#: neither READ nor WRITE (a paused socket, one after the client's EOF). As
#: a readiness bit: the peer reset or is gone.
HUP = 4


class Poller:
    __slots__ = ("_ep", "_sel")

    def __init__(self) -> None:
        self._ep: select.epoll | None = None
        self._sel: selectors.BaseSelector | None = None
        if hasattr(select, "epoll"):
            self._ep = select.epoll()
        else:  # pragma: no cover - not Linux
            self._sel = selectors.DefaultSelector()
            if not hasattr(self._sel, "fileno"):
                raise RuntimeError("tgate needs epoll or kqueue")

    def fileno(self) -> int:
        if self._ep is not None:
            return self._ep.fileno()
        fd: int = self._sel.fileno()  # type: ignore[union-attr]  # pragma: no cover
        return fd  # pragma: no cover

    def set(self, fd: int, old: int, new: int) -> None:
        """Change the interest in ``fd`` from mask ``old`` to ``new`` (0: none)."""
        if old == new:
            return
        if self._ep is not None:
            if not new:
                self._ep.unregister(fd)
                return
            # EPOLLERR and EPOLLHUP are always reported, even with no flags.
            flags = (select.EPOLLIN | select.EPOLLRDHUP if new & READ else 0) | (
                select.EPOLLOUT if new & WRITE else 0
            )
            if old:
                self._ep.modify(fd, flags)
            else:
                self._ep.register(fd, flags)
            return
        assert self._sel is not None  # pragma: no cover
        # Selectors cannot watch for hang-ups alone: HUP-only means unwatched.
        old &= READ | WRITE  # pragma: no cover
        new &= READ | WRITE  # pragma: no cover
        events = (selectors.EVENT_READ if new & READ else 0) | (  # pragma: no cover
            selectors.EVENT_WRITE if new & WRITE else 0
        )
        if old == new:  # pragma: no cover
            return
        if not new:  # pragma: no cover
            self._sel.unregister(fd)
        elif old:  # pragma: no cover
            self._sel.modify(fd, events)
        else:  # pragma: no cover
            self._sel.register(fd, events)

    def poll(self) -> list[tuple[int, int]]:
        """Ready (fd, READ|WRITE) pairs, without blocking. An error or hang-up
        reports both, so that the next recv or send says what happened."""
        if self._ep is not None:
            out = []
            for fd, ev in self._ep.poll(0, 1024):
                mask = 0
                if ev & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                    mask = READ
                if ev & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                    mask |= WRITE
                if ev & (select.EPOLLHUP | select.EPOLLERR):
                    mask |= HUP
                out.append((fd, mask))
            return out
        assert self._sel is not None  # pragma: no cover
        return [  # pragma: no cover
            (key.fd, (READ if ev & selectors.EVENT_READ else 0)
             | (WRITE if ev & selectors.EVENT_WRITE else 0))
            for key, ev in self._sel.select(0)
        ]

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
        elif self._sel is not None:  # pragma: no cover
            self._sel.close()
