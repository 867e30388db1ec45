"""The first check, ``speaks-protocol``: is this a tgate handler at all?

Before the scenarios, one run sends ``hello``, a ``connect`` and a first client
message, and waits (at most ``--timeout``) for the handler to act on it: in raw
mode a ``consumed`` reply to the ``data``; in a framed mode the ``close`` of a
client after its ``eof``. A program that is not a handler fails here, once,
with what was seen, and the scenarios are not run:

- it echoes the gateway's own messages back (``cat``);
- it exits, or stops reading, before answering (a crash at start, a usage error);
- it answers nothing within the timeout (silence, or only non-protocol junk);
- it closes the client in answer to its first data or frames without consuming
  or writing anything: it does not serve this mode (a Python handler defining
  only ``process_frame``, or Node ``processFrame``, run in raw mode; or only
  ``process_client_data`` run with ``--framing``).

Protocol mistakes in an answer (a wrong ``n``, a write to an unknown id) do not
fail this check: the scenarios report them in detail.
"""

from __future__ import annotations

import trio

from .checker import Checker, Verdict
from .common import FRAMES, PROBE, Fail, describe_status, short
from .session import Session

PROBE_NAME = "speaks-protocol"
RAW_EXPECTED = "answers its first data; no echo, crash or junk"
FRAMED_EXPECTED = "serves frames, closes on eof; no echo or crash"


def _output(s: Session) -> str:
    """What the handler wrote on stdout, for a failure message."""
    n = s.line_count
    if n == 0:
        return "; it wrote nothing on stdout"
    if s.valid_lines == 0:
        return (
            f"; it wrote {n} line(s) on stdout, none of them protocol, the first: "
            f"{short(s.lines[0], 80)}"
        )
    return f"; it wrote {n} other line(s) on stdout"


class Probe:
    """The state of the probe run, and why it failed if it did."""

    def __init__(self) -> None:
        self.hopeless: str | None = None
        self.ms = 0.0

    def stop(self, text: str) -> Fail:
        self.hopeless = text
        return Fail(text)

    def check(self, s: Session, before: str) -> None:
        """Fail at once if what the handler did so far shows it is not a handler."""
        if s.echoed is not None:
            raise self.stop(
                "echoed gateway messages back: it is not a tgate handler (it wrote "
                f"{short(s.echoed, 80)})"
            )
        if s.broken:
            status = s.poll_status()
            if s.stdout_eof:
                what = "closed its stdout" if status is None else describe_status(status)
            else:
                what = f"stopped reading its stdin ({s.stdin_error}; it {describe_status(status)})"
            raise self.stop(f"handler {what} at start, before {before}{_output(s)}")


async def probe(ck: Checker) -> Verdict:
    """The ``speaks-protocol`` row (see the module docstring)."""
    p = Probe()
    raw = ck.framing == "raw"

    async def raw_body(s: Session) -> None:
        t0 = trio.current_time()
        s.hello()
        s.connect(1)
        s.data(1, PROBE)
        s.waiting_for = f"a consumed reply for client 1 (its first data, {len(PROBE)} bytes)"
        while not s.replied(1):
            p.check(s, "answering its first data")
            await s.changed()
        p.ms = (trio.current_time() - t0) * 1000
        p.check(s, "answering its first data")
        c = s.clients[1]
        if c.closed_by_handler and c.consumed == 0 and c.writes == 0:
            raise p.stop(
                f"closed client 1 in answer to its first data ({len(PROBE)} bytes), consuming "
                "and writing nothing: the handler does not serve raw mode (an adapter handler "
                "that defines only process_frame / processFrame needs tgate --framing MODE)"
            )

    async def framed_body(s: Session) -> None:
        t0 = trio.current_time()
        s.hello()
        s.connect(1)
        s.frames(1, FRAMES)
        s.connect(2)
        s.eof(2)
        s.waiting_for = (
            f"a close for client 2 after its eof (client 1 sent {len(FRAMES)} frames before it)"
        )
        while not s.ended(2):
            p.check(s, "closing a client after its eof")
            await s.changed()
        p.ms = (trio.current_time() - t0) * 1000
        p.check(s, "closing a client after its eof")
        c = s.clients[1]
        if c.closed_by_handler and c.writes == 0:
            raise p.stop(
                f"closed client 1 in answer to its {len(FRAMES)} frames, writing nothing: the "
                f"handler does not serve --framing {ck.framing} (an adapter handler that "
                "defines only process_client_data / processClientData needs raw mode)"
            )

    run = await ck.run(PROBE_NAME, raw_body if raw else framed_body)
    s = run.session
    if s is None:  # could not start it
        return Verdict("cannot start the handler", run.problems, [])
    if p.hopeless is not None:
        return Verdict(p.hopeless, [p.hopeless], run.stderr_tail())
    if run.timed_out:
        if not raw and s.valid_lines and s.echoed is None:
            # It serves frames but does not close after eof: the eof scenarios say so.
            return Verdict(
                f"serves frames, but no close after an eof within {ck.timeout:g} s", [], []
            )
        problem = f"{run.error}{_output(s)}"
        return Verdict(problem, [problem], run.stderr_tail())
    if raw:
        c = s.clients[1]
        seen = f"answered its first data in {p.ms:.0f} ms (consumed n={c.ns})"
    else:
        seen = f"closed a client on its eof in {p.ms:.0f} ms"
    return Verdict(seen, [], [])


def expected(framing: str) -> str:
    return RAW_EXPECTED if framing == "raw" else FRAMED_EXPECTED
