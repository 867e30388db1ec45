"""Handler protocol v1 codec: gateway messages out, handler lines in.

Sans-IO: bytes in, bytes or commands out. The wire format is specified in
docs/protocol.md. Client bytes travel as JSON strings of latin-1 code points,
so one character is one byte and ASCII stays readable.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

PROTOCOL_VERSION = 1

#: A handler line longer than this is dropped (and the stream resynchronised
#: at the next newline) instead of growing the gateway's memory without bound.
MAX_HANDLER_LINE = 16 * 1024 * 1024

_dumps = orjson.dumps
_NL = orjson.OPT_APPEND_NEWLINE


class HandlerError(Exception):
    """The handler sent something invalid. The message says what; the caller
    logs it with the offending line and drops that line (or element)."""


# Commands are NamedTuples: the hot path builds one per handler instruction,
# and a tuple is several times cheaper to make than a frozen dataclass.
class Consumed(NamedTuple):
    id: int
    n: int


class Write(NamedTuple):
    ids: tuple[int, ...]
    data: bytes
    #: framed modes: send the bytes as they are, without framing them
    raw: bool = False


class Close(NamedTuple):
    id: int


class Subscribe(NamedTuple):
    id: int
    channel: str


class Unsubscribe(NamedTuple):
    id: int
    channel: str


class Publish(NamedTuple):
    channel: str
    data: bytes
    #: a client id not to send it to (the sender, typically)
    exclude: int | None = None
    raw: bool = False


#: Longest channel name, in characters.
MAX_CHANNEL_NAME = 256


class Invalid(NamedTuple):
    """An instruction about a live client that is wrong in a way the client
    would pay for (a ``consumed`` whose ``n`` is not an integer would leave
    it waiting forever): the core disconnects that client (reason error)."""

    id: int
    error: str


Command = Consumed | Write | Close | Invalid | Subscribe | Unsubscribe | Publish


# ---------------------------------------------------------------- gateway -> handler


def encode_hello(
    *, tgate_version: str, framing: str, bufsize: int, max_bufsize: int, update_time: float,
    worker: int = 0, workers: int = 1,
) -> bytes:
    return _dumps(
        {
            "op": "hello",
            "protocol": PROTOCOL_VERSION,
            "tgate": tgate_version,
            "framing": framing,
            "bufsize": bufsize,
            "max_bufsize": max_bufsize,
            "update_time": update_time,
            "worker": worker,
            "workers": workers,
        },
        option=_NL,
    )


def encode_connect(
    cid: int, peer: tuple[str, int], local: tuple[str, int], replay: bool = False
) -> bytes:
    if replay:
        msg = {"op": "connect", "id": cid, "peer": peer, "local": local, "replay": True}
        return _dumps(msg, option=_NL)
    return _dumps({"op": "connect", "id": cid, "peer": peer, "local": local}, option=_NL)


def encode_data(cid: int, data: bytes, eof: bool = False) -> bytes:
    if eof:
        msg = {"op": "data", "id": cid, "data": data.decode("latin-1"), "eof": True}
        return _dumps(msg, option=_NL)
    return _dumps({"op": "data", "id": cid, "data": data.decode("latin-1")}, option=_NL)


def encode_frame(cid: int, payload: bytes) -> bytes:
    return _dumps({"op": "frame", "id": cid, "data": payload.decode("latin-1")}, option=_NL)


def encode_eof(cid: int) -> bytes:
    return _dumps({"op": "eof", "id": cid}, option=_NL)


def encode_disconnect(cid: int, reason: str) -> bytes:
    return _dumps({"op": "disconnect", "id": cid, "reason": reason}, option=_NL)


TICK = b'{"op":"tick"}\n'


# ---------------------------------------------------------------- handler -> gateway


def _client_id(obj: dict[str, object], key: str = "id") -> int:
    cid = obj.get(key)
    if type(cid) is not int:
        if cid is None:
            raise HandlerError(f"missing field {key!r}")
        raise HandlerError(f"field {key!r} must be an integer client id, not {cid!r}")
    return cid


def _data(obj: dict[str, object]) -> bytes:
    data = obj.get("data")
    if type(data) is not str:
        if data is None:
            raise HandlerError("missing field 'data'")
        raise HandlerError(f"field 'data' must be a string, not {type(data).__name__}")
    try:
        return data.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = data[exc.start]
        raise HandlerError(
            f"'data' has code point U+{ord(bad):04X} at {exc.start}; "
            "bytes are code points U+0000..U+00FF"
        ) from None


def _channel(obj: dict[str, object]) -> str:
    channel = obj.get("channel")
    if type(channel) is not str:
        if channel is None:
            raise HandlerError("missing field 'channel'")
        raise HandlerError(f"field 'channel' must be a string, not {type(channel).__name__}")
    if not 0 < len(channel) <= MAX_CHANNEL_NAME:
        raise HandlerError(f"channel name must be 1 to {MAX_CHANNEL_NAME} characters, "
                           f"not {len(channel)}")
    return channel


def parse_command(obj: object) -> Command:
    """One handler instruction (a decoded JSON object) -> a Command.

    Raises HandlerError naming what is wrong. Unknown extra fields are ignored.
    """
    # Fast path for the two instructions of every reply; anything unusual
    # goes through the full checks below, which also name what is wrong.
    if type(obj) is dict:
        op = obj.get("op")
        if op == "write":
            data = obj.get("data")
            cid = obj.get("id")
            if type(data) is str and type(cid) is int and "ids" not in obj and "raw" not in obj:
                try:
                    return Write((cid,), data.encode("latin-1"))
                except UnicodeEncodeError:
                    pass
        elif op == "consumed":
            cid = obj.get("id")
            n = obj.get("n")
            if type(cid) is int and type(n) is int:
                return Consumed(cid, n)
    return _parse_command_checked(obj)


def _parse_command_checked(obj: object) -> Command:
    if type(obj) is not dict:
        raise HandlerError(f"expected a JSON object, got {type(obj).__name__}")
    op = obj.get("op")
    if op == "write":
        data = _data(obj)
        raw = obj.get("raw", False)
        if type(raw) is not bool:
            raise HandlerError(f"field 'raw' must be true or false, not {raw!r}")
        if "ids" in obj:
            if "id" in obj:
                raise HandlerError("write has both 'id' and 'ids'")
            ids = obj["ids"]
            if type(ids) is not list or any(type(i) is not int for i in ids):
                raise HandlerError("field 'ids' must be a list of integer client ids")
            return Write(tuple(ids), data, raw)
        return Write((_client_id(obj),), data, raw)
    if op == "consumed":
        cid = _client_id(obj)
        n = obj.get("n")
        if type(n) is not int:
            return Invalid(cid, f"consumed: field 'n' must be an integer, not {n!r}")
        return Consumed(cid, n)
    if op == "close":
        return Close(_client_id(obj))
    if op == "subscribe" or op == "unsubscribe":
        cid = _client_id(obj)
        channel = _channel(obj)
        return Subscribe(cid, channel) if op == "subscribe" else Unsubscribe(cid, channel)
    if op == "publish":
        channel = _channel(obj)
        data = _data(obj)
        exclude = obj.get("exclude")
        if exclude is not None and type(exclude) is not int:
            raise HandlerError(f"field 'exclude' must be a client id, not {exclude!r}")
        raw = obj.get("raw", False)
        if type(raw) is not bool:
            raise HandlerError(f"field 'raw' must be true or false, not {raw!r}")
        return Publish(channel, data, exclude, raw)
    if op is None:
        raise HandlerError("missing field 'op'")
    raise HandlerError(f"unknown op {op!r}")


def parse_line(line: bytes) -> tuple[list[Command], list[str]]:
    """Decode one handler line (without its newline).

    Returns the valid commands, in order, and a description of each invalid
    part. A line that is not JSON, or not an object or array, yields no
    command and one error. In an array, valid elements survive invalid ones.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return [], ["not JSON (handler output on stdout?)"]
    if type(obj) is list:
        commands: list[Command] = []
        errors: list[str] = []
        for i, item in enumerate(obj):
            try:
                commands.append(parse_command(item))
            except HandlerError as exc:
                errors.append(f"element {i}: {exc}")
        return commands, errors
    try:
        return [parse_command(obj)], []
    except HandlerError as exc:
        return [], [str(exc)]


def quote(line: bytes | bytearray, limit: int = 200) -> str:
    """A log-safe rendering of a line: repr, cut to `limit` bytes."""
    if len(line) > limit:
        return repr(bytes(line[:limit]))[:-1] + f"...' ({len(line)} bytes)"
    return repr(bytes(line))

