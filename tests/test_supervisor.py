"""Starting, stopping and restarting the handler process."""

from __future__ import annotations

import signal
import sys

import trio
from trio.testing import MockClock

from tgate.supervisor import (
    FIRST_RESTART_DELAY,
    MAX_RESTART_DELAY,
    describe_exit,
    restart_delay,
    spawn,
    stop,
)

STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


async def test_stop_escalates_to_sigterm_then_sigkill(mock_clock: MockClock) -> None:
    """A handler that ignores stdin EOF and SIGTERM is killed after two
    grace periods of virtual time: once it is running, the clock autojumps
    over the graces (while the child starts, it must not jump: that wait is
    on real I/O)."""
    proc = await spawn([sys.executable, "-c", STUBBORN])
    with trio.fail_after(30):
        assert b"ready" in await proc.stdout.receive_some(100)
        mock_clock.autojump_threshold = 0
        start = trio.current_time()
        await stop(proc, grace=5.0)
    assert proc.returncode == -signal.SIGKILL
    assert trio.current_time() - start >= 10.0


async def test_stop_of_a_polite_handler_needs_no_signal(mock_clock: MockClock) -> None:
    # The virtual clock stands still: the grace cannot run out while the
    # child exits on its stdin EOF.
    proc = await spawn([sys.executable, "-c", "import sys; sys.stdin.read()"])
    with trio.fail_after(30):
        await stop(proc, grace=5.0)
    assert proc.returncode == 0


async def test_wait_can_be_awaited_by_several_tasks() -> None:
    proc = await spawn([sys.executable, "-c", "import sys; sys.stdin.read(); raise SystemExit(4)"])
    codes: list[int] = []

    async def waiter() -> None:
        codes.append(await proc.wait())

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(waiter)
            await trio.sleep(0.05)
            await proc.stdin.aclose()
    assert codes == [4, 4, 4]
    await stop(proc)


def test_restart_delay_backs_off_with_jitter_to_a_cap() -> None:
    # the first crash after a stable period restarts at once (issue 11)
    assert restart_delay(1) == 0.0
    seconds = [restart_delay(2) for _ in range(200)]
    assert all(FIRST_RESTART_DELAY / 2 <= d <= FIRST_RESTART_DELAY for d in seconds)
    assert len(set(seconds)) > 100  # jittered
    assert all(restart_delay(4) <= 4 * FIRST_RESTART_DELAY for _ in range(50))
    assert all(MAX_RESTART_DELAY / 2 <= restart_delay(50) <= MAX_RESTART_DELAY
               for _ in range(50))


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(None) == "is still running"
