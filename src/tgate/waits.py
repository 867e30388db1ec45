"""Two small waiting primitives for the gateway's single trio loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled


class Wake:
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


class Changes:
    """Tasks waiting for some predicate over the gateway's state; whoever
    changes that state calls pulse(). Costs nothing while nobody waits."""

    __slots__ = ("_event", "_waiting")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiting = 0

    def pulse(self) -> None:
        if self._waiting:
            self._event.set()
            self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        self._waiting += 1
        try:
            while not predicate():
                await self._event.wait()
        finally:
            self._waiting -= 1
