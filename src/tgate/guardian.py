"""Killing the handlers' process groups even when tgate itself is SIGKILLed.

Each handler runs in its own process group with a parent-death signal, so a
SIGKILLed tgate takes its direct child with it, but Linux gives no signal to
the handler's own children: they would live on as orphans. The guardian is a
tiny process started once with tgate (not per handler, so restarts stay
fast), in a session of its own so that a terminal's Ctrl-C does not reach it.
tgate tells it, over a pipe, which process groups are alive; when that pipe
reaches EOF (tgate exited, however it exited), the guardian SIGKILLs every
group it was told of and exits. What escapes even this: a descendant that
left the handler's process group (setsid, setpgid) before tgate died.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger("tgate")

_SCRIPT = r"""
import os, signal, sys
groups = set()
for line in sys.stdin.buffer:
    try:
        n = int(line)
    except ValueError:
        continue
    if n > 0:
        groups.add(n)
    else:
        groups.discard(-n)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Guardian:
    """The guardian process. Every method is a no-op after a failure: the
    guardian is a second line of defence, never a reason to stop serving."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1

    def start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("no guardian process (%s): if tgate is SIGKILLed, children of the "
                        "handler may outlive it", exc.strerror or exc)
            return
        assert self._proc.stdin is not None
        self._fd = self._proc.stdin.fileno()
        os.set_blocking(self._fd, False)

    @property
    def alive(self) -> bool:
        """It runs and we can still tell it about process groups."""
        return self._fd >= 0 and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def watch(self, pgid: int) -> None:
        self._send(f"{pgid}\n".encode())

    def unwatch(self, pgid: int) -> None:
        self._send(f"-{pgid}\n".encode())

    def _send(self, line: bytes) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, line)  # a few bytes: the pipe never fills
        except OSError as exc:
            log.warning("guardian process gone (%s): if tgate is SIGKILLed, children of "
                        "the handler may outlive it", exc.strerror or exc)
            self._fd = -1

    def close(self) -> None:
        """Let it go (it kills what is still registered, normally nothing)
        and reap it. Waits at most a second: it exits as soon as it reads EOF."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        self._fd = -1
        assert proc.stdin is not None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
