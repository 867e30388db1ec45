"""The fake gateway's side of protocol v1: what it sends, and what it makes of replies.

A `Session` is one handler process (a `Driver`) plus tgate's bookkeeping per
client: bytes sent and consumed, the data awaiting its reply, the bytes tgate
would send the client, and whether the handler may still address it; and the
channels (``subscribe``/``publish``), which live in tgate. The session plays
worker 0 of a pool of 1. Every line the handler writes is validated
(`validate`) and applied as tgate would apply it; misbehaviour is recorded in
`violations`, invalid lines in `line_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import trio

from tgate import __version__
from tgate.framing import FrameError, Framer, framer_class

from .common import GATEWAY_OPS, MAX_CHANNEL_NAME, Msg, is_int, short
from .driver import Driver


@dataclass
class Client:
    """What the fake gateway knows about one client."""

    cid: int
    sent: int = 0  # bytes sent in data messages
    consumed: int = 0  # bytes dropped by valid consumed replies
    awaiting: int | None = None  # sequence number of the data awaiting its consumed
    awaiting_len: int = 0
    ns: list[int] = field(default_factory=list)  # every consumed n received
    data_sent: int = 0
    eof_sent: bool = False
    closed_by_handler: bool = False
    disconnect_seq: int | None = None  # sequence number of our disconnect line
    fenced: bool = False  # the handler has provably seen the disconnect
    fence_proof: str = ""  # how we know it has (for the message)
    frames_sent: int = 0  # framed modes: frame messages sent
    eof_seq: int | None = None  # framed modes: sequence number of our eof line
    writes: int = 0  # write ops addressed to this client (kept or not), publishes reaching it
    out: bytearray = field(default_factory=bytearray)  # bytes tgate would send the client
    channels: set[str] = field(default_factory=set)  # the channels it is subscribed to

    @property
    def held(self) -> int:
        return self.sent - self.consumed

    @property
    def gone(self) -> bool:
        return self.disconnect_seq is not None


class Session(Driver):
    """One handler process, driven as tgate would drive it."""

    def __init__(self, proc: trio.Process, tag: str, framing: str = "raw") -> None:
        super().__init__(proc, tag)
        self.framing = framing
        self.framer: type[Framer] | None = framer_class(framing)
        self.clients: dict[int, Client] = {}
        self.violations: list[str] = []  # protocol misbehaviour (bounds, ids, replies)
        self.valid_lines = 0  # lines holding at least one valid message
        self.echoed: bytes | None = None  # the first line carrying an op tgate sends
        self.closes = 0
        self.channels: dict[str, set[int]] = {}  # channel -> subscribed client ids
        self.publishes = 0

    # -- sending

    def send(self, msg: Msg) -> int:
        return self.send_line(orjson.dumps(msg) + b"\n")

    def hello(self, **extra: object) -> None:
        msg: Msg = {
            "op": "hello",
            "protocol": 1,
            "tgate": __version__,
            "framing": self.framing,
            "bufsize": 128,
            "max_bufsize": 65536,
            "update_time": 1.0,
            "worker": 0,
            "workers": 1,
        }
        msg.update(extra)
        self.send(msg)

    def connect(self, cid: int, **extra: object) -> None:
        self.clients[cid] = Client(cid)
        msg: Msg = {
            "op": "connect",
            "id": cid,
            "peer": ["127.0.0.1", 40000 + cid],
            "local": ["127.0.0.1", 7000],
        }
        msg.update(extra)
        self.send(msg)

    def data(self, cid: int, chunk: bytes, *, eof: bool = False, **extra: object) -> bool:
        """Send new bytes for a client; False if tgate would not (client gone or at EOF)."""
        if self.framer is not None:
            raise RuntimeError("checker bug: data in a framed mode")
        c = self.clients[cid]
        if c.gone or c.eof_sent:
            return False
        if c.awaiting is not None:
            raise RuntimeError(f"checker bug: two data awaiting a reply for client {cid}")
        msg: Msg = {"op": "data", "id": cid, "data": chunk.decode("latin-1")}
        if eof:
            msg["eof"] = True
            c.eof_sent = True
        msg.update(extra)
        c.sent += len(chunk)
        c.data_sent += 1
        c.awaiting_len = len(chunk)
        c.awaiting = self.send(msg)
        return True

    def frames(self, cid: int, payloads: Sequence[bytes], **extra: object) -> int:
        """Framed modes: send whole frames for a client (no reply is expected);
        returns how many tgate would send (none once the client is gone or at EOF)."""
        if self.framer is None:
            raise RuntimeError("checker bug: frames in raw mode")
        c = self.clients[cid]
        sent = 0
        for payload in payloads:
            if c.gone or c.eof_sent:
                break
            msg: Msg = {"op": "frame", "id": cid, "data": payload.decode("latin-1")}
            msg.update(extra)
            self.send(msg)
            c.frames_sent += 1
            sent += 1
        return sent

    def eof(self, cid: int, **extra: object) -> bool:
        """Framed modes: the client half-closed. The handler must close it."""
        c = self.clients[cid]
        if self.framer is None:
            raise RuntimeError("checker bug: eof in raw mode")
        if c.gone or c.eof_sent:
            return False
        c.eof_sent = True
        msg: Msg = {"op": "eof", "id": cid}
        msg.update(extra)
        c.eof_seq = self.send(msg)
        return True

    def disconnect(self, cid: int, reason: str) -> None:
        c = self.clients[cid]
        if c.gone:
            return
        # A client leaves all its channels when it disconnects.
        for name in c.channels:
            members = self.channels[name]
            members.discard(cid)
            if not members:
                del self.channels[name]
        c.channels.clear()
        if self.eof_requested:
            # e.g. a close that arrived after we closed the handler's stdin:
            # the client is gone, but there is no one left to tell.
            c.disconnect_seq = self.seq + 1
            return
        c.disconnect_seq = self.send({"op": "disconnect", "id": cid, "reason": reason})

    def tick(self) -> None:
        self.send({"op": "tick"})

    # -- waiting for replies

    def ended(self, cid: int) -> bool:
        """Framed modes: the handler has closed this client (or it is gone)."""
        c = self.clients[cid]
        return c.closed_by_handler or c.gone

    async def closed(self, *cids: int) -> None:
        """Framed modes: wait until the handler has closed these clients (after their eof)."""
        while waiting := [self.clients[cid] for cid in cids if not self.ended(cid)]:
            c = waiting[0]
            more = f" (and {len(waiting) - 1} other clients)" if len(waiting) > 1 else ""
            await self.wait_change(
                f"a close for client {c.cid}{more} after its eof ({c.frames_sent} frames "
                f"before it): in --framing {self.framing} the handler must send close for a "
                "client that sent eof, once it has answered it"
            )

    def replied(self, cid: int) -> bool:
        c = self.clients[cid]
        return c.awaiting is None or c.closed_by_handler

    @staticmethod
    def _awaiting_text(c: Client, more: str = "") -> str:
        return (
            f"a consumed reply for client {c.cid}{more} (data #{c.data_sent} of "
            f"{c.awaiting_len} bytes; handler holds {c.held} bytes)"
        )

    async def reply(self, *cids: int) -> None:
        """Wait for the consumed replies to the data awaiting for these clients."""
        while waiting := [self.clients[cid] for cid in cids if not self.replied(cid)]:
            await self.wait_change(self._awaiting_text(waiting[0]))

    async def drive(self, plan: dict[int, list[bytes]]) -> None:
        """Feed each client its chunks, one data awaiting a reply per client at most."""
        queues = {cid: list(chunks) for cid, chunks in plan.items()}
        while True:
            for cid, queue in queues.items():
                c = self.clients[cid]
                if queue and c.awaiting is None and not c.gone:
                    self.data(cid, queue.pop(0))
            busy = [cid for cid in queues if not self.replied(cid)]
            if not busy:
                return
            more = f" (and {len(busy) - 1} other clients)" if len(busy) > 1 else ""
            await self.wait_change(self._awaiting_text(self.clients[busy[0]], more))

    # -- what the handler writes

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def handle_line(self, raw: bytes) -> None:
        super().handle_line(raw)
        shown = short(raw)
        if not raw.strip():
            self.line_error("empty line (each line must hold a JSON object or array)")
            return
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.line_error(f"not JSON ({exc}): {shown}")
            return
        if isinstance(value, dict):
            elements: list[object] = [value]
        elif isinstance(value, list):
            elements = value
        else:
            self.line_error(f"not a JSON object or array of objects: {shown}")
            return
        valid = False
        for element in elements:
            if self.echoed is None and isinstance(element, dict):
                if element.get("op") in GATEWAY_OPS:
                    self.echoed = raw
            problem = validate(element)
            if problem is not None:
                where = " (in an array)" if isinstance(value, list) else ""
                self.line_error(f"{problem}{where}: {shown}")
            else:
                assert isinstance(element, dict)
                valid = True
                self._apply(element)
        self.valid_lines += valid

    def _target(self, cid: int, what: str) -> Client | None:
        """The client a handler message addresses, or None (reported) if it may not."""
        c = self.clients.get(cid)
        if c is None:
            self._violation(f"{what} for unknown client id {cid} (never connected)")
            return None
        if c.fenced:
            self._violation(f"{what} for client {cid} after its disconnect ({c.fence_proof})")
            return None
        return c

    def _fence(self, seq: int, proof: str) -> None:
        """The handler has read every line up to `seq`: disconnects before it are known."""
        for other in self.clients.values():
            if other.disconnect_seq is not None and other.disconnect_seq < seq and not other.fenced:
                other.fenced = True
                other.fence_proof = proof

    def _apply(self, msg: dict[str, object]) -> None:
        op = msg["op"]
        if op == "consumed":
            cid, n = msg["id"], msg["n"]
            assert isinstance(cid, int) and isinstance(n, int)
            self._consumed(cid, n)
        elif op == "write":
            self._write(msg)
        elif op in ("subscribe", "unsubscribe"):
            self._subscription(msg)
        elif op == "publish":
            self._publish(msg)
        elif op == "close":
            cid = msg["id"]
            assert isinstance(cid, int)
            c = self._target(cid, "close")
            if c is None or c.gone:
                return
            self.closes += 1
            c.closed_by_handler = True
            if c.eof_seq is not None:
                # Closing after the eof proves the handler read up to it (a
                # handler reads its stdin in order).
                self._fence(
                    c.eof_seq,
                    f"the handler had already closed client {cid} in answer to an eof "
                    "sent after that disconnect",
                )
            # tgate flushes the client's writes, closes it, then tells the handler
            self.disconnect(cid, "closed")

    def _consumed(self, cid: int, n: int) -> None:
        if self.framer is not None:
            # tgate drops it with a warning: in framed modes nothing is owed.
            self._violation(
                f"consumed n={n} for client {cid}: consumed is invalid in --framing "
                f"{self.framing} (frames need no reply; tgate drops the line)"
            )
            return
        c = self._target(cid, f"consumed n={n}")
        if c is None:
            return
        # Each impossible consumed is dropped by tgate, which disconnects the client
        # with reason "error"; the checker does the same.
        if c.awaiting is None:
            self._violation(
                f"consumed n={n} for client {cid} but no data was awaiting a reply "
                f"(it had {c.data_sent} data and {len(c.ns)} consumed replies already)"
            )
            self.disconnect(cid, "error")
            return
        answered, c.awaiting = c.awaiting, None
        c.ns.append(n)
        if n < 0:
            self._violation(f"consumed n={n} (negative) for client {cid}")
            self.disconnect(cid, "error")
        elif n > c.held:
            self._violation(f"consumed n={n} but handler held {c.held} bytes for client {cid}")
            self.disconnect(cid, "error")
        else:
            c.consumed += n
        self._fence(answered, "the handler had already answered data sent after that disconnect")

    def _wire(self, msg: dict[str, object], what: str) -> bytes | None:
        """The bytes a write or publish sends each client (framed as tgate frames
        them), or None (reported) if they cannot be framed."""
        data = msg["data"]
        assert isinstance(data, str)
        raw = data.encode("latin-1")
        if self.framer is not None and msg.get("raw") is not True:
            try:
                raw = self.framer.encode(raw)
            except FrameError as exc:
                self._violation(
                    f"{what} of {len(raw)} bytes cannot be framed in --framing "
                    f"{self.framing}: {exc} (tgate drops it)"
                )
                return None
        return raw

    def _subscription(self, msg: dict[str, object]) -> None:
        op, cid, name = msg["op"], msg["id"], msg["channel"]
        assert isinstance(op, str) and isinstance(cid, int) and isinstance(name, str)
        c = self._target(cid, f"{op} to channel {short(repr(name), 40)}")
        if c is None or c.gone:  # tgate ignores it for a client already closed
            return
        if op == "unsubscribe":
            members = self.channels.get(name)
            if members is not None and cid in members:
                members.discard(cid)
                c.channels.discard(name)
                if not members:
                    del self.channels[name]
            return
        self.channels.setdefault(name, set()).add(cid)
        c.channels.add(name)

    def _publish(self, msg: dict[str, object]) -> None:
        name, exclude = msg["channel"], msg.get("exclude")
        assert isinstance(name, str)
        raw = self._wire(msg, "publish")
        if raw is None:
            return
        self.publishes += 1
        # Subscribers are live: a client leaves its channels at its disconnect.
        for cid in sorted(self.channels.get(name, ())):
            c = self.clients[cid]
            if cid == exclude or c.gone:
                continue
            c.writes += 1
            c.out += raw

    def _write(self, msg: dict[str, object]) -> None:
        raw = self._wire(msg, "write")
        if raw is None:
            return
        raw_ids = msg["ids"] if "ids" in msg else [msg["id"]]
        assert isinstance(raw_ids, list)
        what = "broadcast write" if "ids" in msg else "write"
        for cid in raw_ids:
            assert isinstance(cid, int)
            c = self._target(cid, f"{what} of {len(raw)} bytes")
            if c is None:
                continue
            c.writes += 1
            if not c.gone:  # tgate drops writes for clients already closed
                c.out += raw


HANDLER_OPS = ("consumed", "write", "close", "subscribe", "unsubscribe", "publish")


def validate(msg: object) -> str | None:
    """What is wrong with one message from the handler, or None if it is valid v1."""
    if not isinstance(msg, dict):
        return f"array element is not an object ({type(msg).__name__})"
    op = msg.get("op")
    if op not in HANDLER_OPS:
        if "op" not in msg:
            return "object without an op"
        return f"unknown op {op!r} (a handler may send {', '.join(HANDLER_OPS)})"
    if op == "write":
        return _validate_write(msg)
    if op == "publish":
        return _validate_publish(msg)
    if not is_int(msg.get("id")):
        return f"{op} id is missing or not an integer: {short(repr(msg.get('id')), 40)}"
    if op == "consumed" and not is_int(msg.get("n")):
        return f"consumed n is missing or not an integer: {msg.get('n')!r}"
    if op in ("subscribe", "unsubscribe"):
        return _validate_channel(op, msg)
    return None


def _validate_channel(op: str, msg: dict[str, object]) -> str | None:
    channel = msg.get("channel")
    if not isinstance(channel, str):
        return f"{op} channel is missing or not a string: {short(repr(channel), 40)}"
    if not channel:
        return f"{op} channel is empty"
    if len(channel) > MAX_CHANNEL_NAME:
        return f"{op} channel has {len(channel)} characters (at most {MAX_CHANNEL_NAME})"
    return None


def _validate_data(op: str, data: object) -> str | None:
    if not isinstance(data, str):
        return f"{op} data is missing or not a string: {short(repr(data), 40)}"
    try:
        data.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = ord(data[exc.start])
        return (
            f"{op} data has code point U+{bad:04X} at index {exc.start} (above U+00FF: not a byte)"
        )
    return None


def _validate_raw(op: str, msg: dict[str, object]) -> str | None:
    if "raw" in msg and not isinstance(msg["raw"], bool):
        return f"{op} raw is not true or false: {short(repr(msg['raw']), 40)}"
    return None


def _validate_publish(msg: dict[str, object]) -> str | None:
    # "exclude": null means no exclude, as tgate reads it.
    exclude = msg.get("exclude")
    if exclude is not None and not is_int(exclude):
        return f"publish exclude is not an integer or null: {short(repr(exclude), 40)}"
    return (
        _validate_channel("publish", msg)
        or _validate_raw("publish", msg)
        or _validate_data("publish", msg.get("data"))
    )


def _validate_write(msg: dict[str, object]) -> str | None:
    has_id, has_ids = "id" in msg, "ids" in msg
    if has_id and has_ids:
        return "write with both id and ids"
    if not has_id and not has_ids:
        return "write without id or ids"
    if has_id and not is_int(msg["id"]):
        return f"write id is not an integer: {msg['id']!r}"
    if has_ids:
        ids = msg["ids"]
        if not isinstance(ids, list) or not all(is_int(i) for i in ids):
            return f"write ids is not a list of integers: {ids!r}"
    data = msg.get("data")
    if not isinstance(data, str):
        return f"write data is missing or not a string: {short(repr(data), 40)}"
    return _validate_raw("write", msg) or _validate_data("write", data)
