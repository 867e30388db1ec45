"""The handler link: start the handler, feed its stdin, read its stdout,
watch it, and replace it when it dies, hangs or is reloaded.

Whatever happens to the handler, the clients stay with the gateway: a start
that fails after the first one is retried under the crash backoff, a reload
starts the new process before it lets the old one go (and keeps the old one
when the new one cannot start), and a stop request is honoured at any point,
backoff and restarts included.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio
from trio.lowlevel import wait_writable

from .core import Core
from .guardian import Guardian
from .logs import forward_stderr
from .supervisor import (
    STABLE_AFTER,
    STOP_GRACE,
    HandlerProcess,
    HandlerStartError,
    describe_exit,
    kill_now,
    restart_delay,
    spawn,
    stop,
)
from .waits import Changes, Wake

log = logging.getLogger("tgate")

HANDLER_READ_SIZE = 1 << 18
#: A first handler that dies this soon, before any client came, is a broken
#: command line rather than a crash: tgate exits with an error.
STARTUP_WINDOW = 1.0
#: A reload's new handler must live this long before the old one is let go;
#: if it exits sooner, the reload fails and the old one keeps serving.
READY_WINDOW = 0.3
#: After its stdout closed, how long a handler gets to exit before we say
#: it closed stdout while running.
EXIT_AFTER_EOF = 0.5
#: After the handler exited, how long its stdout may still deliver what it
#: wrote (a grandchild may hold the pipe open).
DRAIN_AFTER_EXIT = 1.0

#: The metrics' restart cause for each way a handler's run ends.
_CAUSES = {"exit": "crash", "hung": "hang", "reload": "reload", "stdout closed": "link",
           "stdin closed": "link"}
#: How a handler's run ended; the ones that are not its fault come first.
DELIBERATE = ("reload", "shutdown")


class HandlerLink:
    """Runs one handler process at a time for worker `index` of `core`.

    `after` is the gateway's hook to carry out what the core decided (called
    after every batch of handler output); `changes` is pulsed whenever the
    link's state changes. `run()` returns when the gateway releases the
    handler at shutdown (after stopping it: stdin EOF, grace, SIGTERM, grace,
    SIGKILL to its group), or raises HandlerStartError when the very first
    handler cannot start or dies at once.
    """

    def __init__(
        self,
        core: Core,
        argv: list[str],
        *,
        index: int = 0,
        guardian: Guardian,
        handler_timeout: float,
        shutdown_grace: float,
        on_crash: str,
        after: Callable[[], None],
        changes: Changes,
    ) -> None:
        self.core = core
        self.index = index
        self.w = core.workers[index]
        #: how log lines name this worker ("" in a pool of one)
        # Part of the format strings, not an argument: the log's rate limiter
        # counts each worker's lifecycle lines as a kind of their own.
        self.name = f" [worker {index}]" if len(core.workers) > 1 else ""
        self.argv = argv
        self.handler_timeout = handler_timeout
        self.shutdown_grace = shutdown_grace
        self.on_crash = on_crash
        self._after = after
        self._changes = changes
        self.guardian = guardian
        #: every handler process not reaped yet (the current one, a reload's
        #: successor, old ones being stopped in the background)
        self.procs: set[HandlerProcess] = set()
        #: pid of the handler the clients are served by, if any
        self.pid: int | None = None
        self.restarts = 0
        self.crashes = 0
        #: the writer task is parked here while the outbox is empty
        self.writer = Wake()
        #: the handler's stdin, for writes that skip the writer task (-1: none)
        self.fd = -1
        #: since when the handler's stdin has refused our bytes (pipe full)
        self._stalled_since: float | None = None
        #: why the current link broke on our side (stdin write failed)
        self._broken: str | None = None
        self._reload = False
        #: set when a requested reload is over (done, failed or overtaken)
        self._reload_over = trio.Event()
        #: no more restarts: the gateway is stopping
        self._stopping = False
        #: the gateway is done with the handler: stop it and return
        self._released = False
        #: a reload is letting the old handler finish (its exit is expected)
        self._draining = False
        self._drained = trio.Event()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ control

    def reload(self) -> trio.Event:
        """Replace this worker's handler; the event is set when that is
        over (replaced, failed, or overtaken by a crash or a stop)."""
        if not self._reload:
            self._reload = True
            self._reload_over = trio.Event()
        self._changes.pulse()
        return self._reload_over


    def stopping(self) -> None:
        """No restart from now on (a stop was requested)."""
        self._stopping = True
        self._changes.pulse()

    def release(self) -> None:
        """The gateway has closed its clients: stop the handler and return."""
        self._stopping = True
        self._released = True
        self._changes.pulse()

    def kill_all(self) -> None:
        """SIGKILL every handler process group at once (second signal)."""
        for proc in list(self.procs):
            kill_now(proc)

    # ------------------------------------------------------------ stdin

    def write_now(self) -> None:
        """Write the outbox straight to the pipe when the writer is idle: one
        write per pass. What the pipe does not take, the writer task sends."""
        w = self.w
        if self.writer.task is None or self.fd < 0:
            self.writer.wake()
            return
        try:
            n = os.write(self.fd, w.outbox)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._lost(f"writing its stdin failed: {exc.strerror or exc}")
            return
        if n == len(w.outbox):
            w.outbox = bytearray()
        else:
            del w.outbox[:n]
            self.writer.wake()

    async def _pump_stdin(self, fd: int) -> None:
        w = self.w
        while True:
            if not w.outbox:
                await self.writer.wait()
                continue
            data = self.core.take_outbox(self.index)
            w.pipe_pending = len(data)
            view = memoryview(data)
            pos = 0
            try:
                while pos < len(data):
                    try:
                        n = os.write(fd, view[pos:])
                    except BlockingIOError:
                        if self._stalled_since is None:
                            self._stalled_since = trio.current_time()
                        await wait_writable(fd)
                        continue
                    pos += n
                    w.pipe_pending = len(data) - pos
                    self._stalled_since = None
            except OSError as exc:
                self._lost(f"writing its stdin failed: {exc.strerror or exc}")
                return
            finally:
                view.release()
                w.pipe_pending = 0
            self._stalled_since = None
            self._after()

    def _lost(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
            self._changes.pulse()

    # ------------------------------------------------------------ supervision

    async def run(self, nursery: trio.Nursery, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._nursery = nursery
        try:
            await self._supervise(task_status)
        finally:
            self.pid = None

    async def close(self) -> None:
        """Reap whatever is left (shielded, bounded by the stop graces)."""
        with trio.CancelScope(shield=True):
            for proc in list(self.procs):
                kill_now(proc)
                await proc.wait()
                proc.close()
                self.procs.discard(proc)

    async def _spawn(self) -> HandlerProcess:
        proc = await spawn(self.argv, death_signal=not self.guardian.alive)
        self.procs.add(proc)
        self.guardian.watch(proc.pid)
        assert self._nursery is not None
        self._nursery.start_soon(forward_stderr, proc.stderr, proc.pid)
        return proc

    async def _stop(self, proc: HandlerProcess, grace: float = STOP_GRACE) -> None:
        try:
            await stop(proc, grace)
        finally:
            self.procs.discard(proc)
            self.guardian.unwatch(proc.pid)

    async def _supervise(self, task_status: Any) -> None:
        assert self._nursery is not None
        core = self.core
        proc: HandlerProcess | None = await self._spawn()  # HandlerStartError: tgate exits
        first = True
        consecutive = 0
        while proc is not None:
            started = trio.current_time()
            self.pid = proc.pid
            log.info("handler started (pid %d): %s" + self.name, proc.pid, " ".join(self.argv))
            core.handler_started(self.index)
            self._after()
            if first:
                task_status.started()
            outcome, successor = await self._run_handler(proc)
            quarantined = core.handler_lost(self.index, crashed=outcome not in DELIBERATE)
            if outcome != "shutdown":
                core.metrics.restarted(_CAUSES.get(outcome, "crash"))
            self.pid = None
            if outcome == "shutdown":
                await self._stop(proc)
                return
            # The core is done with this process: reap it in the background
            # so that a slow-dying one does not delay its successor. One that
            # hung or broke the link gets no grace.
            grace = STOP_GRACE if outcome in DELIBERATE else 0.0
            self._nursery.start_soon(self._stop, proc, grace)
            if outcome == "reload":
                log.info("handler (pid %d) replaced by pid %d" + self.name, proc.pid,
                         successor.pid if successor else 0)
                consecutive = 0
                self.restarts += 1
                proc = successor
                first = False
                continue
            self.crashes += 1
            lived = trio.current_time() - started
            if first and lived < STARTUP_WINDOW and not core.ever_connected:
                raise HandlerStartError(
                    f"handler {' '.join(self.argv)!r} {describe_exit(proc.returncode)} at once"
                )
            consecutive = 1 if lived >= STABLE_AFTER else consecutive + 1
            for c in quarantined:
                log.warning("client %d disconnected (quarantined): its bytes alone were in "
                            "flight at %d handler crashes", c.id, c.strikes)
            if self.on_crash == "disconnect":
                for c in list(core.clients.values()):
                    if c.worker == self.index:
                        core.close(c, "reset")
            delay = restart_delay(consecutive)
            log.error("handler (pid %d) %s (%s); %d live clients kept; restarting in %.2f s "
                      "(crash %d in a row)" + self.name, proc.pid, describe_exit(proc.returncode),
                      outcome, self.w.nclients, delay, consecutive)
            self._after()
            proc, consecutive = await self._respawn(delay, consecutive)
            if proc is not None:
                self.restarts += 1
            first = False

    async def _respawn(
        self, delay: float, consecutive: int
    ) -> tuple[HandlerProcess | None, int]:
        """Start the next handler after `delay`, retrying failed starts
        under the same backoff. None when a stop request came first."""
        while True:
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._changes.wait_until(lambda: self._stopping)
            if self._stopping:
                return None, consecutive
            try:
                return await self._spawn(), consecutive
            except HandlerStartError as exc:
                consecutive += 1
                delay = restart_delay(consecutive)
                log.error("%s; %d live clients kept; retrying in %.2f s" + self.name, exc,
                          self.w.nclients, delay)

    async def _start_successor(self, old: HandlerProcess) -> HandlerProcess | None:
        """A reload's new handler, once it has lived READY_WINDOW; None (and
        the old handler keeps serving) when it cannot start or dies first."""
        try:
            new = await self._spawn()
        except HandlerStartError as exc:
            log.error("reload failed: %s; handler (pid %d) keeps serving", exc, old.pid)
            return None
        try:
            with trio.move_on_after(READY_WINDOW):
                await new.wait()
        except BaseException:
            assert self._nursery is not None
            self._nursery.start_soon(self._stop, new, 0.0)
            raise
        if new.returncode is None:
            return new
        log.error("reload failed: new handler (pid %d) %s before it was ready; handler "
                  "(pid %d) keeps serving", new.pid, describe_exit(new.returncode), old.pid)
        assert self._nursery is not None
        self._nursery.start_soon(self._stop, new, 0.0)
        return None

    async def _run_handler(
        self, proc: HandlerProcess
    ) -> tuple[str, HandlerProcess | None]:
        """Pump the pipes until the handler dies, hangs, or must be replaced.

        Returns why it ended ("exit", "stdout closed", "stdin closed",
        "hung", "reload" or "shutdown") and, for a reload, the successor.
        """
        core = self.core
        w = self.w
        outcome: str | None = None
        successor: HandlerProcess | None = None
        self._broken = None
        self._stalled_since = None
        self._draining = False
        self._drained = trio.Event()
        async with trio.open_nursery() as nursery:

            def done(why: str) -> None:
                nonlocal outcome
                if self._draining and why != "reload":
                    self._drained.set()  # the old handler finished: expected
                    return
                if outcome is None:
                    outcome = why
                nursery.cancel_scope.cancel()

            async def read_stdout() -> None:
                while True:
                    try:
                        chunk = await proc.stdout.receive_some(HANDLER_READ_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        chunk = b""
                    if not chunk:
                        # EOF usually means it is exiting: give it a moment
                        # so that the log can say how it ended.
                        with trio.move_on_after(EXIT_AFTER_EOF):
                            await proc.wait()
                        done("exit" if proc.returncode is not None else "stdout closed")
                        return
                    core.handler_output(chunk, self.index)
                    self._after()

            async def write_stdin(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    self.fd = proc.stdin.fileno()
                    try:
                        await self._pump_stdin(self.fd)
                    except trio.ClosedResourceError:
                        pass  # a reload closed it
                    finally:
                        self.fd = -1

            async def watch_exit() -> None:
                await proc.wait()
                # Let stdout drain what the handler wrote before dying.
                await trio.sleep(DRAIN_AFTER_EXIT)
                done("exit")

            async def watch_broken() -> None:
                await self._changes.wait_until(lambda: self._broken is not None)
                log.error("handler (pid %d): %s; the link is lost", proc.pid, self._broken)
                done("stdin closed")

            async def watch_hang() -> None:
                timeout = self.handler_timeout
                while True:
                    await trio.sleep(min(1.0, timeout / 4))
                    if self._draining:
                        continue
                    now = trio.current_time()
                    oldest = core.oldest_owed(self.index)
                    if oldest is not None and now - oldest >= timeout:
                        log.error("handler (pid %d) hung: a reply owed for %.1f s (%d owed); "
                                  "killing it" + self.name, proc.pid, now - oldest, w.owed)
                        done("hung")
                        return
                    stalled = self._stalled_since
                    if stalled is not None and now - stalled >= timeout:
                        log.error("handler (pid %d) hung: it read none of its stdin for %.1f s "
                                  "(%d bytes waiting); killing it" + self.name, proc.pid,
                                  now - stalled, w.pipe_pending + len(w.outbox))
                        done("hung")
                        return

            async def watch_requests(writer: trio.CancelScope) -> None:
                nonlocal successor
                while True:
                    await self._changes.wait_until(lambda: self._reload or self._released)
                    if self._released:
                        done("shutdown")
                        return
                    self._reload = False
                    successor = await self._start_successor(proc)
                    if successor is None:
                        self._reload_over.set()
                        continue
                    await self._let_go(proc, writer)
                    done("reload")
                    return

            writer = await nursery.start(write_stdin)
            nursery.start_soon(read_stdout)
            nursery.start_soon(watch_exit)
            nursery.start_soon(watch_broken)
            if self.handler_timeout > 0:
                nursery.start_soon(watch_hang)
            nursery.start_soon(watch_requests, writer)
        self._draining = False
        self._reload_over.set()  # done, or overtaken by a crash or a stop
        if outcome != "reload" and successor is not None:
            # Replaced by something else (a crash, a stop) mid-reload.
            assert self._nursery is not None
            self._nursery.start_soon(self._stop, successor, 0.0)
            successor = None
        return outcome or "shutdown", successor

    async def _let_go(self, proc: HandlerProcess, writer: trio.CancelScope) -> None:
        """A reload: the old handler gets --shutdown-grace to answer what it
        owes (raw mode) or, in framed modes, to read all it was sent and
        answer it until it exits at its stdin's EOF. New bytes are held."""
        w = self.w
        log.info("reload: handler (pid %d) gets %.1f s to answer %s" + self.name, proc.pid,
                 self.shutdown_grace,
                 f"{w.owed} owed replies" if self.core.settings.framing == "raw"
                 else "the frames it was sent")
        w.hold = True
        with trio.move_on_after(self.shutdown_grace) as scope:
            if self.core.settings.framing == "raw":
                await self._changes.wait_until(lambda: not w.owed)
            else:
                await self._changes.wait_until(
                    lambda: (not w.outbox and not w.pipe_pending) or self._broken is not None
                )
                self._draining = True
                self.fd = -1
                writer.cancel()
                await trio.lowlevel.checkpoint()
                await proc.stdin.aclose()  # its EOF: answer what you have, then exit
                await self._drained.wait()
        if scope.cancelled_caught:
            log.warning("reload: handler (pid %d) did not finish within %.1f s", proc.pid,
                        self.shutdown_grace)
