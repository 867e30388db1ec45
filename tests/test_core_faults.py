"""The core under faults (sans-IO): quarantine that blames only the guilty,
the handler byte budget in every state, mistyped replies, log volume, and
the output limit applied after a send attempt."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from tgate.core import PIPE_HIGH_WATER, Client, Core, Settings

Msg = dict[str, Any]
PEER = ("127.0.0.1", 40312)
LOCAL = ("127.0.0.1", 7000)


def up(**kw: Any) -> Core:
    core = Core(Settings(**kw))
    core.handler_started()
    core.take_outbox()
    return core


def msgs(core: Core) -> list[Msg]:
    return [orjson.loads(x) for x in bytes(core.take_outbox()).splitlines()]


def send(core: Core, obj: object) -> None:
    core.handler_output(orjson.dumps(obj) + b"\n")


def crash(core: Core) -> tuple[list[Client], list[Msg]]:
    q = core.handler_lost(crashed=True)
    core.handler_started()
    return q, msgs(core)


def data_ids(out: list[Msg]) -> list[int]:
    return [m["id"] for m in out if m["op"] == "data"]


# ------------------------------------------------------------------ quarantine


def serve(core: Core, poison: Client) -> tuple[list[Client], int]:
    """A line handler that answers every data message at once, except that
    the poison client's bytes crash it; returns who was quarantined and how
    many crashes it took for everything to settle."""
    quarantined: list[Client] = []
    crashes = 0
    out = msgs(core)
    for _ in range(100):
        if not out and not core.quarantine.on_trial:
            return quarantined, crashes
        if poison.id in data_ids(out):
            q, out = crash(core)
            crashes += 1
            quarantined += q
            continue
        for m in out:
            if m["op"] == "data":
                n = len(m["data"])
                send(core, [{"op": "write", "id": m["id"], "data": m["data"]},
                            {"op": "consumed", "id": m["id"], "n": n}])
        out = msgs(core)
    raise AssertionError("never settled")


def test_poison_with_lowest_id_and_busy_bystanders_only_poison_quarantined() -> None:
    # Issue 11.5: the poison client has the lowest id and five others are
    # sending as it crashes the handler; the replay used to put all six in
    # flight at every crash, and all six were quarantined.
    core = up(quarantine_after=3)
    poison = core.connect(PEER, LOCAL)
    others = [core.connect(PEER, LOCAL) for _ in range(5)]
    core.received(poison, b"ok\nCRASH\n")
    for c in others:
        core.received(c, b"hello\n")
    # all six are in flight at the first crash
    q = core.handler_lost(crashed=True)
    assert q == []
    core.handler_started()
    quarantined, crashes = serve(core, poison)
    assert quarantined == [poison]
    assert poison.closing == "quarantined"
    assert crashes == 3  # three strikes alone, after the first ambiguous crash
    for c in others:
        assert c.closing is None and not c.suspect and c.strikes == 0
        assert bytes(c.out) == b"hello\n"  # answered exactly once
        assert len(c.buffer) == 0
    assert not core.quarantine.suspects and core.quarantine.on_trial is None


def test_crash_with_several_in_flight_counts_no_strike_and_holds_suspects() -> None:
    core = up(quarantine_after=1)
    a = core.connect(PEER, LOCAL)
    b = core.connect(PEER, LOCAL)
    core.received(a, b"x")
    core.received(b, b"y")
    q, out = crash(core)
    assert q == []  # with limit 1, a strike would have quarantined someone
    assert a.strikes == b.strikes == 0 and a.suspect and b.suspect
    assert core.quarantine.on_trial is a
    assert data_ids(out) == [1]  # b is held while a is tried alone
    core.received(b, b"z")  # held suspects keep their bytes
    assert msgs(core) == []
    send(core, {"op": "consumed", "id": 1, "n": 1})  # a survived: acquitted
    assert not a.suspect and core.quarantine.on_trial is b
    assert msgs(core) == [{"op": "data", "id": 2, "data": "yz"}]
    q, out = crash(core)  # b alone in flight: guilty at once (limit 1)
    assert q == [b] and b.closing == "quarantined"
    assert data_ids(out) == []


def test_trial_suspect_leaving_puts_the_next_on_trial() -> None:
    core = up(quarantine_after=2)
    a, b, c = (core.connect(PEER, LOCAL) for _ in range(3))
    for x in (a, b, c):
        core.received(x, b"m")
    crash(core)
    assert core.quarantine.on_trial is a
    core.gone(a, "reset")
    assert core.quarantine.on_trial is b
    assert data_ids(msgs(core)) == [2]


def test_innocent_in_flight_with_trial_makes_both_suspects_again() -> None:
    core = up(quarantine_after=2)
    a, b, c = (core.connect(PEER, LOCAL) for _ in range(3))
    core.received(a, b"1")
    core.received(b, b"2")
    crash(core)  # a on trial, b held
    core.received(c, b"3")  # c is no suspect: it is not held
    assert data_ids(msgs(core)) == [3]
    q, _ = crash(core)  # a and c in flight: no strike
    assert q == [] and a.strikes == 0 and c.suspect
    assert core.quarantine.on_trial is a  # back in front


def test_framed_trial_acquitted_by_output_after_its_frames() -> None:
    core = up(quarantine_after=2, framing="line")
    a = core.connect(PEER, LOCAL)
    b = core.connect(PEER, LOCAL)
    core.received(a, b"x\n")
    core.received(b, b"y\n")
    core.take_outbox()
    core.received(a, b"held")  # incomplete frames stay in the buffers
    core.received(b, b"more")
    crash(core)  # both had frames in flight: suspects, a on trial
    assert core.quarantine.on_trial is a
    core.received(a, b"\n")
    assert [m["op"] for m in msgs(core)] == ["frame"]
    send(core, {"op": "write", "id": 1, "data": "ok"})
    assert not a.suspect and core.quarantine.on_trial is b


# ------------------------------------------------------------------ replies


@pytest.mark.parametrize("bad", [1.5, "3", None, True, [1]])
def test_mistyped_consumed_disconnects_that_client(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tgate")
    core = up()
    c = core.connect(PEER, LOCAL)
    other = core.connect(PEER, LOCAL)
    core.received(c, b"abc")
    send(core, {"op": "consumed", "id": 1, "n": bad})
    assert c.closing == "error"
    assert other.closing is None
    (rec,) = [r for r in caplog.records if r.name == "tgate"]
    assert "client 1" in rec.getMessage() and "error" in rec.getMessage()


def test_broadcast_to_many_unknown_ids_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tgate")
    core = up()
    c = core.connect(PEER, LOCAL)
    ids = [1, *range(1000, 301000)]
    send(core, {"op": "write", "ids": ids, "data": "x"})
    assert bytes(c.out) == b"x"
    recs = [r for r in caplog.records if r.name == "tgate"]
    assert len(recs) == 1
    assert "300000 in all" in recs[0].getMessage()


# ------------------------------------------------------------------ the budget


def test_framed_flood_is_paced_through_the_budget() -> None:
    # Issue 20.1: 64 KiB of empty lines per client became one small bytes
    # object per frame, all queued at once, whatever the high-water mark.
    core = up(framing="line", max_bufsize=1 << 16, bufsize=1 << 16)
    clients = [core.connect(PEER, LOCAL) for _ in range(100)]
    core.take_outbox()
    for c in clients:
        core.received(c, b"\n" * ((1 << 16) - 1))
    # one client's worth of frames may overshoot the budget, no more
    per_client = len(b'{"op":"frame","id":100,"data":""}\n') * ((1 << 16) - 1)
    assert core.outbox_size <= PIPE_HIGH_WATER + per_client
    assert type(core.outbox) is bytearray  # one buffer, not a list of messages
    assert core.backlog  # the rest wait with their bytes in their buffers
    waiting = list(core.backlog)
    assert all(len(c.buffer) for c in waiting)
    # the pipe drains: the backlog is forwarded, still within the budget
    total = 0
    while core.outbox or core.backlog:
        total += len(core.take_outbox())
        core.pump()
        assert core.outbox_size <= PIPE_HIGH_WATER + per_client
    assert total >= 100 * ((1 << 16) - 1) * len(b'{"op":"frame","id":1,"data":""}\n')
    assert all(len(c.buffer) == 0 for c in clients)


def test_replay_is_paced_through_the_budget() -> None:
    # Issue 20.2: a reload queued every client's full buffer at once.
    core = up(bufsize=1 << 16, max_bufsize=1 << 16, quarantine_after=0)
    clients = [core.connect(PEER, LOCAL) for _ in range(400)]
    for c in clients:
        core.received(c, b"\0" * 65535)  # 6x in JSON
        core.take_outbox()
        send(core, {"op": "consumed", "id": c.id, "n": 0})
    assert not core.outbox and core.owed == 0
    core.handler_lost(crashed=False)
    core.handler_started()
    one = len(b'{"op":"data","id":400,"data":""}\n') + 6 * 65535
    assert core.outbox_size <= PIPE_HIGH_WATER + one
    sent = 0
    while core.outbox or core.backlog:
        sent += bytes(core.take_outbox()).count(b'"op":"data"')
        core.pump()
        assert core.outbox_size <= PIPE_HIGH_WATER + one
    assert sent == 400 and core.owed == 400


def test_held_bytes_accounting() -> None:
    core = up()
    c = core.connect(PEER, LOCAL)
    core.take_outbox()
    core.received(c, b"abcd")
    assert core.held_bytes == 4 + core.outbox_size
    core.pipe_pending = 10
    assert core.held_bytes == 4 + core.outbox_size + 10


def test_connects_are_not_read_while_budget_spent() -> None:
    core = up()
    c = core.connect(PEER, LOCAL)
    core.outbox += b"x" * PIPE_HIGH_WATER
    assert core.pipe_full and not core.can_read(c)


# ------------------------------------------------------------------ hang clock


def test_oldest_owed_tracks_the_oldest_unanswered_data() -> None:
    now = [100.0]
    core = Core(Settings(), clock=lambda: now[0])
    core.handler_started()
    a = core.connect(PEER, LOCAL)
    b = core.connect(PEER, LOCAL)
    assert core.oldest_owed() is None
    core.received(a, b"1")
    now[0] = 105.0
    core.received(b, b"2")
    # the handler keeps answering b: a's request still ages
    for _ in range(3):
        send(core, {"op": "consumed", "id": b.id, "n": 1})
        now[0] += 1
        core.received(b, b"3")
    assert core.oldest_owed() == 100.0
    send(core, {"op": "consumed", "id": a.id, "n": 1})
    assert core.oldest_owed() == 108.0
