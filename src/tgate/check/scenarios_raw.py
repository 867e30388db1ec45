"""The scenarios of raw mode (tgate's default): data, consumed, the byte counting.

Besides the protocol's own rules, they check one invariant that holds for any
handler fit to sit behind TCP, whose segmentation is arbitrary: the same bytes
from a client produce the same bytes to that client, however they were split
into ``data`` messages. "Nothing for a client after its disconnect" is judged
from the moment the handler has answered a ``data`` sent after that
``disconnect``; before that, a reply may be on its way.
"""

from __future__ import annotations

from .checker import (
    Checker,
    ExitInfo,
    Run,
    Scenario,
    Verdict,
    comparable,
    exit_verdict,
    interleaved_verdict,
    timed_finish,
    unknown_ops_verdict,
)
from .common import BINARY, MANY_CLIENTS, PROBE, REASONS, Fail, diff, short
from .session import Session


async def sc_hello(ck: Checker) -> Verdict:
    """No client, no output; then exit 0 on stdin EOF (raw and framed alike)."""
    quiet = min(1.0, ck.timeout / 4)
    info: ExitInfo = {}

    async def body(s: Session) -> None:
        s.hello()
        await s.settle(quiet)
        if s.line_count:
            raise Fail(
                f"wrote {s.line_count} line(s) after hello with no client: {short(s.lines[0])}"
            )
        if s.stdout_eof:
            raise Fail(f"handler {s.exit_text()} after hello, before stdin EOF")
        await timed_finish(s, info)

    run = await ck.run("hello-silence", body)
    return exit_verdict(ck, run, info, f"silent {quiet:g} s; ")


async def sc_one_data(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [PROBE]})
        await s.settle(ck.quiet)  # a second consumed would show up here

    run = await ck.run("one-data", body)
    extra = []
    seen = "no reply"
    if run.session is not None:
        c = run.session.clients[1]
        seen = f"{len(c.ns)} consumed: n={c.ns} for {len(PROBE)} bytes held"
        if run.error is None and len(c.ns) != 1:
            extra.append(f"{len(c.ns)} consumed replies to one data for client 1 (expected 1)")
    return ck.verdict(seen, [run], extra)


async def sc_split(ck: Checker) -> Verdict:
    variants: list[tuple[str, list[bytes]]] = [
        ("byte-by-byte", [PROBE[i : i + 1] for i in range(len(PROBE))])
    ]
    variants += [(f"split at byte {k}", [PROBE[:k], PROBE[k:]]) for k in range(1, len(PROBE))]
    reference = await ck.solo_reference()
    results: dict[str, Run] = {}
    for label, chunks in variants:  # in order: runs are never concurrent anyway
        results[label] = await ck.solo_reference(chunks, label)
    runs = [reference] + [results[label] for label, _ in variants]
    expected = reference.out(1)
    differing = [
        label
        for label, _ in variants
        if comparable(results[label]) and results[label].out(1) != expected
    ]
    if not comparable(reference):
        differing = []  # no sound reference to compare with
    mismatches = [
        f"{label}: output to client 1 differs from the unsplit run: "
        f"{diff(expected, results[label].out(1))}"
        for label in differing
    ]
    extra = mismatches[:3]
    if len(mismatches) > 3:
        extra.append(f"... and {len(mismatches) - 3} more splits whose output differs")
    seen = (
        f"{len(variants) + 1} runs (unsplit, bytewise, each 2-piece split): "
        f"same {len(expected)}-byte output"
    )
    if mismatches:
        seen = f"{len(mismatches)} of {len(variants)} splits changed the output"
    verdict = ck.verdict(seen, runs, extra)
    if differing and not verdict.stderr:
        verdict.stderr = results[differing[0]].stderr_tail()
    return verdict


async def sc_ids_live(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        for cid in (1, 2, 3):
            s.connect(cid)
        await s.drive({1: [PROBE], 2: [PROBE], 3: [PROBE]})
        s.disconnect(2, "reset")
        await s.drive({1: [b"more\n"], 3: [b"more\n"]})  # their replies fence client 2
        s.tick()
        await s.drive({1: [b"again\n"], 3: [b"again\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("ids-live", body)
    return ck.verdict(ids_live_seen(run), [run])


def ids_live_seen(run: Run) -> str:
    if run.session is None:
        return "no run"
    if run.session.violations:
        return "writes to ids that are unknown or gone"
    writes = sum(c.writes for c in run.session.clients.values())
    return f"{writes} client writes over {run.session.line_count} lines, all to live ids"


async def sc_close(ck: Checker) -> Verdict:
    last = len(REASONS) + 1

    async def body(s: Session) -> None:
        s.hello()
        for cid, reason in enumerate(REASONS, 1):
            s.connect(cid)
            await s.drive({cid: [PROBE]})
            s.disconnect(cid, reason)
        s.connect(last)
        await s.drive({last: [PROBE]})  # fences every client above
        await s.drive({last: [b"bye\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("close", body)
    seen = f"survived all {len(REASONS)} disconnect reasons; nothing for closed clients"
    if run.session is not None and run.session.closes:
        seen += f"; its {run.session.closes} close(s) answered with disconnect 'closed'"
    return ck.verdict(seen, [run])


async def sc_disconnect_pending(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.drive({1: [PROBE]})
        s.data(1, b"more\x00data")  # in flight when the client resets
        s.disconnect(1, "reset")
        await s.drive({2: [PROBE]})  # sent after the disconnect: its reply fences client 1
        s.tick()
        await s.drive({2: [b"again\n"]})
        await s.settle(ck.quiet)

    run = await ck.run("disconnect-pending", body)
    seen = "nothing for client 1 after its disconnect"
    if run.session is not None:
        c = run.session.clients[1]
        seen += f" (it held {c.held} unconsumed bytes)"
    return ck.verdict(seen, [run])


async def sc_ticks(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.tick()
        s.connect(1)
        s.tick()
        s.data(1, PROBE[:7])
        s.tick()
        s.tick()
        await s.reply(1)
        s.tick()
        s.data(1, PROBE[7:])
        s.tick()
        await s.reply(1)
        for _ in range(5):
            s.tick()
        s.connect(2)
        await s.drive({2: [PROBE]})
        await s.settle(ck.quiet)

    run = await ck.run("ticks", body)
    return ck.verdict("11 ticks, no reply needed; still serving afterwards", [run])


async def sc_many(ck: Checker) -> Verdict:
    n = MANY_CLIENTS
    reference = await ck.solo_reference(tag="client alone")
    info: dict[str, int] = {}

    async def bystander(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.settle(ck.quiet)  # greetings for client 2, if any, come now
        info["before"] = s.clients[2].writes
        await s.drive({1: [PROBE]})

    probe = await ck.run("bystander", bystander)
    cross = probe.session is not None and probe.session.clients[2].writes > info.get("before", 0)

    def chunks_for(cid: int) -> list[bytes]:
        size = cid % 7 + 1
        return [PROBE[i : i + size] for i in range(0, len(PROBE), size)]

    async def many(s: Session) -> None:
        s.hello()
        for cid in range(1, n + 1):
            s.connect(cid)
        await s.drive({cid: chunks_for(cid) for cid in range(1, n + 1)})

    run = await ck.run(f"{n} clients", many)
    return interleaved_verdict(
        ck,
        (reference, probe, run),
        n,
        cross,
        lambda cid: f"fed {cid % 7 + 1}-byte chunks, interleaved with {n - 1} others",
        "bytes",
    )


async def sc_binary(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [BINARY]})
        s.connect(2)
        await s.drive({2: [bytes([b]) for b in reversed(BINARY)]})
        s.connect(3)
        await s.drive({3: [bytes(range(0x80, 0x100)) * 4 + b"\r\n"]})
        s.connect(4)
        await s.drive({4: [PROBE]})
        await s.settle(ck.quiet)

    run = await ck.run("binary", body)
    return ck.verdict("bytes 0..255 whole and byte by byte; still serving", [run])


async def sc_eof(ck: Checker) -> Verdict:
    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        await s.drive({1: [PROBE]})
        s.data(1, b"", eof=True)
        await s.reply(1)
        s.disconnect(1, "eof")
        s.connect(2)
        await s.drive({2: [PROBE[:10], PROBE[10:20]]})
        s.data(2, PROBE[20:], eof=True)
        await s.reply(2)
        s.disconnect(2, "eof")
        s.connect(3)
        await s.drive({3: [PROBE]})  # fences clients 1 and 2
        await s.settle(ck.quiet)

    run = await ck.run("eof", body)
    extra: list[str] = []
    seen = "no run"
    if run.session is not None:
        c1, c2 = run.session.clients.get(1), run.session.clients.get(2)
        if run.error is None:
            for c in (c1, c2):
                if c is not None and len(c.ns) != c.data_sent:
                    extra.append(
                        f"client {c.cid}: {len(c.ns)} consumed replies to {c.data_sent} data"
                    )
        seen = (
            f"eof data answered once each: empty eof n={c1.ns[-1:] if c1 else '-'}, "
            f"eof with bytes n={c2.ns[-1:] if c2 else '-'}"
        )
    return ck.verdict(seen, [run], extra)


async def sc_unknown(ck: Checker) -> Verdict:
    reference = await ck.solo_reference()

    async def body(s: Session) -> None:
        s.hello(features=["future"], limits={"x": 1})
        s.send({"op": "future-op", "what": "ignore me"})
        s.connect(1, tls=True, proxy=None)
        s.send({"op": "future-op", "id": 1, "data": "not client bytes"})
        s.data(1, PROBE, ts=1.5, seq=[1, 2])
        await s.reply(1)

    return unknown_ops_verdict(ck, reference, await ck.run("with unknown ops", body))


async def sc_stdin_eof(ck: Checker) -> Verdict:
    info: ExitInfo = {}

    async def body(s: Session) -> None:
        s.hello()
        s.connect(1)
        s.connect(2)
        await s.drive({1: [PROBE], 2: [b"partial"]})
        await timed_finish(s, info)

    return exit_verdict(ck, await ck.run("stdin-eof", body), info)


HELLO = Scenario("hello-silence", "no output after hello; exit 0 on stdin EOF", sc_hello)
STDIN_EOF_EXPECTED = "exit 0 promptly on stdin EOF"

SCENARIOS = [
    HELLO,
    Scenario("one-data", "exactly one consumed, 0 <= n <= held", sc_one_data),
    Scenario("split", "same output however the bytes are split", sc_split),
    Scenario("ids-live", "writes only to known, live ids", sc_ids_live),
    Scenario("close", "any disconnect reason: survive, then silence", sc_close),
    Scenario(
        "disconnect-pending", "nothing for a client after its disconnect", sc_disconnect_pending
    ),
    Scenario("ticks", "ticks need no reply; handler survives", sc_ticks),
    Scenario("many-clients", f"{MANY_CLIENTS} interleaved = each alone", sc_many),
    Scenario("binary", "bytes 0..255: no crash, valid replies", sc_binary),
    Scenario("eof", "eof data gets exactly one consumed", sc_eof),
    Scenario("unknown-ops", "unknown ops and fields ignored", sc_unknown),
    Scenario("stdin-eof", STDIN_EOF_EXPECTED, sc_stdin_eof),
]
