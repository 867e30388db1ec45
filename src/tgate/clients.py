"""Client I/O: every client socket in one level-triggered epoll set that a
single task waits on (poller.py), read into one shared buffer, written
directly, closed with a lingering FIN and a deadline.

Per message, a read is one recv and a reply one send, with no task switch
and no epoll_ctl; interest changes (backpressure, a full socket) are rare.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import wait_readable

from . import logs
from .core import Client, Core
from .poller import HUP, READ, WRITE, Poller
from .waits import Wake

if TYPE_CHECKING:
    from .server import Options

log = logging.getLogger("tgate")

#: How long a closed client's socket waits for the client's EOF (see linger).
LINGER_TIME = 2.0
#: How long a client being closed (idle, by the handler, quarantined...) may
#: take to read the output queued for it before its socket is closed anyway.
CLOSE_FLUSH_TIMEOUT = 5.0
#: At most this many 64 KiB reads of a closing client's input per pass.
DISCARD_READS = 16


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



class Conn:
    """The I/O side of one client."""

    __slots__ = ("born", "bytes_in", "bytes_out", "client", "closed", "deadline", "fd",
                 "flushing", "interest", "last_read", "reading", "sock")

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
        #: for the access log
        self.born = now
        self.bytes_in = 0
        self.bytes_out = 0


class ClientIO:
    """The gateway's client sockets. `after` carries out what the core
    decided (the gateway's hook, called after every batch of events);
    `slot_free` is woken whenever a client leaves."""

    def __init__(self, core: Core, options: Options, after: Callable[[], None],
                 slot_free: Wake) -> None:
        self.core = core
        self.options = options
        self._after = after
        self._slot_free = slot_free
        self.conns: set[Conn] = set()
        self._by_fd: dict[int, Conn] = {}
        self._poller = Poller()
        self._scratch = memoryview(bytearray(max(1 << 16, core.settings.max_bufsize)))
        #: clients not read while the handler's stdin drains
        self.parked: set[Conn] = set()
        #: sockets with a deadline: lingering closes, closes waiting for output
        self.timed: set[Conn] = set()
        self._sweeping = False
        self._per_ip: dict[str, int] = {}
        #: where the deadline sweeper runs; None: closes do not linger
        self.nursery: trio.Nursery | None = None

    def close(self) -> None:
        """Close every socket at once (the end of serve())."""
        self.nursery = None
        for conn in list(self.conns):
            self.finish(conn, "shutdown")
        for conn in list(self.timed):
            self.close_socket(conn)
        self._poller.close()

    def add(self, sock: socket.socket) -> None:
        """A newly accepted socket becomes a client (or is refused)."""
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
                self.core.metrics.connections_refused += 1
                sock.close()
                return
            self._per_ip[peer[0]] = count + 1
        conn = Conn(sock, self.core.connect(peer, local), trio.current_time())
        self.core.metrics.connections_accepted += 1
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

    async def poll_loop(self) -> None:
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
            if core.worker_full(c):
                self.parked.add(conn)
            return
        room = c.buffer.room()
        try:
            n = conn.sock.recv_into(self._scratch, room)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("client %d: read error: %s", c.id, exc)
            self.finish(conn, "reset")
            return
        if not n:
            conn.reading = False
            self._reading(conn, False)
            core.received_eof(c)
            return
        if self.options.idle_timeout:
            conn.last_read = trio.current_time()
        conn.bytes_in += n
        core.metrics.bytes_received += n
        data = self._scratch[:n]
        core.received(c, data)
        data.release()

    def _on_hangup(self, conn: Conn) -> None:
        """Error or hang-up on a socket we may not be reading (paused, or
        after the client's EOF): the peer is gone."""
        if conn.closed:
            self.close_socket(conn)
        else:
            log.debug("client %d: hang-up", conn.client.id)
            self.finish(conn, "reset")

    def _linger(self, conn: Conn) -> None:
        """A closed client's socket: our FIN is out; read and drop what the
        client still sends until its EOF (or the sweeper's deadline), then
        close. Closing with unread input would send RST, and a client that
        receives RST may lose our last reply before reading it (nginx's
        lingering close)."""
        if _discard_input(conn.sock, self._scratch):
            self.close_socket(conn)

    def _on_writable(self, conn: Conn) -> None:
        c = conn.client
        try:
            n = conn.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("client %d: write error: %s", c.id, exc)
            self.finish(conn, "reset")
            return
        del c.out[:n]
        conn.bytes_out += n
        self.core.metrics.bytes_sent += n
        if not c.out:
            conn.flushing = False
            self._reading(conn, conn.reading and self.core.can_read(c))
            self.service(c)

    def service(self, c: Client) -> None:
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
                self.finish(conn, "reset")
                return
            del out[:n]
            conn.bytes_out += n
            self.core.metrics.bytes_sent += n
            if out:  # the socket is full: the poller says when it takes more
                conn.flushing = True
                self._interest(conn, conn.interest | WRITE)
        if out:
            self.core.sent(c)  # what stays queued counts against max-output
            if c.closing is not None and not conn.deadline:
                conn.deadline = trio.current_time() + CLOSE_FLUSH_TIMEOUT
                self.timed.add(conn)
                self._ensure_sweeper()
            return
        if c.closing is not None:
            self.finish(conn, c.closing)
        elif conn.reading and not conn.interest & READ:
            if self.core.can_read(c):
                self._reading(conn, True)
            elif self.core.worker_full(c):
                self.parked.add(conn)

    def finish(self, conn: Conn, reason: str) -> None:
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
        self.core.metrics.closed(reason)
        logs.access(c.id, c.peer, trio.current_time() - conn.born, conn.bytes_in,
                    conn.bytes_out, reason, c.worker)
        sock = conn.sock
        self.timed.discard(conn)
        if reason == "reset" or not conn.reading or self.nursery is None:
            if reason != "reset":
                _discard_input(sock, self._scratch)
            self.close_socket(conn)
        else:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close_socket(conn)
            else:
                conn.flushing = False
                self._interest(conn, READ | HUP)
                conn.deadline = trio.current_time() + LINGER_TIME
                self.timed.add(conn)
                self._ensure_sweeper()
        self.conns.discard(conn)
        self.parked.discard(conn)
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

    def close_socket(self, conn: Conn) -> None:
        self.timed.discard(conn)
        if self._by_fd.get(conn.fd) is conn:
            self._interest(conn, 0)
            del self._by_fd[conn.fd]
            conn.sock.close()

    def _ensure_sweeper(self) -> None:
        if not self._sweeping and self.nursery is not None:
            self._sweeping = True
            self.nursery.start_soon(self._deadline_sweeper)

    async def _deadline_sweeper(self) -> None:
        """Closes lingering sockets whose client never sent its EOF, and
        clients being closed that do not read the output queued for them."""
        try:
            while self.timed:
                await trio.sleep(min(LINGER_TIME, CLOSE_FLUSH_TIMEOUT) / 4)
                now = trio.current_time()
                for conn in [x for x in self.timed if x.deadline <= now]:
                    if conn.closed:
                        self.close_socket(conn)
                        continue
                    c = conn.client
                    log.info("client %d: %d bytes of output not read within %.0f s of "
                             "closing it (%s); closing anyway", c.id, len(c.out),
                             CLOSE_FLUSH_TIMEOUT, c.closing)
                    c.out.clear()
                    self.finish(conn, c.closing or "reset")
        finally:
            self._sweeping = False

    def wake_parked(self) -> None:
        core = self.core
        for conn in list(self.parked):
            if core.can_read(conn.client):
                self.parked.discard(conn)
                self._reading(conn, True)

