"""Starting and stopping the handler process.

The handler runs in its own session (so a terminal's Ctrl-C reaches only
tgate, which then shuts down in order). If tgate is SIGKILLed, the guardian
(guardian.py) kills the handler's process group; without a guardian, the
handler gets a parent-death signal instead. Either way a SIGKILLed gateway
leaves no orphan behind. Stopping is: close its stdin, grace, SIGTERM to its
process group, grace, SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import subprocess
import sys

import trio

log = logging.getLogger("tgate")

#: How long a handler may take to exit after its stdin closes, and again
#: after SIGTERM, before the next step.
STOP_GRACE = 2.0
#: The first crash after a stable period restarts at once; the second in a
#: row waits this long, doubling per consecutive crash...
FIRST_RESTART_DELAY = 0.1
#: ...up to this cap, where tgate keeps retrying for as long as it runs.
MAX_RESTART_DELAY = 5.0
#: A handler that ran this long without crashing resets the backoff.
STABLE_AFTER = 10.0

_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


class HandlerStartError(Exception):
    """The handler command cannot be started (not found, not executable, or
    it exits at once)."""


class HandlerProcess:
    """A started handler: its pid, its three pipes as trio streams, and an
    async wait().

    We fork from the trio thread ourselves instead of using
    trio.lowlevel.open_process, which forks from a worker thread: the
    parent-death signal fires when the *thread* that forked exits, and trio
    retires idle worker threads after 10 s, which would kill the handler.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        # Own the pipes as plain fds (dup first, so that running out of fds
        # half-way leaks nothing: the caller then kills the process).
        pipes = (popen.stdin, popen.stdout, popen.stderr)
        fds: list[int] = []
        try:
            for f in pipes:
                assert f is not None
                fds.append(os.dup(f.fileno()))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        for f in pipes:
            assert f is not None
            f.close()
        self.stdin = trio.lowlevel.FdStream(fds[0])
        self.stdout = trio.lowlevel.FdStream(fds[1])
        self.stderr = trio.lowlevel.FdStream(fds[2])
        self._pidfd: int | None = None
        self._watching = False
        self._changed = trio.Event()
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: wait() polls
            pass

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while
        it runs. Reaps the process once it has exited."""
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for the exit and return its status; any number of tasks may
        wait at once (one watches the pidfd, the others its event)."""
        while (code := self._popen.poll()) is None:
            if self._watching:
                await self._changed.wait()
                continue
            self._watching = True
            try:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    await trio.sleep(0.05)
            finally:
                self._watching = False
                self._changed.set()
                self._changed = trio.Event()
        if not self._watching:
            self.close()
        return code

    def close(self) -> None:
        """Release the pidfd (the process must have been reaped)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


async def spawn(argv: list[str], death_signal: bool = True) -> HandlerProcess:
    """Start the handler with pipes on stdin, stdout and stderr.

    With `death_signal`, the child gets SIGKILL when tgate dies; that needs
    code in the child before exec, which makes Python fork instead of vfork
    (about 3 ms instead of 0.4 ms, more for a large gateway). The caller
    passes False when the guardian already covers that case.

    Raises HandlerStartError when the command cannot be executed.
    """
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_child_setup if death_signal else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        # ENOENT, EACCES, and EMFILE/ENFILE/ENOMEM when tgate is at a limit.
        why = getattr(exc, "strerror", None) or exc
        raise HandlerStartError(f"cannot start handler {argv[0]!r}: {why}") from None
    try:
        proc = HandlerProcess(popen)
    except OSError as exc:  # out of fds while taking over its pipes
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        for f in (popen.stdin, popen.stdout, popen.stderr):
            if f is not None:
                f.close()
        raise HandlerStartError(
            f"cannot start handler {argv[0]!r}: {exc.strerror or exc}"
        ) from None
    await trio.lowlevel.checkpoint()
    return proc


def _killpg(proc: HandlerProcess, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop(proc: HandlerProcess, grace: float = STOP_GRACE) -> None:
    """Stop the handler: close stdin, wait, SIGTERM its group, wait, SIGKILL.

    Always reaps the process, even when cancelled (the final kill and wait are
    shielded), so no zombie is left behind.
    """
    with trio.CancelScope(shield=True):
        await proc.stdin.aclose()
        if proc.returncode is None:
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            _killpg(proc, signal.SIGTERM)
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            _killpg(proc, signal.SIGKILL)
            await proc.wait()
        # Whatever else the handler started in its group goes with it.
        _killpg(proc, signal.SIGKILL)
        proc.close()
        # stderr is left to forward_stderr, which drains it (the last words of
        # a crashed handler) and closes it at EOF.
        await proc.stdout.aclose()


def kill_now(proc: HandlerProcess) -> None:
    """SIGKILL the handler's whole process group (second SIGINT/SIGTERM)."""
    _killpg(proc, signal.SIGKILL)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def restart_delay(consecutive_crashes: int) -> float:
    """No delay for the first crash after a stable period (the clients are
    waiting); then exponential backoff with jitter from FIRST_RESTART_DELAY
    up to MAX_RESTART_DELAY. Jitter spreads restarts of many tgates sharing
    a broken dependency."""
    if consecutive_crashes <= 1:
        return 0.0
    base = min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * float(2 ** (consecutive_crashes - 2)))
    jitter: float = random.uniform(0.5, 1.0)
    return base * jitter
