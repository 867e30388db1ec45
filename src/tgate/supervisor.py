"""Starting and stopping the handler process.

The handler runs in its own session (so a terminal's Ctrl-C reaches only
tgate, which then shuts down in order) and, on Linux, with a parent-death
signal, so that even a SIGKILLed gateway leaves no orphan behind. Stopping
is: close its stdin, grace, SIGTERM to its process group, grace, SIGKILL.
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
#: First restart delay after a crash; it doubles per consecutive crash...
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


async def spawn(argv: list[str]) -> trio.Process:
    """Start the handler with pipes on stdin, stdout and stderr.

    Raises HandlerStartError when the command cannot be executed.
    """
    try:
        return await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    except OSError as exc:
        raise HandlerStartError(
            f"cannot start handler {argv[0]!r}: {exc.strerror or exc}"
        ) from None


def _killpg(proc: trio.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop(proc: trio.Process, grace: float = STOP_GRACE) -> None:
    """Stop the handler: close stdin, wait, SIGTERM its group, wait, SIGKILL.

    Always reaps the process, even when cancelled (the final kill and wait are
    shielded), so no zombie is left behind.
    """
    with trio.CancelScope(shield=True):
        if proc.stdin is not None:
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
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()


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
    """Exponential backoff with jitter: at most 0.1 s after the first crash,
    doubling up to MAX_RESTART_DELAY; jitter spreads restarts of many tgates
    sharing a broken dependency."""
    base = min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * float(2 ** max(0, consecutive_crashes - 1)))
    jitter: float = random.uniform(0.5, 1.0)
    return base * jitter


async def forward_stderr(stream: trio.abc.ReceiveStream, pid: int) -> None:
    """Copy the handler's stderr to ours, each line prefixed with its pid."""
    prefix = f"[handler {pid}] ".encode()
    out = sys.stderr.buffer
    partial = b""
    try:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if len(partial) > 65536:  # a newline-free flood: pass it on anyway
                lines.append(partial)
                partial = b""
            if lines:
                out.write(b"".join(prefix + line + b"\n" for line in lines))
                out.flush()
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass
    if partial:
        out.write(prefix + partial + b"\n")
        out.flush()
