"""The scenarios of the framed modes (``--framing line|crlf|packet2|packet4|netstring``).

``hello`` names the framing, clients send whole ``frame`` messages (no reply is
expected, so there is nothing to split at the protocol level) and ``eof`` when
they half-close. The checks: no ``consumed`` ever; writes (framed as tgate
would frame them, or ``raw``) only to known, live ids; a client that sent
``eof`` is closed by the handler within the timeout; many interleaved clients
each get what they get alone. The end of a client's output is recognised by
that close, so a handler that never closes after ``eof`` fails every scenario
that needs it, each saying so. Where nothing is answered, the proof that the
handler has read a ``disconnect`` is its ``close`` of a client whose ``eof``
was sent after it.
"""

from __future__ import annotations

import trio

from .checker import (
    Checker,
    ExitInfo,
    Scenario,
    Verdict,
    exit_verdict,
    interleaved_verdict,
    timed_finish,
    unknown_ops_verdict,
)
from .common import FRAMES, MANY_CLIENTS, REASONS
from .scenarios_raw import HELLO, STDIN_EOF_EXPECTED, ids_live_seen
from .session import Session


def binary_frames(framing: str) -> list[bytes]:
    """Frames holding every byte 0..255 that the framing can carry in a frame."""
    if framing in ("line", "crlf"):  # a line holds no LF
        return [bytes(range(10)), bytes(range(11, 256)), bytes(range(0x80, 0x100)) * 4 + b"\r"]
    return [bytes(range(256)), bytes(range(255, -1, -1)), b"\n\n\n\r\n", b"", b"\x00" * 300]


async def fr_frames(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.frames(1, FRAMES)
        s.tick()
        await s.settle(ck.quiet)  # answers, and any consumed, come now

    run = await ck.run("frames", body)
    seen = "no run"
    if run.session is not None:
        c = run.session.clients[1]
        seen = (
            f"{c.frames_sent} frames, no consumed; {c.writes} writes back "
            f"({len(c.out)} bytes framed)"
        )
        if c.ns or run.session.violations:
            seen = "replies that are not allowed in a framed mode"
    return ck.verdict(seen, [run])


async def fr_ids_live(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        for cid in (1, 2, 3):
            s.connect(cid)
            s.frames(cid, FRAMES)
        s.disconnect(2, "reset")
        s.frames(1, [b"more"])
        s.eof(1)
        await s.closed(1)  # the handler read the disconnect of client 2
        s.tick()
        s.frames(3, [b"again"])
        s.connect(4)
        s.frames(4, FRAMES)
        s.eof(3)
        s.eof(4)
        await s.closed(3, 4)
        await s.settle(ck.quiet)

    run = await ck.run("ids-live", body)
    return ck.verdict(ids_live_seen(run), [run])


async def fr_close(ck: Checker) -> Verdict:
    last = len(REASONS) + 1

    async def body(s: Session) -> None:
        s.hello()
        for cid, reason in enumerate(REASONS, 1):
            s.connect(cid)
            s.frames(cid, FRAMES)
            s.disconnect(cid, reason)
        s.connect(last)
        s.frames(last, FRAMES)
        s.eof(last)
        await s.closed(last)  # fences every client above
        await s.settle(ck.quiet)

    run = await ck.run("close", body)
    seen = f"survived all {len(REASONS)} disconnect reasons; nothing for closed clients"
    return ck.verdict(seen, [run])


async def fr_disconnect_pending(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.frames(1, FRAMES)  # still being handled when the client resets
        s.disconnect(1, "reset")
        s.frames(2, FRAMES)
        s.eof(2)
        await s.closed(2)  # closing after that eof: the disconnect was read
        s.tick()
        s.connect(3)
        s.frames(3, FRAMES)
        s.eof(3)
        await s.closed(3)
        await s.settle(ck.quiet)

    run = await ck.run("disconnect-pending", body)
    return ck.verdict("nothing for client 1 after its disconnect", [run])


async def fr_ticks(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.tick()
        s.connect(1)
        s.tick()
        s.frames(1, FRAMES[:2])
        s.tick()
        s.tick()
        s.frames(1, FRAMES[2:])
        s.tick()
        s.eof(1)
        s.tick()
        await s.closed(1)
        for _ in range(5):
            s.tick()
        s.connect(2)
        s.frames(2, FRAMES)
        s.eof(2)
        await s.closed(2)
        await s.settle(ck.quiet)

    run = await ck.run("ticks", body)
    return ck.verdict("10 ticks, no reply needed; still serving afterwards", [run])


async def fr_many(ck: Checker) -> Verdict:
    n = MANY_CLIENTS
    reference = await ck.framed_reference()
    info: dict[str, int] = {}

    async def bystander(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.settle(ck.quiet)  # greetings for client 2, if any, come now
        info["before"] = s.clients[2].writes
        s.frames(1, FRAMES)
        s.eof(1)
        await s.closed(1)  # client 1's frames were handled: did client 2 get anything?
        info["after"] = s.clients[2].writes

    probe = await ck.run("bystander", bystander)
    cross = info.get("after", 0) > info.get("before", 0)

    async def many(s: Session) -> None:
        s.hello()
        for cid in range(1, n + 1):
            s.connect(cid)
        for i in range(len(FRAMES)):  # round robin: one frame per client at a time
            for cid in range(1, n + 1):
                s.frames(cid, FRAMES[i : i + 1])
        for cid in range(1, n + 1):
            s.eof(cid)
        await s.closed(*range(1, n + 1))

    run = await ck.run(f"{n} clients", many)
    return interleaved_verdict(
        ck,
        (reference, probe, run),
        n,
        cross,
        lambda cid: f"frames interleaved with {n - 1} others",
        "frames",
    )


async def fr_binary(ck: Checker) -> Verdict:
    frames = binary_frames(ck.framing)

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.frames(1, frames)
        s.eof(1)
        await s.closed(1)
        s.connect(2)
        s.frames(2, frames[::-1])
        s.connect(3)
        s.frames(3, FRAMES)
        s.eof(2)
        s.eof(3)
        await s.closed(2, 3)
        await s.settle(ck.quiet)

    run = await ck.run("binary", body)
    return ck.verdict(f"bytes 0..255 in {len(frames)} frames ({ck.framing}); still serving", [run])


async def fr_eof(ck: Checker) -> Verdict:
    info: dict[str, float] = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.connect(3)
        s.frames(1, FRAMES)
        s.frames(3, FRAMES[:2])
        t0 = trio.current_time()
        s.eof(1)
        await s.closed(1)
        info["1"] = trio.current_time() - t0
        t0 = trio.current_time()
        s.eof(2)  # no frame at all
        await s.closed(2)
        info["2"] = trio.current_time() - t0
        s.frames(3, FRAMES[2:])  # client 3 was not at EOF: still served
        s.eof(3)
        await s.closed(3)
        await s.settle(ck.quiet)

    run = await ck.run("eof", body)
    seen = "no close after eof"
    if "2" in info:
        seen = (
            f"closed on eof in {info['1'] * 1000:.0f} ms (after {len(FRAMES)} frames) "
            f"and {info['2'] * 1000:.0f} ms (no frame)"
        )
    return ck.verdict(seen, [run])


async def fr_unknown(ck: Checker) -> Verdict:
    reference = await ck.framed_reference("without unknown ops")

    async def body(s: Session) -> None:
        s.hello(features=["future"], limits={"x": 1})
        s.send({"op": "future-op", "what": "ignore me"})
        s.connect(1, tls=True, proxy=None)
        s.send({"op": "future-op", "id": 1, "data": "not client bytes"})
        s.frames(1, FRAMES, ts=1.5, seq=[1, 2])
        s.eof(1, why="future")
        await s.closed(1)

    return unknown_ops_verdict(ck, reference, await ck.run("with unknown ops", body))


async def fr_stdin_eof(ck: Checker) -> Verdict:
    info: ExitInfo = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        s.frames(1, FRAMES)
        s.frames(2, FRAMES[:1])
        s.eof(1)  # not waiting for its close: a handler must exit whatever it owes
        await s.settle(ck.quiet)
        await timed_finish(s, info)

    return exit_verdict(ck, await ck.run("stdin-eof", body), info)


FRAMED_SCENARIOS = [
    HELLO,
    Scenario("frames", "frames need no reply: never a consumed", fr_frames),
    Scenario("ids-live", "writes only to known, live ids", fr_ids_live),
    Scenario("close", "any disconnect reason: survive, then silence", fr_close),
    Scenario(
        "disconnect-pending", "nothing for a client after its disconnect", fr_disconnect_pending
    ),
    Scenario("ticks", "ticks need no reply; handler survives", fr_ticks),
    Scenario("many-clients", f"{MANY_CLIENTS} interleaved = each alone", fr_many),
    Scenario("binary", "bytes 0..255 in frames: valid replies", fr_binary),
    Scenario("eof", "eof: the handler closes that client", fr_eof),
    Scenario("unknown-ops", "unknown ops and fields ignored", fr_unknown),
    Scenario("stdin-eof", STDIN_EOF_EXPECTED, fr_stdin_eof),
]
