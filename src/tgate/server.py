"""The gateway: the listener, the timers, the shutdown, and the hook that
carries out what the core decided, around the core (core.py), the client
sockets (clients.py) and the handler link (link.py), all in one trio loop.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from . import logs, observe
from .clients import ClientIO, Conn
from .core import Core, Settings
from .guardian import Guardian
from .link import READY_WINDOW, HandlerLink
from .waits import Changes, Wake

log = logging.getLogger("tgate")

#: ServerLoop's listenCount is 10, but on Linux a burst of a hundred connects
#: then gets connections reset; 511 is Redis's and nginx's default backlog.
DEFAULT_LISTEN_COUNT = 511
#: Redis's maxclients default; raise it for more (the fd limit is raised to match).
DEFAULT_MAX_CLIENTS = 10000
#: After an accept error like EMFILE, wait this long before accepting again.
ACCEPT_ERROR_BACKOFF = 0.1
#: Accept at most this many connections in a row before letting others run.
ACCEPT_BATCH = 64
#: A rolling reload moves on from a worker not replaced within its
#: --shutdown-grace plus its start plus this.
ROLLING_RELOAD_SLACK = 5.0
#: When this many clients have left since the peak, return freed memory.
TRIM_AFTER_LEAVING = 1000
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True, slots=True)
class Options:
    handler: list[str]
    host: str = "127.0.0.1"
    port: int = 7000
    listen_count: int = DEFAULT_LISTEN_COUNT
    #: kill and restart a handler that owes a reply this long, or does not
    #: read its stdin this long (0: never)
    handler_timeout: float = 10.0
    #: at shutdown or reload, how long the handler may take to answer what it owes
    shutdown_grace: float = 5.0
    #: on a handler crash: "keep" the clients (replay) or "disconnect" them
    on_crash: str = "keep"
    #: at this many clients, new connections wait in the listen backlog
    max_clients: int = DEFAULT_MAX_CLIENTS
    #: connections from one peer address beyond this are closed at once (0: no limit)
    max_clients_per_ip: int = 0
    #: close clients that sent nothing for this many seconds (0: never)
    idle_timeout: float = 0.0
    #: serve /metrics and /status on this address (None: no such listener)
    metrics: tuple[str, int] | None = None
    #: on SIGINT/SIGTERM, stop accepting at once but keep serving the
    #: connected clients this long before closing them (0: no drain)
    drain_timeout: float = 0.0


def _malloc_trim() -> None:
    # A full collection also empties the interpreter's free lists, whose
    # cached objects would otherwise pin half-empty arenas.
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class ListenError(Exception):
    """The listening socket cannot be set up (address in use, bad host...)."""


class Gateway:
    """Accepts clients, runs the handler, and moves bytes between them.

    ``serve()`` runs until ``stop()`` is called (then it shuts down in order:
    see docs/protocol.md; it returns within --shutdown-grace plus the
    handler's stop grace) or raises HandlerStartError when the handler
    command cannot run at all. ``abort()`` ends it at once. Sockets and
    handler processes are always released when it returns, whatever the
    exit path.
    """

    def __init__(self, options: Options, settings: Settings | None = None) -> None:
        self.options = options
        self.core = Core(settings, clock=trio.current_time)
        self._slot_free = Wake()
        self._room = Wake()
        self.clients = ClientIO(self.core, options, self._after, self._slot_free)
        self._changes = Changes()
        self._stop_requested = trio.Event()
        self._supervisor_done = trio.Event()
        self._serve_scope: trio.CancelScope | None = None
        #: set when serve() has returned, whatever the exit path
        self.stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        o = options
        self.guardian = Guardian()
        #: one handler link per worker of the pool
        self.links = [
            HandlerLink(
                self.core, o.handler, index=i, guardian=self.guardian,
                handler_timeout=o.handler_timeout, shutdown_grace=o.shutdown_grace,
                on_crash=o.on_crash, after=self._after, changes=self._changes,
            )
            for i in range(len(self.core.workers))
        ]
        self._running = 0  # links whose supervisor has not returned
        #: the counters behind /metrics (the core updates most of them)
        self.metrics = self.core.metrics
        #: set while a SIGTERM's drain runs (see --drain-timeout)
        self.draining = False
        self.started_at = time.time()
        #: where /metrics is served, once it is (port 0 picks one)
        self.metrics_address: tuple[str, int] | None = None
        self._reloading = False

    @property
    def conns(self) -> set[Conn]:
        """The connected clients' I/O state."""
        return self.clients.conns

    @property
    def link(self) -> HandlerLink:
        """Worker 0's link (the only one in a pool of one)."""
        return self.links[0]

    @property
    def restarts(self) -> int:
        return sum(link.restarts for link in self.links)

    @property
    def crashes(self) -> int:
        return sum(link.crashes for link in self.links)

    @property
    def handler_pid(self) -> int | None:
        """pid of worker 0's running handler process, if any"""
        return self.links[0].pid

    @property
    def handler_pids(self) -> list[int | None]:
        """Each worker's running handler process, by index."""
        return [link.pid for link in self.links]

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Begin an orderly shutdown (SIGINT/SIGTERM): after the drain, if
        any, no handler is restarted."""
        if not self.options.drain_timeout:
            for link in self.links:
                link.stopping()
        self._stop_requested.set()

    def abort(self) -> None:
        """Stop now (a second SIGINT/SIGTERM): handler groups SIGKILLed,
        clients closed without waiting for their output."""
        for link in self.links:
            link.stopping()
            link.kill_all()
        self._stop_requested.set()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    def reload(self) -> None:
        """Replace the handlers with freshly started ones (SIGHUP): one
        worker at a time, so that N-1 of them serve throughout."""
        if len(self.links) == 1:
            self.links[0].reload()
        elif not self._reloading and self._nursery is not None:
            self._reloading = True
            self._nursery.start_soon(self._rolling_reload)

    async def _rolling_reload(self) -> None:
        # A worker whose command cannot start is in its crash backoff: give
        # each worker a bounded time, so one broken worker cannot hold the
        # reload of the others.
        per_worker = self.options.shutdown_grace + READY_WINDOW + ROLLING_RELOAD_SLACK
        try:
            for link in self.links:
                if self._stop_requested.is_set():
                    return
                with trio.move_on_after(per_worker) as scope:
                    await link.reload().wait()
                if scope.cancelled_caught:
                    log.warning("reload: worker %d not replaced within %.1f s; going on with "
                                "the next one", link.index, per_worker)
        finally:
            self._reloading = False

    # ------------------------------------------------------------ main

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        lsock = self._listen()
        try:
            with trio.CancelScope() as self._serve_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.guardian.start()
                    for link in self.links:
                        await nursery.start(self._supervise, link, nursery)
                    accept_scope = trio.CancelScope()
                    nursery.start_soon(self._accept_loop, lsock, accept_scope)
                    self.clients.nursery = nursery
                    nursery.start_soon(self.clients.poll_loop)
                    nursery.start_soon(self._ticker)
                    if self.options.idle_timeout > 0:
                        nursery.start_soon(self._idle_sweeper)
                    if self.options.metrics is not None:
                        host, port = self.options.metrics
                        try:
                            self.metrics_address = await nursery.start(
                                observe.serve_metrics, self, host, port)
                        except OSError as exc:
                            raise ListenError(f"cannot serve metrics on {host}:{port}: "
                                              f"{exc.strerror or exc}") from None
                    task_status.started(lsock.getsockname()[:2])
                    await self._stop_requested.wait()
                    accept_scope.cancel()
                    if self.options.drain_timeout:
                        await self._drain(lsock)
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            lsock.close()
            self._nursery = None
            self.clients.close()
            for link in self.links:
                await link.close()
            self.guardian.close()
            self.stopped.set()

    async def _supervise(self, link: HandlerLink, nursery: trio.Nursery,
                         task_status: Any) -> None:
        self._running += 1
        try:
            await link.run(nursery, task_status)
        finally:
            self._running -= 1
            if not self._running:
                self._supervisor_done.set()

    def _listen(self) -> socket.socket:
        o = self.options
        try:
            infos = socket.getaddrinfo(
                o.host, o.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, type_, proto, _, addr = infos[0]
            lsock = socket.socket(family, type_, proto)
        except OSError as exc:
            raise ListenError(f"cannot listen on {o.host}:{o.port}: {exc}") from None
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(addr)
            lsock.listen(o.listen_count)
            lsock.setblocking(False)
        except OSError as exc:
            lsock.close()
            raise ListenError(f"cannot listen on {o.host}:{o.port}: {exc.strerror}") from None
        return lsock

    # ------------------------------------------------------------ clients

    async def _accept_loop(self, lsock: socket.socket, scope: trio.CancelScope) -> None:
        core = self.core
        o = self.options
        with scope:
            while True:
                if o.max_clients and len(self.conns) >= o.max_clients:
                    log.warning("at --max-clients %d: new connections wait in the backlog",
                                o.max_clients)
                    while len(self.conns) >= o.max_clients:
                        await self._slot_free.wait()
                    log.info("below --max-clients again: accepting")
                # A connect is bytes for the handler too: new connections
                # wait in the backlog while its budget is spent.
                while core.pipe_full:
                    await self._room.wait()
                await wait_readable(lsock)
                for _ in range(ACCEPT_BATCH):
                    if (o.max_clients and len(self.conns) >= o.max_clients) or core.pipe_full:
                        break
                    try:
                        sock, _addr = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        # ServerLoop died on accept errors; we log and carry on.
                        level = (
                            logging.ERROR
                            if exc.errno in _ACCEPT_RESOURCE_ERRORS
                            else logging.WARNING
                        )
                        log.log(level, "accept failed: %s; retrying in %.1f s", exc,
                                ACCEPT_ERROR_BACKOFF)
                        await trio.sleep(ACCEPT_ERROR_BACKOFF)
                        break
                    self.clients.add(sock)
                self._after()
                await checkpoint()

    # ------------------------------------------------------------ plumbing

    def _after(self) -> None:
        """Carry out what the core decided; called after every core event."""
        core = self.core
        if core.backlogged:
            core.pump()
        for link in self.links:
            if link.w.outbox:
                link.write_now()
        while core.touched:
            touched = core.touched
            core.touched = set()
            for c in touched:
                self.clients.service(c)
        if not core.pipe_full:  # some worker has room
            if self.clients.parked:
                self.clients.wake_parked()
            self._room.wake()
        self._changes.pulse()

    async def _idle_sweeper(self) -> None:
        timeout = self.options.idle_timeout
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            cutoff = trio.current_time() - timeout
            for conn in list(self.conns):
                c = conn.client
                if conn.last_read <= cutoff and c.closing is None:
                    log.info("client %d disconnected (idle): silent for %.1f s", c.id, timeout)
                    self.core.close(c, "idle")
            self._after()

    async def _ticker(self) -> None:
        peak = 0
        while True:
            await trio.sleep(self.core.settings.update_time)
            self.core.tick()
            self._after()
            logs.flush_suppressed()
            # After a crowd leaves, hand the freed heap back to the system.
            peak = max(peak, len(self.conns))
            if peak - len(self.conns) >= TRIM_AFTER_LEAVING:
                _malloc_trim()
                peak = len(self.conns)

    async def _drain(self, lsock: socket.socket) -> None:
        """Close the listener at once (a load balancer's health check now
        fails) and keep serving the connected clients until they leave or
        --drain-timeout ends."""
        trio.lowlevel.notify_closing(lsock)
        lsock.close()
        self.draining = True
        timeout = self.options.drain_timeout
        log.info("draining: not accepting; %d clients served for up to %.1f s",
                 len(self.conns), timeout)
        with trio.move_on_after(timeout):
            await self._changes.wait_until(lambda: not self.conns)
        for link in self.links:
            link.stopping()

    async def _shutdown(self) -> None:
        """Within --shutdown-grace: the handler answers what it owes, the
        clients get their output and are closed, the handler reads their
        disconnects. Then the link stops the handler."""
        core = self.core
        log.info("shutting down: %d clients, %d replies owed", len(core.clients), core.owed)
        core.stopping = True
        core.hold = True
        with trio.move_on_after(self.options.shutdown_grace):
            await self._changes.wait_until(lambda: not core.owed or not core.handler_up)
            await self._changes.wait_until(lambda: not any(c.out for c in core.clients.values()))
        for conn in list(self.conns):
            c = conn.client
            c.out.clear()
            self.clients.finish(conn, "shutdown")
        # Let the handler read the disconnects before its stdin closes.
        with trio.move_on_after(min(1.0, self.options.shutdown_grace)):
            await self._changes.wait_until(
                lambda: all((not w.outbox and not w.pipe_pending) or not w.up
                            for w in core.workers)
            )
        for link in self.links:
            link.release()
        await self._supervisor_done.wait()
