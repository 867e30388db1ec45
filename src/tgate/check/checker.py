"""Runs and verdicts: how scenarios start handler processes and judge them.

A scenario is an async function of a `Checker` returning a `Verdict`: what was
seen, the problems found (none: PASS) and the stderr of a failing run. Each
`Checker.run` is a fresh handler process (so one failure cannot poison the
next), one at a time, under the `--timeout`. Once a run of a scenario has timed
out, the scenario's remaining runs are not started: a handler that hangs once
would hang again, and a scenario of many runs must not take minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from .common import FRAMES, PARALLEL_RUNS, PROBE, as_int, describe_status, diff
from .driver import run_process
from .session import Session


@dataclass
class Run:
    """The outcome of one handler process."""

    tag: str
    session: Session | None
    error: str | None
    timed_out: bool = False
    skipped: bool = False  # not started: an earlier run of its scenario timed out

    @property
    def problems(self) -> list[str]:
        found = [] if self.error is None else [self.error]
        if self.session is not None:
            found += self.session.violations
        return found

    @property
    def line_errors(self) -> list[str]:
        return [] if self.session is None else self.session.line_errors

    def out(self, cid: int) -> bytes:
        if self.session is None or cid not in self.session.clients:
            return b""
        return bytes(self.session.clients[cid].out)

    def stderr_tail(self) -> list[str]:
        return [] if self.session is None else self.session.stderr_tail()


Body = Callable[[Session], Awaitable[None]]


@dataclass
class Verdict:
    seen: str
    problems: list[str]
    stderr: list[str]


class Checker:
    def __init__(self, argv: list[str], timeout: float, framing: str = "raw") -> None:
        self.argv = argv
        self.timeout = timeout
        self.framing = framing
        self.runs: list[Run] = []
        self.scenario = ""  # the scenario being run, to label invalid lines
        self.gave_up: str | None = None  # the run of this scenario that timed out
        self.limiter = trio.CapacityLimiter(PARALLEL_RUNS)
        self.quiet = min(0.3, timeout / 10)

    def begin(self, scenario: str) -> None:
        self.scenario = scenario
        self.gave_up = None

    async def run(self, tag: str, body: Body, timeout: float | None = None) -> Run:
        """Run `body` against a fresh handler process, then stop and reap it."""
        async with self.limiter:
            if self.gave_up is not None:
                return Run(tag, None, None, skipped=True)
            label = tag if tag == self.scenario else f"{self.scenario}: {tag}"

            def make(proc: trio.Process) -> Session:
                return Session(proc, label, self.framing)

            outcome = await run_process(
                self.argv, make, body, self.timeout if timeout is None else timeout
            )
        result = Run(tag, outcome.driver, outcome.error, outcome.timed_out)
        if result.timed_out:
            self.gave_up = tag
        self.runs.append(result)
        return result

    def verdict(self, seen: str, runs: Sequence[Run], extra: Sequence[str] = ()) -> Verdict:
        problems: list[str] = []
        stderr: list[str] = []
        for r in runs:
            prefix = f"{r.tag}: " if len(runs) > 1 else ""
            problems += [prefix + p for p in r.problems]
            if r.problems and not stderr:
                stderr = r.stderr_tail()
        problems += extra
        if extra and not stderr and runs:
            stderr = runs[-1].stderr_tail()
        skipped = sum(r.skipped for r in runs)
        if skipped:
            problems.append(
                f"{skipped} more run(s) of this scenario not started after {self.gave_up} timed out"
            )
        return Verdict(seen, problems, stderr)

    async def solo_reference(self, chunks: list[bytes] | None = None, tag: str = "") -> Run:
        """One client fed PROBE (default: in one data), then stdin EOF."""
        plan = [PROBE] if chunks is None else chunks

        async def body(s: Session) -> None:
            s.hello()
            s.connect(1)
            await s.drive({1: plan})

        return await self.run(tag or "unsplit run", body)

    async def framed_reference(self, tag: str = "client alone") -> Run:
        """Framed modes: one client sends FRAMES and eof; the handler closes it."""

        async def body(s: Session) -> None:
            s.hello()
            s.connect(1)
            s.frames(1, FRAMES)
            s.eof(1)
            await s.closed(1)

        return await self.run(tag, body)


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    func: Callable[[Checker], Awaitable[Verdict]]


# -- verdicts shared by the raw and the framed scenarios ------------------------


def comparable(*runs: Run) -> bool:
    """Whether these runs' outputs can be compared (all ran, none failed)."""
    return not any(r.problems or r.skipped for r in runs)


def unknown_ops_verdict(ck: Checker, reference: Run, run: Run) -> Verdict:
    """Unknown ops and fields must not change what client 1 gets."""
    extra = []
    if comparable(reference, run) and run.out(1) != reference.out(1):
        extra.append(
            "output to client 1 changed when unknown ops and fields were added: "
            + diff(reference.out(1), run.out(1))
        )
    seen = "ignored: same output as without them"
    if extra:
        seen = "unknown ops/fields changed the output"
    return ck.verdict(seen, [reference, run], extra)


def interleaved_verdict(
    ck: Checker,
    runs: tuple[Run, Run, Run],
    n: int,
    cross: bool,
    how: Callable[[int], str],
    what: str,
) -> Verdict:
    """Each of n interleaved clients must get the output one client gets
    alone, unless the handler writes across clients (a chat, say: then a
    client's output depends on the others and there is nothing to compare).
    `runs` are the client alone, the bystander probe and the n clients."""
    reference, _probe, run = runs
    extra: list[str] = []
    if cross:
        seen = f"{n} clients served; writes across clients, so streams not compared"
    else:
        expected = reference.out(1)
        mismatches = [
            f"client {cid} ({how(cid)}): output differs from the same {what} sent alone: "
            f"{diff(expected, run.out(cid))}"
            for cid in range(1, n + 1)
            if run.out(cid) != expected
        ]
        if not comparable(reference, run):
            mismatches = []
        extra += mismatches[:3]
        if len(mismatches) > 3:
            extra.append(f"... and {len(mismatches) - 3} more clients whose output differs")
        seen = f"{n} interleaved clients, each got the output it gets alone"
        if mismatches:
            seen = f"{len(mismatches)} of {n} clients got other output than alone"
    return ck.verdict(seen, list(runs), extra)


ExitInfo = dict[str, float | int | None]


async def timed_finish(s: Session, info: ExitInfo) -> None:
    """Close the handler's stdin and record its exit status and how long it took."""
    t0 = trio.current_time()
    info["status"] = await s.finish()
    info["ms"] = (trio.current_time() - t0) * 1000


def exit_verdict(ck: Checker, run: Run, info: ExitInfo, seen: str = "") -> Verdict:
    """A handler must exit with status 0 once its stdin is closed."""
    status = as_int(info.get("status"))
    extra = []
    if "status" in info and status != 0:
        extra.append(f"after stdin EOF the handler {describe_status(status)} (expected status 0)")
    seen += describe_status(status)
    if "ms" in info:
        seen += f" {info['ms']:.0f} ms after stdin EOF"
    return ck.verdict(seen, [run], extra)
