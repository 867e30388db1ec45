"""What a handler's lines do to the gateway (sans-IO): writes, closes,
consumed replies, channel ops. Mixed into :class:`tgate.core.Core`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .framing import FrameError, Framer
from .protocol import (
    Close,
    Consumed,
    HandlerError,
    Invalid,
    Publish,
    Subscribe,
    Unsubscribe,
    Write,
    parse_line,
    quote,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .channels import Channels
    from .metrics import Metrics
    from .state import Client, Settings, Worker

log = logging.getLogger("tgate")

#: At most this many client ids are named in one "write dropped" log line.
_IDS_LOGGED = 5


class Replies:
    """Applies handler lines; Core provides the state and the actions."""

    if TYPE_CHECKING:
        settings: Settings
        metrics: Metrics
        clock: Callable[[], float]
        clients: dict[int, Client]
        workers: list[Worker]
        touched: set[Client]
        channels: Channels
        _next_id: int
        _framer_cls: type[Framer] | None

        def close(self, c: Client, reason: str, *, drop_output: bool = False) -> None: ...
        def _forward(self, c: Client) -> None: ...
        def _acquit(self, c: Client) -> None: ...

    def handler_line(self, line: bytes, index: int = 0) -> None:
        self.metrics.lines_from_handler += 1
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
            t = type(cmd)
            if t is Write:
                self._write(cmd, line)  # type: ignore[arg-type]
            elif t is Consumed:
                self._consumed(cmd, line, index)  # type: ignore[arg-type]
            elif t is Close:
                self._close(cmd, line)  # type: ignore[arg-type]
            elif t is Invalid:
                self._invalid(cmd, line)  # type: ignore[arg-type]
            elif t is Publish:
                self._publish(cmd, line)  # type: ignore[arg-type]
            else:
                self._subscription(cmd, line)  # type: ignore[arg-type]

    def _mine(self, cid: int, index: int) -> Client | None:
        """The client if worker `index` serves it and knows it."""
        c = self.clients.get(cid)
        if c is not None and c.known and c.worker == index:
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

    def _frame_out(self, data: bytes, raw: bool, line: bytes) -> bytes | None:
        if self._framer_cls is None or raw:
            return data
        try:
            return self._framer_cls.encode(data)
        except FrameError as exc:
            log.warning("handler line dropped: %s: %s", exc, quote(line))
            return None

    def _deliver(self, targets: list[Client], data: bytes) -> list[int]:
        """Queue `data` for each target; returns the ids it was refused to."""
        dropped = []
        touched = self.touched
        for c in targets:
            if c.closing == "closed" or c.closing == "slow":
                dropped.append(c.id)
                continue
            c.out += data
            touched.add(c)
        return dropped

    def _write(self, cmd: Write, line: bytes) -> None:
        # Any worker may write to any live client: the gateway owns the sockets.
        data = self._frame_out(cmd.data, cmd.raw, line)
        if data is None:
            return
        clients = self.clients
        ids = cmd.ids
        if len(ids) == 1:  # the common reply: no lists, no extra call
            c = clients.get(ids[0])
            if c is not None and c.closing != "closed" and c.closing != "slow":
                c.out += data
                self.touched.add(c)
                return
        closed: list[int] = []
        never: list[int] = []
        targets: list[Client] = []
        for cid in ids:
            c = clients.get(cid)
            if c is None:
                (closed if 0 < cid < self._next_id else never).append(cid)
            else:
                targets.append(c)
        dropped = self._deliver(targets, data)
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

    def _publish(self, cmd: Publish, line: bytes) -> None:
        data = self._frame_out(cmd.data, cmd.raw, line)
        if data is None:
            return
        self.metrics.publishes += 1
        members = self.channels.members(cmd.channel)
        if members:
            self._deliver([c for c in members if c.id != cmd.exclude], data)

    def _subscription(self, cmd: Subscribe | Unsubscribe, line: bytes) -> None:
        c = self.clients.get(cmd.id)
        if c is None:
            self._unknown(cmd.id, line, "subscribe" if type(cmd) is Subscribe else "unsubscribe")
        elif type(cmd) is Unsubscribe:
            self.channels.leave(c, cmd.channel)
        elif not self.channels.join(c, cmd.channel):
            log.warning("handler subscribe dropped: client %d is in %d channels already "
                        "(--max-channels-per-client): %s", c.id, len(c.channels), quote(line))

    def _consumed(self, cmd: Consumed, line: bytes, index: int = 0) -> None:
        if self._framer_cls is not None:
            log.warning("handler line dropped: consumed is only for --framing raw: %s",
                        quote(line))
            return
        c = self._mine(cmd.id, index)
        if c is None:
            other = self.clients.get(cmd.id)
            if other is not None and other.worker != index:
                log.warning("handler line dropped: consumed for client %d from worker %d, but "
                            "worker %d serves it: %s", cmd.id, index, other.worker, quote(line))
            else:
                self._unknown(cmd.id, line, "consumed")
            return
        w = self.workers[index]
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
            w.owed -= 1
            self.metrics.observe_latency(self.clock() - c.sent_at)
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
        c = self.clients.get(cmd.id)
        if c is None:
            log.warning("handler line dropped: %s: %s", cmd.error, quote(line))
            return
        log.warning("handler line dropped: client %d: %s; disconnecting it (error): %s",
                    cmd.id, cmd.error, quote(line))
        self.close(c, "error")

    def _close(self, cmd: Close, line: bytes) -> None:
        c = self.clients.get(cmd.id)
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
