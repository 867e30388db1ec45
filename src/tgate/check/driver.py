"""One handler process, driven over its pipes with timeouts; its stderr collected.

`Driver` owns the process: a writer task feeds its stdin in order (sending never
blocks the script), a reader splits its stdout into lines for `handle_line` (the
protocol side, in `session.py`), another keeps the end of its stderr. Whatever
happens, `cleanup` stops it as tgate does (stdin EOF, grace, SIGTERM, grace,
SIGKILL to its process group) and reaps it. `run_process` runs one scripted body
against a fresh process under a timeout.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from .common import (
    DRAIN_LIMIT,
    FLOOD_LINES,
    GRACE,
    MAX_LINE,
    MAX_LINE_ERRORS,
    STDERR_KEEP,
    STDERR_LINES,
    Fail,
    describe_status,
    short,
)


class Driver:
    """The process side of a session: pipes, exit status, waiting for output."""

    def __init__(self, proc: trio.Process, tag: str) -> None:
        self.proc = proc
        self.tag = tag
        self.line_errors: list[str] = []  # lines that are not valid protocol v1 (the first ones)
        self.line_error_count = 0  # all of them
        self.lines: list[bytes] = []  # the first lines received
        self.line_count = 0
        self.flooded = False  # too many invalid lines: the rest is only counted
        self.seq = 0  # lines sent
        self.waiting_for = "nothing"
        self.stdout_eof = False
        self.early_exit = False  # stdout closed before we closed stdin
        self.stdin_error: str | None = None
        self.eof_requested = False
        self.stderr = bytearray()
        self._status: int | None = None
        self._reaped = False
        self._changed = trio.Event()
        self._stderr_done = trio.Event()
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](math.inf)

    # -- to override

    def handle_line(self, raw: bytes) -> None:
        """One line the handler wrote (without its newline)."""
        self.line_count += 1
        if len(self.lines) < 50:
            self.lines.append(raw)

    # -- sending (never blocks: the writer task feeds the handler's stdin in order)

    def send_line(self, line: bytes) -> int:
        """Queue one line (with its newline) for the handler; returns its sequence number."""
        if self.eof_requested:
            raise RuntimeError("checker bug: send after stdin EOF")
        self.seq += 1
        self._send_q.send_nowait(line)
        return self.seq

    def close_stdin(self) -> None:
        if not self.eof_requested:
            self.eof_requested = True
            self._send_q.close()

    # -- waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait for the handler's next output (or the end of it)."""
        await self._changed.wait()

    def exit_text(self) -> str:
        return describe_status(self.poll_status())

    @property
    def broken(self) -> bool:
        """The handler stopped talking (stdout closed, or stdin unwritable) before we did."""
        return not self.eof_requested and (self.stdout_eof or self.stdin_error is not None)

    def _check_alive(self) -> None:
        if self.stdout_eof and not self.eof_requested:
            raise Fail(
                f"handler {self.exit_text()} (its stdout closed) while the checker was "
                f"waiting for {self.waiting_for}"
            )
        if self.stdin_error is not None and not self.eof_requested:
            raise Fail(
                f"handler stopped reading its stdin ({self.stdin_error}; it "
                f"{self.exit_text()}) while the checker was waiting for {self.waiting_for}"
            )

    async def wait_change(self, what: str) -> None:
        self.waiting_for = what
        self._check_alive()
        await self.changed()

    async def settle(self, quiet: float) -> None:
        """Return once the handler has written nothing for `quiet` seconds."""
        self.waiting_for = f"{quiet:g} s without output"
        while not self.stdout_eof:
            event = self._changed
            with trio.move_on_after(quiet) as scope:
                await event.wait()
            if scope.cancelled_caught:
                return

    async def finish(self, limit: float | None = None) -> int | None:
        """Close stdin, read the handler's output to its end, return its exit status.

        None if it has not exited within `limit` seconds (None: the scenario timeout).
        """
        self.close_stdin()
        self.waiting_for = "the handler to exit after stdin EOF"
        with trio.move_on_after(math.inf if limit is None else limit):
            while not self.stdout_eof and self.poll_status() is None:
                with trio.move_on_after(0.01):
                    await self._changed.wait()
            # The rest of its output may still be in the pipe (or a child of the
            # handler holds the pipe open: then what it wrote so far is all we get).
            with trio.move_on_after(0.5):
                while not self.stdout_eof:
                    await self._changed.wait()
            while (status := self.poll_status()) is None:
                await trio.sleep(0.005)
            return status
        return None

    # -- the process

    def poll_status(self) -> int | None:
        """Exit status (negative: signal) without reaping, so the pgid stays ours."""
        if self._status is not None:
            return self._status
        if self._reaped:
            return self.proc.returncode
        try:
            res = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            self._reaped = True
            return self.proc.poll()
        if res is None:
            return None
        self._status = res.si_status if res.si_code == os.CLD_EXITED else -res.si_status
        return self._status

    async def _wait_exit(self, limit: float) -> None:
        with trio.move_on_after(limit):
            while self.poll_status() is None:
                await trio.sleep(0.005)

    def _signal_group(self, sig: int) -> None:
        if self._reaped:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def cleanup(self) -> None:
        """Stop the handler like tgate: stdin EOF, grace, SIGTERM, grace, SIGKILL; reap."""
        already_waited = self.eof_requested
        self.close_stdin()
        if not already_waited:
            await self._wait_exit(GRACE)
        if self.poll_status() is None:
            self._signal_group(signal.SIGTERM)
            await self._wait_exit(GRACE)
        if self.poll_status() is None:
            self._signal_group(signal.SIGKILL)
            await self._wait_exit(5.0)
        # Whatever the handler left behind in its process group goes too. The
        # leader is at worst a zombie here, so its pid (the pgid) cannot be reused.
        self._signal_group(signal.SIGKILL)
        with trio.move_on_after(GRACE):  # what it wrote last is still in the pipes
            await self._stderr_done.wait()
            while not self.stdout_eof:
                await self._changed.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.aclose()
        with trio.move_on_after(5.0):
            await self.proc.wait()  # reaps
            self._reaped = True

    async def write_stdin(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            async with self._recv_q:
                async for item in self._recv_q:
                    await stdin.send_all(item)
            await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.stdin_error = f"writing to its stdin failed: {type(exc).__name__}"
            self._notify()

    async def read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        try:
            while chunk := await stream.receive_some(65536):
                self.stderr += chunk
                if len(self.stderr) > 2 * STDERR_KEEP:
                    del self.stderr[:-STDERR_KEEP]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._stderr_done.set()

    def stderr_tail(self) -> list[str]:
        text = self.stderr.decode("utf-8", "backslashreplace")
        return text.splitlines()[-STDERR_LINES:]

    async def read_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        buf = bytearray()
        skipping = False  # inside an over-long line, until its newline
        try:
            while chunk := await stream.receive_some(65536):
                if self.flooded:  # only count the lines: parsing them would hog the loop
                    self.line_count += chunk.count(b"\n")
                    self._notify()
                    continue
                start = len(buf)
                buf += chunk
                begin = 0
                while (end := buf.find(b"\n", start)) >= 0:
                    if skipping:
                        skipping = False
                    else:
                        self.handle_line(bytes(buf[begin:end]))
                    begin = start = end + 1
                del buf[:begin]
                if len(buf) > MAX_LINE:
                    if not skipping:
                        self.line_error(f"line longer than 16 MiB: {short(bytes(buf[:60]))}")
                    skipping = True
                    buf.clear()
                if self.line_error_count >= FLOOD_LINES:
                    self.flooded = True
                    self.line_error(
                        f"{self.line_error_count} invalid lines: the rest of the handler's "
                        "output is not read, only counted"
                    )
                    buf.clear()
                self._notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if buf and not skipping and not self.flooded:
            self.line_error(f"last line has no terminating newline: {short(bytes(buf))}")
        if not self.eof_requested:
            self.early_exit = True
            await self._wait_exit(0.5)  # so the message can give the exit status
        self.stdout_eof = True
        self._notify()

    def line_error(self, text: str) -> None:
        self.line_error_count += 1
        if len(self.line_errors) < MAX_LINE_ERRORS:
            self.line_errors.append(f"[{self.tag}] {text}")


D = TypeVar("D", bound=Driver)


@dataclass
class Outcome(Generic[D]):
    """How one scripted run of a handler process ended."""

    driver: D | None  # None: the process could not be started
    error: str | None  # what made the run stop, if anything did
    timed_out: bool = False


async def run_process(
    argv: list[str],
    make: Callable[[trio.Process], D],
    body: Callable[[D], Awaitable[None]],
    timeout: float,
) -> Outcome[D]:
    """Start `argv`, run `body` against it within `timeout` seconds, then drain,
    stop and reap it. A `Fail` from the body, or the timeout, is the error."""
    try:
        proc = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return Outcome(None, f"cannot start handler {shlex.join(argv)}: {exc}")
    driver = make(proc)
    error: str | None = None
    timed_out = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.write_stdin)
        nursery.start_soon(driver.read_stdout)
        nursery.start_soon(driver.read_stderr)
        try:
            with trio.move_on_after(timeout) as scope:
                await body(driver)
            if scope.cancelled_caught:
                timed_out = True
                error = f"timed out after {timeout:g} s waiting for {driver.waiting_for}"
            else:
                await driver.finish(DRAIN_LIMIT)
        except Fail as exc:
            error = str(exc)
        finally:
            with trio.CancelScope(shield=True):
                await driver.cleanup()
            nursery.cancel_scope.cancel()
    if error is None and driver.early_exit:
        error = f"handler {describe_status(driver.poll_status())} before its stdin was closed"
    return Outcome(driver, error, timed_out)
