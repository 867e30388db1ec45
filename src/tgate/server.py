"""The trio shell around the core: sockets, the handler's pipes, timers.

Client sockets live in one level-triggered epoll set (poller.py) that a
single task waits on: per message, a read is one recv and a reply one send,
with no task switch and no epoll_ctl. The handler's stdin is written once per
pass over the ready sockets (a writer task takes over only while the pipe is
full); its stdout is read by one task in large chunks.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint,
    current_task,
    reschedule,
    wait_readable,
    wait_task_rescheduled,
)

from .core import Client, Core, Settings
from .poller import READ, WRITE, Poller
from .supervisor import (
    STABLE_AFTER,
    STOP_GRACE,
    HandlerProcess,
    HandlerStartError,
    describe_exit,
    forward_stderr,
    restart_delay,
    spawn,
    stop,
)

log = logging.getLogger("tgate")

#: ServerLoop's listenCount is 10, but on Linux a burst of a hundred connects
#: then gets connections reset; 511 is Redis's and nginx's default backlog.
DEFAULT_LISTEN_COUNT = 511
#: Redis's maxclients default; raise it for more (the fd limit is raised to match).
DEFAULT_MAX_CLIENTS = 10000
#: A first handler that dies this soon, before any client came, is a broken
#: command line rather than a crash: tgate exits with an error.
STARTUP_WINDOW = 1.0
#: After an accept error like EMFILE, wait this long before accepting again.
ACCEPT_ERROR_BACKOFF = 0.1
#: Accept at most this many connections in a row before letting others run.
ACCEPT_BATCH = 64
HANDLER_READ_SIZE = 1 << 18
#: How long a closed client's socket waits for the client's EOF (see _linger).
LINGER_TIME = 2.0
#: When this many clients have left since the peak, return freed memory.
TRIM_AFTER_LEAVING = 1000
#: At most this many 64 KiB reads of unprocessed input are drained at close.
DISCARD_READS = 16
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True, slots=True)
class Options:
    handler: list[str]
    host: str = "127.0.0.1"
    port: int = 7000
    listen_count: int = DEFAULT_LISTEN_COUNT
    #: kill and restart a handler that owes replies and says nothing this long
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


def _discard_input(sock: socket.socket, scratch: memoryview) -> None:
    """Read and drop what the client sent that nobody will process.

    Closing a socket with unread input makes the kernel send RST, and a
    client receiving RST may discard our last reply (a 413, a QUIT's +OK)
    before its application reads it.
    """
    try:
        for _ in range(DISCARD_READS):
            if not sock.recv_into(scratch):
                return
    except OSError:  # EAGAIN: drained; anything else: nothing left to save
        return


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


class _Wake:
    """One parked task, woken at most once: cheaper than an Event per wait."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: Task | None = None

    async def wait(self) -> None:
        self.task = current_task()

        def abort(_: Any) -> Abort:
            self.task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


class Conn:
    """The I/O side of one client."""

    __slots__ = ("client", "closed", "fd", "flushing", "interest", "last_read", "linger_until",
                 "reading", "sock")

    def __init__(self, sock: socket.socket, client: Client, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        #: READ|WRITE mask registered with the poller
        self.interest = 0
        #: output is waiting for the socket to accept more
        self.flushing = False
        #: gone for the core; the socket may still linger
        self.closed = False
        self.last_read = now
        #: we still read from it (until its EOF, or the end of a lingering close)
        self.reading = True
        #: when a lingering close gives up waiting for the client's EOF
        self.linger_until = 0.0


class Gateway:
    """Accepts clients, runs the handler, and moves bytes between them.

    ``serve()`` runs until ``stop()`` is called (then it shuts down in order:
    see docs/protocol.md) or raises HandlerStartError when the handler
    command cannot run at all. Sockets and the handler process are always
    released when it returns, whatever the exit path.
    """

    def __init__(self, options: Options, settings: Settings | None = None) -> None:
        self.options = options
        self.core = Core(settings)
        self.conns: set[Conn] = set()
        self._by_fd: dict[int, Conn] = {}
        self._poller = Poller()
        self._scratch = memoryview(bytearray(max(1 << 16, self.core.settings.max_bufsize)))
        #: clients not read while the handler's stdin drains
        self._parked: set[Conn] = set()
        self._pipe_wake = _Wake()
        #: the handler's stdin, for writes that skip the writer task (-1: none)
        self._pipe_fd = -1
        self._slot_free = _Wake()
        #: closed clients whose sockets wait for the client's EOF
        self._lingering: set[Conn] = set()
        self._sweeping = False
        self._per_ip: dict[str, int] = {}
        self._changed = trio.Event()
        self._waiting = 0  # tasks in _wait_until
        self._stop_requested = trio.Event()
        self._supervisor_done = trio.Event()
        #: set when serve() has returned, whatever the exit path
        self.stopped = trio.Event()
        self._reload_requested = False
        self._handler_cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._last_output = 0.0
        self._owed_since: float | None = None
        self.restarts = 0
        self.crashes = 0
        #: pid of the running handler process, if any
        self.handler_pid: int | None = None

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Begin an orderly shutdown (SIGINT/SIGTERM)."""
        self._stop_requested.set()

    def reload(self) -> None:
        """Replace the handler with a freshly started one (SIGHUP)."""
        self._reload_requested = True
        self._pulse()

    # ------------------------------------------------------------ main

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        lsock = self._listen()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._supervise)
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
            for conn in list(self._lingering):
                self._close_socket(conn)
            self._poller.close()
            self.stopped.set()

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
        assert self._nursery is not None
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
                await wait_readable(lsock)
                for _ in range(ACCEPT_BATCH):
                    if o.max_clients and len(self.conns) >= o.max_clients:
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
                    try:
                        sock.setblocking(False)
                        if sock.family in (socket.AF_INET, socket.AF_INET6):
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        peer = sock.getpeername()[:2]
                        local = sock.getsockname()[:2]
                    except OSError:  # reset before we looked at it
                        sock.close()
                        continue
                    if o.max_clients_per_ip:
                        count = self._per_ip.get(peer[0], 0)
                        if count >= o.max_clients_per_ip:
                            log.warning("connection from %s refused: it has %d already "
                                        "(--max-clients-per-ip)", peer[0], count)
                            sock.close()
                            continue
                        self._per_ip[peer[0]] = count + 1
                    conn = Conn(sock, core.connect(peer, local), trio.current_time())
                    conn.client.io = conn
                    self.conns.add(conn)
                    self._by_fd[conn.fd] = conn
                    self._interest(conn, READ)
                    log.debug("client %d connected from %s:%d", conn.client.id, *peer)
                self._after()
                await checkpoint()

    def _interest(self, conn: Conn, mask: int) -> None:
        if mask != conn.interest:
            self._poller.set(conn.fd, conn.interest, mask)
            conn.interest = mask

    def _reading(self, conn: Conn, on: bool) -> None:
        self._interest(conn, (READ if on else 0) | (WRITE if conn.flushing else 0))

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

    def _linger(self, conn: Conn) -> None:
        """A closed client's socket: our FIN is out; read and drop what the
        client still sends until its EOF (or the sweeper's deadline), then
        close. Closing with unread input would send RST, and a client that
        receives RST may lose our last reply before reading it (nginx's
        lingering close)."""
        try:
            while conn.sock.recv_into(self._scratch):
                pass
        except BlockingIOError:
            return
        except OSError:
            pass
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
        if out:
            if conn.flushing:
                return
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
                self._interest(conn, READ)
                conn.linger_until = trio.current_time() + LINGER_TIME
                self._lingering.add(conn)
                self._ensure_linger_sweeper()
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
        self._lingering.discard(conn)
        if self._by_fd.get(conn.fd) is conn:
            self._interest(conn, 0)
            del self._by_fd[conn.fd]
            conn.sock.close()

    def _ensure_linger_sweeper(self) -> None:
        if not self._sweeping and self._nursery is not None:
            self._sweeping = True
            self._nursery.start_soon(self._linger_sweeper)

    async def _linger_sweeper(self) -> None:
        """Closes lingering sockets whose client never sent its EOF."""
        try:
            while self._lingering:
                await trio.sleep(LINGER_TIME / 4)
                now = trio.current_time()
                for conn in [x for x in self._lingering if x.linger_until <= now]:
                    self._close_socket(conn)
        finally:
            self._sweeping = False

    # ------------------------------------------------------------ plumbing

    def _after(self) -> None:
        """Carry out what the core decided; called after every core event."""
        core = self.core
        if core.outbox_size:
            if self._pipe_wake.task is not None and self._pipe_fd >= 0:
                # The writer task is idle: write now, one write for all that
                # this pass queued. The task takes over if the pipe is full.
                self._write_pipe_now()
            else:
                self._pipe_wake.wake()
        while core.touched:
            touched = core.touched
            core.touched = set()
            for c in touched:
                self._service(c)
        if self._parked and not core.pipe_full:
            self._wake_parked()
        if core.owed:
            if self._owed_since is None:
                self._owed_since = trio.current_time()
        else:
            self._owed_since = None
        self._pulse()

    def _write_pipe_now(self) -> None:
        core = self.core
        data = core.take_outbox()
        try:
            n = os.write(self._pipe_fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the handler is gone; read_stdout sees it
        if n < len(data):
            core.outbox.insert(0, data[n:])
            core.outbox_size += len(data) - n
            self._pipe_wake.wake()

    def _pulse(self) -> None:
        """Wake whoever waits for some state to change (shutdown, reload)."""
        if self._waiting:
            self._changed.set()
            self._changed = trio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        self._waiting += 1
        try:
            while not predicate():
                await self._changed.wait()
        finally:
            self._waiting -= 1

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
            # After a crowd leaves, hand the freed heap back to the system.
            peak = max(peak, len(self.conns))
            if peak - len(self.conns) >= TRIM_AFTER_LEAVING:
                _malloc_trim()
                peak = len(self.conns)

    # ------------------------------------------------------------ the handler

    async def _supervise(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the handler; when it dies, start another and replay to it."""
        try:
            await self._supervise_loop(self.options.handler, task_status)
        finally:
            self._supervisor_done.set()

    async def _supervise_loop(self, argv: list[str], task_status: Any) -> None:
        assert self._nursery is not None
        core = self.core
        first = True
        consecutive = 0
        while True:
            proc = await spawn(argv)  # HandlerStartError on the first try ends serve()
            started = trio.current_time()
            self.handler_pid = proc.pid
            log.info("handler started (pid %d): %s", proc.pid, " ".join(argv))
            self._nursery.start_soon(forward_stderr, proc.stderr, proc.pid)
            core.handler_started()
            self._last_output = started
            self._after()
            if first:
                task_status.started()
            outcome = await self._run_handler(proc)
            deliberate = outcome in ("reload", "shutdown")
            quarantined = core.handler_lost(crashed=not deliberate)
            self.handler_pid = None
            if outcome == "shutdown":
                await stop(proc)
                return
            # The core is done with this process: reap it in the background
            # so a slow-dying one does not delay its successor. A hung one
            # gets no grace.
            self._nursery.start_soon(stop, proc, 0.0 if outcome == "hung" else STOP_GRACE)
            if deliberate:
                log.info("handler (pid %d) replaced", proc.pid)
                consecutive = 0
            else:
                self.crashes += 1
                lived = trio.current_time() - started
                if first and lived < STARTUP_WINDOW and not core.ever_connected:
                    raise HandlerStartError(
                        f"handler {' '.join(argv)!r} {describe_exit(proc.returncode)} at once"
                    )
                consecutive = 1 if lived >= STABLE_AFTER else consecutive + 1
                for c in quarantined:
                    log.warning("client %d disconnected (quarantined): its bytes were in flight "
                                "at %d consecutive handler crashes", c.id, c.strikes)
                if self.options.on_crash == "disconnect":
                    for c in list(core.clients.values()):
                        core.close(c, "reset")
                delay = restart_delay(consecutive)
                log.error("handler (pid %d) %s (%s); %d live clients kept; restarting in %.2f s "
                          "(crash %d in a row)", proc.pid, describe_exit(proc.returncode),
                          outcome, len(core.clients), delay, consecutive)
                self._after()
                await trio.sleep(delay)
            self.restarts += 1
            first = False

    async def _run_handler(self, proc: HandlerProcess) -> str:
        """Pump the pipes until the handler dies, hangs, or must be replaced.

        Returns why it ended: "exit", "stdout closed", "hung", "reload" or
        "shutdown".
        """
        outcome: str | None = None
        async with trio.open_nursery() as nursery:

            def done(why: str) -> None:
                nonlocal outcome
                outcome = why
                nursery.cancel_scope.cancel()

            async def read_stdout() -> None:
                core = self.core
                while True:
                    try:
                        chunk = await proc.stdout.receive_some(HANDLER_READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        chunk = b""
                    if not chunk:
                        # EOF usually means it is exiting: give it a moment
                        # so that the log can say how it ended.
                        with trio.move_on_after(0.5):
                            await proc.wait()
                        done("exit" if proc.returncode is not None else "stdout closed")
                        return
                    self._last_output = trio.current_time()
                    core.handler_output(bytes(chunk))
                    self._after()

            async def write_stdin() -> None:
                core = self.core
                self._pipe_fd = proc.stdin.fileno()
                try:
                    await pump_stdin(core)
                finally:
                    self._pipe_fd = -1

            async def pump_stdin(core: Core) -> None:
                while True:
                    if not core.outbox_size:
                        await self._pipe_wake.wait()
                        continue
                    data = core.take_outbox()
                    core.pipe_pending = len(data)
                    try:
                        await proc.stdin.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # it died; read_stdout sees the EOF
                    finally:
                        core.pipe_pending = 0
                    if self._parked:
                        self._wake_parked()
                    self._pulse()

            async def watch_exit() -> None:
                await proc.wait()
                # Let stdout drain what the handler wrote before dying.
                await trio.sleep(1.0)
                done("exit")

            async def watch_hang() -> None:
                timeout = self.options.handler_timeout
                while True:
                    await trio.sleep(min(1.0, timeout / 4))
                    since = self._owed_since
                    if since is None or not self.core.owed:
                        continue
                    silent = trio.current_time() - max(since, self._last_output)
                    if silent >= timeout:
                        log.error("handler (pid %d) hung: owes %d replies, silent for %.1f s; "
                                  "killing it", proc.pid, self.core.owed, silent)
                        done("hung")
                        return

            async def watch_requests() -> None:
                await self._wait_until(
                    lambda: self._reload_requested or self._stop_requested.is_set()
                )
                if self._stop_requested.is_set():
                    # _shutdown drains the handler, then cancels us.
                    await trio.sleep_forever()
                self._reload_requested = False
                log.info("reload: handler (pid %d) gets %.1f s to answer %d owed replies",
                         proc.pid, self.options.shutdown_grace, self.core.owed)
                self.core.hold = True
                with trio.move_on_after(self.options.shutdown_grace):
                    await self._wait_until(lambda: not self.core.owed)
                done("reload")

            self._handler_cancel = nursery.cancel_scope
            nursery.start_soon(read_stdout)
            nursery.start_soon(write_stdin)
            nursery.start_soon(watch_exit)
            if self.options.handler_timeout > 0:
                nursery.start_soon(watch_hang)
            nursery.start_soon(watch_requests)
        self._handler_cancel = None
        return outcome or "shutdown"

    async def _shutdown(self) -> None:
        core = self.core
        grace = self.options.shutdown_grace
        log.info("shutting down: %d clients, %d replies owed", len(core.clients), core.owed)
        core.stopping = True
        core.hold = True
        with trio.move_on_after(grace):
            await self._wait_until(lambda: not core.owed or not core.handler_up)
        with trio.move_on_after(grace):
            await self._wait_until(lambda: not any(c.out for c in core.clients.values()))
        for conn in list(self.conns):
            self._finish(conn, "shutdown")
        # Let the handler read the disconnects before its stdin closes.
        with trio.move_on_after(grace):
            await self._wait_until(lambda: not core.outbox_size or not core.handler_up)
        if self._handler_cancel is not None:
            self._handler_cancel.cancel()
        # _supervise sees "shutdown", stops the handler (close stdin, grace,
        # SIGTERM, grace, SIGKILL) and returns.
        await self._supervisor_done.wait()
