"""The trio shell around the core: the listener, client sockets, timers.

Client sockets live in one level-triggered epoll set (poller.py) that a
single task waits on: per message, a read is one recv and a reply one send,
with no task switch and no epoll_ctl. The handler's pipes are link.py's;
the handler's stdin is written once per pass over the ready sockets.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import socket
from dataclasses import dataclass
from typing import Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from . import logs
from .core import Client, Core, Settings
from .link import HandlerLink
from .poller import HUP, READ, WRITE, Poller
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
#: How long a closed client's socket waits for the client's EOF (see _linger).
LINGER_TIME = 2.0
#: How long a client being closed (idle, by the handler, quarantined...) may
#: take to read the output queued for it before its socket is closed anyway.
CLOSE_FLUSH_TIMEOUT = 5.0
#: When this many clients have left since the peak, return freed memory.
TRIM_AFTER_LEAVING = 1000
#: At most this many 64 KiB reads of a closing client's input per pass.
DISCARD_READS = 16
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


def _discard_input(sock: socket.socket, scratch: memoryview) -> bool:
    """Read and drop what the client sent that nobody will process; True
    once its EOF (or an error) was seen.

    Closing a socket with unread input makes the kernel send RST, and a
    client receiving RST may discard our last reply (a 413, a QUIT's +OK)
    before its application reads it. At most DISCARD_READS reads, so that
    a flooding client cannot hold the loop.
    """
    try:
        for _ in range(DISCARD_READS):
            if not sock.recv_into(scratch):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    return False


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


class Conn:
    """The I/O side of one client."""

    __slots__ = ("client", "closed", "deadline", "fd", "flushing", "interest", "last_read",
                 "reading", "sock")

    def __init__(self, sock: socket.socket, client: Client, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        #: READ|WRITE|HUP mask registered with the poller
        self.interest = 0
        #: output is waiting for the socket to accept more
        self.flushing = False
        #: gone for the core; the socket may still linger
        self.closed = False
        self.last_read = now
        #: we still read from it (until its EOF, or the end of a lingering close)
        self.reading = True
        #: lingering or closing with output: when we stop waiting (0: not)
        self.deadline = 0.0


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
        self.conns: set[Conn] = set()
        self._by_fd: dict[int, Conn] = {}
        self._poller = Poller()
        self._scratch = memoryview(bytearray(max(1 << 16, self.core.settings.max_bufsize)))
        #: clients not read while the handler's stdin drains
        self._parked: set[Conn] = set()
        self._slot_free = Wake()
        self._room = Wake()
        #: sockets with a deadline: lingering closes, closes waiting for output
        self._timed: set[Conn] = set()
        self._sweeping = False
        self._per_ip: dict[str, int] = {}
        self._changes = Changes()
        self._stop_requested = trio.Event()
        self._supervisor_done = trio.Event()
        self._serve_scope: trio.CancelScope | None = None
        #: set when serve() has returned, whatever the exit path
        self.stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        o = options
        self.link = HandlerLink(
            self.core, o.handler, handler_timeout=o.handler_timeout,
            shutdown_grace=o.shutdown_grace, on_crash=o.on_crash, after=self._after,
            changes=self._changes,
        )

    @property
    def restarts(self) -> int:
        return self.link.restarts

    @property
    def crashes(self) -> int:
        return self.link.crashes

    @property
    def handler_pid(self) -> int | None:
        """pid of the running handler process, if any"""
        return self.link.pid

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Begin an orderly shutdown (SIGINT/SIGTERM)."""
        self.link.stopping()
        self._stop_requested.set()

    def abort(self) -> None:
        """Stop now (a second SIGINT/SIGTERM): handler groups SIGKILLed,
        clients closed without waiting for their output."""
        self.link.stopping()
        self.link.kill_all()
        self._stop_requested.set()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    def reload(self) -> None:
        """Replace the handler with a freshly started one (SIGHUP)."""
        self.link.reload()

    # ------------------------------------------------------------ main

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        lsock = self._listen()
        try:
            with trio.CancelScope() as self._serve_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._supervise, nursery)
                    accept_scope = trio.CancelScope()
                    nursery.start_soon(self._accept_loop, lsock, accept_scope)
                    nursery.start_soon(self._poll_loop)
                    nursery.start_soon(self._ticker)
                    if self.options.idle_timeout > 0:
                        nursery.start_soon(self._idle_sweeper)
                    task_status.started(lsock.getsockname()[:2])
                    await self._stop_requested.wait()
                    accept_scope.cancel()
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            lsock.close()
            self._nursery = None  # from here on, closes do not linger
            for conn in list(self.conns):
                self._finish(conn, "shutdown")
            for conn in list(self._timed):
                self._close_socket(conn)
            await self.link.close()
            self._poller.close()
            self.stopped.set()

    async def _supervise(self, nursery: trio.Nursery, task_status: Any) -> None:
        try:
            await self.link.run(nursery, task_status)
        finally:
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
                    self._accepted(sock)
                self._after()
                await checkpoint()

    def _accepted(self, sock: socket.socket) -> None:
        o = self.options
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = sock.getpeername()[:2]
            local = sock.getsockname()[:2]
        except OSError:  # reset before we looked at it
            sock.close()
            return
        if o.max_clients_per_ip:
            count = self._per_ip.get(peer[0], 0)
            if count >= o.max_clients_per_ip:
                log.warning("connection from %s refused: it has %d already "
                            "(--max-clients-per-ip)", peer[0], count)
                sock.close()
                return
            self._per_ip[peer[0]] = count + 1
        conn = Conn(sock, self.core.connect(peer, local), trio.current_time())
        conn.client.io = conn
        self.conns.add(conn)
        self._by_fd[conn.fd] = conn
        self._interest(conn, READ | HUP)
        log.debug("client %d connected from %s:%d", conn.client.id, *peer)

    def _interest(self, conn: Conn, mask: int) -> None:
        if mask != conn.interest:
            self._poller.set(conn.fd, conn.interest, mask)
            conn.interest = mask

    def _reading(self, conn: Conn, on: bool) -> None:
        # HUP keeps even a paused or EOF'd socket watched for a reset.
        self._interest(conn, (READ if on else 0) | (WRITE if conn.flushing else 0) | HUP)

    async def _poll_loop(self) -> None:
        """Handle every ready client socket, one pass per wakeup."""
        poller = self._poller
        by_fd = self._by_fd
        while True:
            await wait_readable(poller)
            for fd, mask in poller.poll():
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                if mask & WRITE and conn.flushing:
                    self._on_writable(conn)
                if mask & READ and conn.reading:
                    self._on_readable(conn)
                if mask & HUP and by_fd.get(fd) is conn:
                    self._on_hangup(conn)
            self._after()

    def _on_readable(self, conn: Conn) -> None:
        if conn.closed:
            self._linger(conn)
            return
        core = self.core
        c = conn.client
        if not core.can_read(c):
            # Backpressure: stop watching its input until the core lets us
            # read again (_service, _wake_parked resume it).
            self._reading(conn, False)
            if core.pipe_full:
                self._parked.add(conn)
            return
        room = c.buffer.room()
        try:
            n = conn.sock.recv_into(self._scratch, room)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("client %d: read error: %s", c.id, exc)
            self._finish(conn, "reset")
            return
        if not n:
            conn.reading = False
            self._reading(conn, False)
            core.received_eof(c)
            return
        if self.options.idle_timeout:
            conn.last_read = trio.current_time()
        data = self._scratch[:n]
        core.received(c, data)
        data.release()

    def _on_hangup(self, conn: Conn) -> None:
        """Error or hang-up on a socket we may not be reading (paused, or
        after the client's EOF): the peer is gone."""
        if conn.closed:
            self._close_socket(conn)
        else:
            log.debug("client %d: hang-up", conn.client.id)
            self._finish(conn, "reset")

    def _linger(self, conn: Conn) -> None:
        """A closed client's socket: our FIN is out; read and drop what the
        client still sends until its EOF (or the sweeper's deadline), then
        close. Closing with unread input would send RST, and a client that
        receives RST may lose our last reply before reading it (nginx's
        lingering close)."""
        if _discard_input(conn.sock, self._scratch):
            self._close_socket(conn)

    def _on_writable(self, conn: Conn) -> None:
        c = conn.client
        try:
            n = conn.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("client %d: write error: %s", c.id, exc)
            self._finish(conn, "reset")
            return
        del c.out[:n]
        if not c.out:
            conn.flushing = False
            self._reading(conn, conn.reading and self.core.can_read(c))
            self._service(c)

    def _service(self, c: Client) -> None:
        """Act on a client the core touched: write its output, close it, or
        resume reading it."""
        conn = c.io
        assert isinstance(conn, Conn)
        if conn.closed:
            return
        out = c.out
        if out and not conn.flushing:
            try:
                n = conn.sock.send(out)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                log.debug("client %d: write error: %s", c.id, exc)
                self._finish(conn, "reset")
                return
            del out[:n]
            if out:  # the socket is full: the poller says when it takes more
                conn.flushing = True
                self._interest(conn, conn.interest | WRITE)
        if out:
            self.core.sent(c)  # what stays queued counts against max-output
            if c.closing is not None and not conn.deadline:
                conn.deadline = trio.current_time() + CLOSE_FLUSH_TIMEOUT
                self._timed.add(conn)
                self._ensure_sweeper()
            return
        if c.closing is not None:
            self._finish(conn, c.closing)
        elif conn.reading and not conn.interest & READ:
            if self.core.can_read(c):
                self._reading(conn, True)
            elif self.core.pipe_full:
                self._parked.add(conn)

    def _finish(self, conn: Conn, reason: str) -> None:
        """The client is gone for the core (and so the handler) from now on.

        After a reset, or once the client sent EOF, its socket closes at
        once; otherwise our FIN goes out now and the socket lingers until
        the client's EOF (see _linger).
        """
        if conn.closed:
            return
        conn.closed = True
        c = conn.client
        log.debug("client %d disconnected (%s)", c.id, reason)
        sock = conn.sock
        self._timed.discard(conn)
        if reason == "reset" or not conn.reading or self._nursery is None:
            if reason != "reset":
                _discard_input(sock, self._scratch)
            self._close_socket(conn)
        else:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close_socket(conn)
            else:
                conn.flushing = False
                self._interest(conn, READ | HUP)
                conn.deadline = trio.current_time() + LINGER_TIME
                self._timed.add(conn)
                self._ensure_sweeper()
        self.conns.discard(conn)
        self._parked.discard(conn)
        self._slot_free.wake()
        if self.options.max_clients_per_ip:
            ip = c.peer[0]
            left = self._per_ip[ip] - 1
            if left:
                self._per_ip[ip] = left
            else:
                del self._per_ip[ip]
        self.core.gone(c, reason)
        self._after()

    def _close_socket(self, conn: Conn) -> None:
        self._timed.discard(conn)
        if self._by_fd.get(conn.fd) is conn:
            self._interest(conn, 0)
            del self._by_fd[conn.fd]
            conn.sock.close()

    def _ensure_sweeper(self) -> None:
        if not self._sweeping and self._nursery is not None:
            self._sweeping = True
            self._nursery.start_soon(self._deadline_sweeper)

    async def _deadline_sweeper(self) -> None:
        """Closes lingering sockets whose client never sent its EOF, and
        clients being closed that do not read the output queued for them."""
        try:
            while self._timed:
                await trio.sleep(min(LINGER_TIME, CLOSE_FLUSH_TIMEOUT) / 4)
                now = trio.current_time()
                for conn in [x for x in self._timed if x.deadline <= now]:
                    if conn.closed:
                        self._close_socket(conn)
                        continue
                    c = conn.client
                    log.info("client %d: %d bytes of output not read within %.0f s of "
                             "closing it (%s); closing anyway", c.id, len(c.out),
                             CLOSE_FLUSH_TIMEOUT, c.closing)
                    c.out.clear()
                    self._finish(conn, c.closing or "reset")
        finally:
            self._sweeping = False

    # ------------------------------------------------------------ plumbing

    def _after(self) -> None:
        """Carry out what the core decided; called after every core event."""
        core = self.core
        if core.backlog and not core.pipe_full:
            core.pump()
        if core.outbox:
            self.link.write_now()
        while core.touched:
            touched = core.touched
            core.touched = set()
            for c in touched:
                self._service(c)
        if not core.pipe_full:
            if self._parked:
                self._wake_parked()
            self._room.wake()
        self._changes.pulse()

    def _wake_parked(self) -> None:
        core = self.core
        for conn in list(self._parked):
            if core.can_read(conn.client):
                self._parked.discard(conn)
                self._reading(conn, True)

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
            self._finish(conn, "shutdown")
        # Let the handler read the disconnects before its stdin closes.
        with trio.move_on_after(min(1.0, self.options.shutdown_grace)):
            await self._changes.wait_until(
                lambda: (not core.outbox and not core.pipe_pending) or not core.handler_up
            )
        self.link.release()
        await self._supervisor_done.wait()
