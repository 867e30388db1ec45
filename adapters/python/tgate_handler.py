"""Python adapter for tgate handlers: Haxe's ``neko.net.ServerLoop`` over tgate's pipe.

tgate holds the TCP sockets and talks to each handler process over its stdin
and stdout (protocol v1, ``docs/protocol.md``). This single stdlib-only file (it
uses ``orjson`` when installed) speaks that protocol for you: subclass
:class:`ServerLoop`, override the callbacks you need and call :meth:`ServerLoop.run`::

    from tgate_handler import Client, ServerLoop

    class Echo(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.write(buf)
            return len(buf)

    if __name__ == "__main__":
        Echo().run()

and give tgate ``python3 echo.py`` as its handler command.

Callbacks (only ``process_client_data`` is required, or ``process_client_buffer``
in its place, or ``process_frame`` in a framed mode; they run one at a time, on
the thread calling ``run``):

``client_connected(client)``
    A client connected. Its return value becomes ``client.data`` (per-client
    state, ServerLoop's ``newData``). An exception closes that client.
    ``client.replayed`` is true when the client is not new: tgate replays a
    ``connect`` for each live client to a restarted handler process (don't
    announce it again; rebuild what the process needs to know about it).
``process_client_data(client, buf)``
    ``buf`` holds ALL the bytes of that client not consumed yet. Return how many
    bytes from the front you handled (``0`` = incomplete message, wait for more).
    The adapter calls it again on the remaining bytes while it returns ``> 0`` and
    bytes remain. The return value must be an ``int`` (not ``bool``) with
    ``0 <= n <= len(buf)``. An invalid value or an exception is reported through
    ``on_error`` and closes THAT client only; the process keeps serving the others.
    When ``client.eof`` is true the client has closed its sending side and this is
    the last call for these bytes: unconsumed bytes are then discarded, so this is
    the place to handle a trailing partial message.
    Each call gets a fresh ``bytes`` copy of what remains, so handling ``k``
    messages that arrived together copies up to ``k`` times their size; when
    many small messages arrive at once, ``process_client_buffer`` avoids that.
``process_client_buffer(client, buf, pos, length)``
    The zero-copy form of ``process_client_data`` (Haxe's
    ``processClientData(d, buf, bufpos, buflen)``); define it INSTEAD of
    ``process_client_data`` (when both are defined, this one is used). The
    client's unconsumed bytes are ``buf[pos:pos + length]``: ``buf`` is the same
    ``bytes`` object on every call for one batch of new bytes, with ``pos``
    moved past what you consumed, so read it in place (``buf.find(b"\n", pos,
    pos + length)``, ``buf.startswith(prefix, pos)``, ``struct.unpack_from(fmt,
    buf, pos)``, ``pattern.match(buf, pos, pos + length)``) and slice out only
    what you keep. Return how many bytes from ``pos`` you handled, an ``int`` in
    ``0..length``, exactly as ``process_client_data``; everything else is the
    same. The adapter's work is then linear in the bytes received, however many
    messages they hold.
``process_frame(client, frame)``
    Framed modes only (``tgate --framing line|crlf|packet2|packet4|netstring``,
    see ``self.framing``): tgate split the client's bytes into frames and this is
    one whole frame, without its delimiter or length prefix. Nothing to return,
    no byte counting. An exception is reported through ``on_error`` and closes
    THAT client only.
``client_eof(client)``
    Framed modes only: the client half-closed (``client.eof`` is now true) after
    its last frame. The connection stays open for your writes until you close it:
    the default calls ``client.close()``, which tgate carries out once the writes
    queued before it are sent (as in raw mode, where EOF ends a client once its
    replies are out). Override it to answer something first, or to keep writing
    later; an exception is reported and closes the client.
``client_disconnected(client)``
    The client is gone; ``client.reason`` says why (``"eof"``, ``"reset"``,
    ``"closed"``, ``"shutdown"``, ... see the protocol). Called exactly once per
    client, after the client was removed from ``self.clients``.
``update()``
    Called on each ``tick`` (every ``update_time`` seconds): timers, pings.
``on_error(exc, client)``
    Handler code failed (``client`` is ``None`` for ``update``). The default
    prints one line naming the client, plus the traceback if there is one, to
    stderr.

Inside callbacks, ``client.write(data)`` (bytes-like, or ``str`` sent as UTF-8),
``client.close()`` (pending writes are flushed first by tgate),
``self.broadcast(clients, data)``, ``client.subscribe(channel)``,
``client.unsubscribe(channel)`` and ``self.publish(channel, data, exclude=None)``
queue commands. All the commands produced while handling one message from tgate
go out in ONE line, in the order they were issued (closes last), together with
the ``consumed`` reply when the message was ``data``, so tgate applies them
atomically (this is what makes handler restarts exact, and a ``publish`` in
answer to a client's bytes is then never lost or repeated). Writes, closes and
subscriptions for a client that is closed or gone are silently ignored. Commands
may only be issued from callbacks: the adapter is not thread-safe.

Workers and channels (``tgate --workers N``): tgate may run N processes of the
same handler, each serving its own share of the clients; ``self.worker`` is this
process's index (0 to N-1) and ``self.workers`` is N (0 and 1 when tgate does not
say). A handler process then does NOT see every client: ``self.clients`` holds
only its own. Channels live in tgate and span every worker:
``client.subscribe("room")`` adds a client to a channel, ``client.unsubscribe``
removes it (tgate also removes it when it disconnects), and
``self.publish("room", data, exclude=client)`` sends the bytes to every client
subscribed to it, whichever worker serves them, except ``exclude`` (a
``Client`` or an id). Any worker may also write to or close any live client id.

In a framed mode each ``client.write(data)`` (and each ``broadcast``) is ONE
frame: tgate frames it (in ``line`` mode it appends the newline, so write
``b"hello"``, not ``b"hello\n"``), and an empty write is an empty frame.
``client.write_raw(data)`` (or ``broadcast(..., raw=True)``, ``publish(...,
raw=True)``) sends bytes as they are, unframed (a prompt without a newline, say).
In raw mode both are plain writes.

stdout carries the protocol and nothing else. ``print()`` output must go to
stderr (``print(..., file=sys.stderr)``); tgate relays stderr to its own,
prefixed with the handler's pid. When ``run()`` uses the process's real stdout
(the default), it protects the stream while it runs: ``sys.stdout`` is set to
``sys.stderr`` and file descriptor 1 is pointed at stderr (so a stray
``print()``, ``os.write(1, ...)`` or a child process's output cannot corrupt the
protocol), and the protocol is written to a private duplicate of the original
descriptor.

I/O is batched: ``run`` reads whatever stdin has available, handles every
complete line, and writes all the resulting lines with one write and one flush.
It returns when stdin reaches EOF (tgate is stopping or replacing the handler).

A handler that cannot serve the framing tgate announces in ``hello`` (it
implements ``process_frame`` but neither ``process_client_data`` nor
``process_client_buffer`` and tgate runs in raw mode, or the reverse in a
framed mode) would fail every client: ``run`` then says so in one line on
stderr and raises ``SystemExit(1)``, so the process exits with status 1.
"""

from __future__ import annotations

# Imports are kept few: a restarted handler answers its clients only once
# the interpreter has loaded them (json, traceback and typing load lazily).
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~10 ms)
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TypeAlias, TypeGuard

__all__ = ["PROTOCOL_VERSION", "Client", "Data", "ServerLoop"]

PROTOCOL_VERSION = 1

#: What ``Client.write``, ``ServerLoop.broadcast`` and ``ServerLoop.publish`` accept.
Data: TypeAlias = bytes | bytearray | memoryview | str

_READ_SIZE = 1 << 18
#: tgate rejects handler lines longer than this (bytes, with the newline).
_MAX_LINE = 16 << 20


def _std_dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _std_loads(line: bytes) -> Any:
    import json

    return json.loads(line)


_loads: Callable[[bytes], Any] = _std_loads
_dumps: Callable[[Any], bytes] = _std_dumps
try:  # optional speedup; same wire format (compact JSON, UTF-8)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    _loads = _orjson.loads
    _dumps = _orjson.dumps


def _log(message: str) -> None:
    print(f"tgate_handler: {message}", file=sys.stderr, flush=True)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _to_wire(data: Data) -> str:
    """Bytes as a latin-1 string (one code point per byte); ``str`` is sent as UTF-8."""
    if isinstance(data, str):
        return data if data.isascii() else data.encode("utf-8").decode("latin-1")
    if isinstance(data, bytes | bytearray):
        return data.decode("latin-1")
    if isinstance(data, memoryview):
        return data.tobytes().decode("latin-1")
    raise TypeError(f"expected bytes, bytearray, memoryview or str, not {type(data).__name__}")


def _check_channel(channel: object) -> str:
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str, not {type(channel).__name__}")
    if not channel:
        raise ValueError("a channel name cannot be empty")
    return channel


class _Publish:
    """A ``publish`` of the current turn; consecutive ones of plain bytes to
    the same channel and exclude are coalesced, as writes are."""

    __slots__ = ("channel", "exclude", "joinable", "parts", "raw")

    def __init__(
        self, channel: str, exclude: int | None, wire: str, raw: bool, joinable: bool
    ) -> None:
        self.channel = channel
        self.exclude = exclude
        self.parts = [wire]
        self.raw = raw
        self.joinable = joinable

    def message(self) -> dict[str, Any]:
        parts = self.parts
        obj: dict[str, Any] = {
            "op": "publish",
            "channel": self.channel,
            "data": parts[0] if len(parts) == 1 else "".join(parts),
        }
        if self.exclude is not None:
            obj["exclude"] = self.exclude
        if self.raw:
            obj["raw"] = True
        return obj


def _addr(value: object) -> tuple[str, int]:
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and _is_int(port):
            return (host, port)
    return ("", 0)


class Client:
    """One TCP client, as seen by the handler.

    Attributes: ``id`` (tgate's id, never reused), ``peer`` and ``local``
    (``(host, port)``), ``data`` (what ``client_connected`` returned), ``eof``
    (the client half-closed: the bytes being processed are its last; in framed
    modes, set before ``client_eof``), ``reason``
    (the disconnect reason, once gone), ``closed`` (closed by the handler or
    gone: writes are ignored) and ``replayed`` (tgate replayed this client's
    ``connect`` to a restarted handler process: the client was already connected
    to an earlier one; set before ``client_connected``).
    """

    __slots__ = (
        "_buf",
        "_loop",
        "closed",
        "data",
        "eof",
        "id",
        "local",
        "peer",
        "reason",
        "replayed",
    )

    def __init__(
        self,
        loop: ServerLoop,
        id: int,
        peer: tuple[str, int] = ("", 0),
        local: tuple[str, int] = ("", 0),
        replayed: bool = False,
    ) -> None:
        self._loop = loop
        self._buf = b""  # mirror of the bytes tgate holds unconsumed for this client
        self.id = id
        self.peer = peer
        self.local = local
        self.replayed = replayed
        self.data: Any = None
        self.eof = False
        self.reason: str | None = None
        self.closed = False

    def write(self, data: Data) -> None:
        """Queue bytes for this client (a ``str`` is encoded as UTF-8).

        In a framed mode the bytes are one frame, which tgate frames."""
        if self.closed:
            return
        self._loop._queue_write(self.id, _to_wire(data), False)

    def write_raw(self, data: Data) -> None:
        """Queue bytes for this client that tgate sends as they are, unframed
        (``"raw": true``). In raw mode this is :meth:`write`."""
        if self.closed:
            return
        self._loop._queue_write(self.id, _to_wire(data), True)

    def close(self) -> None:
        """Ask tgate to close this client once its pending writes are sent."""
        if self.closed:
            return
        self.closed = True
        self._loop._closes.append(self.id)

    def subscribe(self, channel: str) -> None:
        """Add this client to ``channel``, a non-empty ``str`` (created on first use).

        Channels live in tgate, across every worker process: whichever worker
        calls :meth:`ServerLoop.publish` on it reaches this client. Subscribing
        twice is the same as once; tgate removes the client from its channels
        when it disconnects."""
        _check_channel(channel)
        if self.closed:
            return
        self._loop._writes.append({"op": "subscribe", "id": self.id, "channel": channel})

    def unsubscribe(self, channel: str) -> None:
        """Remove this client from ``channel``."""
        _check_channel(channel)
        if self.closed:
            return
        self._loop._writes.append({"op": "unsubscribe", "id": self.id, "channel": channel})

    def __repr__(self) -> str:
        return f"<Client {self.id} peer={self.peer[0]}:{self.peer[1]}>"


class ServerLoop:
    """The handler: subclass it and override the callbacks (see the module docstring).

    ``clients`` maps ids to the connected clients (including the ones the handler
    closed, until tgate reports them gone): with several workers, only this
    process's share of them. ``hello`` is tgate's ``hello`` message
    (``bufsize``, ``max_bufsize``, ``update_time``, ...), ``framing`` its framing
    mode (``"raw"`` until ``hello`` says otherwise), ``worker`` this process's
    index in tgate's pool of workers and ``workers`` the pool's size (``0`` and
    ``1`` until ``hello`` says otherwise). A subclass defining ``__init__``
    must call ``super().__init__()``.
    """

    def __init__(self) -> None:
        self.clients: dict[int, Client] = {}
        self.hello: dict[str, Any] = {}
        self.framing = "raw"
        self.worker = 0
        self.workers = 1
        # Commands of the current turn but closes, in order: a write is (id or
        # list of ids, parts of the data, raw: sent unframed in a framed mode;
        # in raw mode every write is raw), a publish a _Publish, any other
        # command (subscribe, unsubscribe) its message.
        self._writes: list[tuple[int | list[int], list[str], bool] | _Publish | dict[str, Any]] = []
        self._closes: list[int] = []
        self._lines: list[bytes] = []  # finished output lines of the current input chunk

    # -- callbacks ---------------------------------------------------------

    def client_connected(self, client: Client) -> Any:
        """A client connected; the return value becomes ``client.data``."""
        return None

    def process_client_data(self, client: Client, buf: bytes) -> int:
        """Handle bytes from the front of ``buf``; return how many (0 = incomplete).

        Not overriding it is an error (as in Haxe): each client that sends
        bytes is reported through ``on_error`` and closed.
        """
        raise NotImplementedError(f"{type(self).__name__}.process_client_data is not implemented")

    def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
        """Zero-copy :meth:`process_client_data`: handle bytes from ``buf[pos:pos + length]``.

        Return how many bytes from ``pos`` were handled (0 = incomplete). The
        default hands ``buf[pos:pos + length]`` to :meth:`process_client_data`.
        """
        if pos == 0 and length == len(buf):
            return self.process_client_data(client, buf)
        return self.process_client_data(client, buf[pos : pos + length])

    def process_frame(self, client: Client, frame: bytes) -> None:
        """Framed modes: handle one whole frame from this client.

        Not overriding it is an error: each client that sends a frame is
        reported through ``on_error`` and closed.
        """
        raise NotImplementedError(f"{type(self).__name__}.process_frame is not implemented")

    def client_eof(self, client: Client) -> None:
        """Framed modes: the client half-closed. The default closes it once
        the writes queued so far are sent."""
        client.close()

    def client_disconnected(self, client: Client) -> None:
        """The client is gone (``client.reason`` says why)."""

    def update(self) -> None:
        """Called on each tick."""

    def on_error(self, exc: BaseException, client: Client | None) -> None:
        """Report an error in handler code. The default prints it to stderr."""
        who = f"client {client.id}" if client is not None else "handler"
        if exc.__traceback__ is None:
            _log(f"{who}: {type(exc).__name__}: {exc}")
        else:
            _log(f"{who}: exception in handler code:")
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.flush()

    # -- commands ----------------------------------------------------------

    def broadcast(self, clients: Iterable[Client | int], data: Data, *, raw: bool = False) -> None:
        """Send the same bytes to several clients, in one ``write`` command with ``ids``.

        Clients (or ids) that are closed or unknown are skipped. In a framed
        mode the bytes are one frame to each, or unframed with ``raw=True``.
        """
        wire = _to_wire(data)
        ids: list[int] = []
        seen: set[int] = set()
        for item in clients:
            client = item if isinstance(item, Client) else self.clients.get(item)
            if client is None or client.closed or client.id in seen:
                continue
            seen.add(client.id)
            ids.append(client.id)
        if ids:
            self._queue_write(ids, wire, raw)

    def publish(
        self, channel: str, data: Data, exclude: Client | int | None = None, raw: bool = False
    ) -> None:
        """Send the bytes to every client subscribed to ``channel`` (see
        :meth:`Client.subscribe`), whichever worker serves it, except ``exclude``
        (a ``Client`` or an id).

        tgate sends them as a ``write`` to each would (a ``str`` is encoded as
        UTF-8; in a framed mode the bytes are one frame to each, or unframed
        with ``raw=True``). A channel nobody is subscribed to swallows them.
        """
        _check_channel(channel)
        if isinstance(exclude, Client):
            skip: int | None = exclude.id
        elif exclude is None or _is_int(exclude):
            skip = exclude
        else:
            raise TypeError(f"exclude is a Client, an id or None, not {type(exclude).__name__}")
        wire = _to_wire(data)
        framed = self.framing != "raw"
        if not framed:
            raw = False  # every write is raw: no need to say so
        if (raw or not framed) and not wire:
            return  # an empty frame means something; empty bytes do not
        joinable = raw or not framed  # plain bytes, not a frame
        writes = self._writes
        last = writes[-1] if writes else None
        if (
            joinable
            and isinstance(last, _Publish)
            and last.joinable
            and last.channel == channel
            and last.exclude == skip
        ):
            last.parts.append(wire)
        else:
            writes.append(_Publish(channel, skip, wire, raw, joinable))

    def _queue_write(self, target: int | list[int], wire: str, raw: bool) -> None:
        framed = self.framing != "raw"
        if not framed:
            if not wire:
                return  # nothing to send
            raw = True
        elif raw and not wire:
            return  # an empty frame means something; empty raw bytes do not
        writes = self._writes
        # Coalesce consecutive writes of plain bytes to the same target; a
        # frame is a write of its own.
        last = writes[-1] if writes else None
        if raw and isinstance(last, tuple) and last[2] and last[0] == target:
            last[1].append(wire)
        else:
            writes.append((target, [wire], raw))

    # -- running -----------------------------------------------------------

    def run(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """Serve tgate until stdin reaches EOF.

        ``stdin``/``stdout`` default to the process's binary stdin/stdout; when
        the real stdout is used it is protected from stray output (see the module
        docstring).
        """
        with contextlib.ExitStack() as stack:
            inp = stdin if stdin is not None else sys.stdin.buffer
            out = stdout if stdout is not None else stack.enter_context(_protocol_stdout())
            read1 = getattr(inp, "read1", None)
            read: Callable[[int], bytes] = read1 if read1 is not None else inp.read
            partial: list[bytes] = []  # the unfinished last line, in pieces
            try:
                while True:
                    chunk = read(_READ_SIZE)
                    if not chunk:
                        break
                    lines = chunk.split(b"\n")
                    tail = lines.pop()
                    if lines:
                        if partial:
                            partial.append(lines[0])
                            lines[0] = b"".join(partial)
                            partial.clear()
                        for line in lines:
                            self._handle_line(line)
                        if self._lines and not self._flush(out):
                            return
                    if tail:
                        partial.append(tail)
                if partial:  # a last line without "\n"
                    self._handle_line(b"".join(partial))
                    if self._lines:
                        self._flush(out)
            except BaseException:
                # SystemExit/KeyboardInterrupt from handler code: the turns that
                # completed are still answered; the interrupted one is not.
                self._writes.clear()
                self._closes.clear()
                with contextlib.suppress(Exception):
                    self._flush(out)
                raise

    def _flush(self, out: BinaryIO) -> bool:
        data = b"".join(self._lines)
        self._lines.clear()
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:
            _log("stdout is closed; exiting")
            return False
        return True

    def _handle_line(self, line: bytes) -> None:
        if not line or line.isspace():
            return
        try:
            msg = _loads(line)
        except ValueError:
            _log(f"ignoring a line that is not JSON: {line[:200]!r}")
            return
        if not isinstance(msg, dict):
            _log(f"ignoring a line that is not a JSON object: {line[:200]!r}")
            return
        op = msg.get("op")
        if op == "data":
            self._on_data(msg)
        elif op == "frame":
            self._on_frame(msg)
        elif op == "eof":
            self._on_eof(msg)
        elif op == "tick":
            self._on_tick()
        elif op == "connect":
            self._on_connect(msg)
        elif op == "disconnect":
            self._on_disconnect(msg)
        elif op == "hello":
            self._on_hello(msg)
        # Unknown ops are ignored (forward compatibility).

    def _end_turn(self, consumed: tuple[int, int] | None) -> None:
        """Emit the turn's commands as one line: writes (and the other
        commands, in order), the consumed, then closes.

        Closes go last so the ``consumed`` never follows a ``close`` of its
        client; as writes to closed clients are dropped at the source, moving
        the closes after the writes changes nothing else.
        """
        objs: list[dict[str, Any]] = []
        framed = self.framing != "raw"
        for item in self._writes:
            if isinstance(item, dict):
                objs.append(item)
                continue
            if isinstance(item, _Publish):
                objs.append(item.message())
                continue
            target, parts, raw = item
            data = parts[0] if len(parts) == 1 else "".join(parts)
            obj: dict[str, Any] = (
                {"op": "write", "id": target, "data": data}
                if isinstance(target, int)
                else {"op": "write", "ids": target, "data": data}
            )
            if raw and framed:
                obj["raw"] = True
            objs.append(obj)
        if consumed is not None:
            objs.append({"op": "consumed", "id": consumed[0], "n": consumed[1]})
        objs.extend({"op": "close", "id": cid} for cid in self._closes)
        self._writes.clear()
        self._closes.clear()
        if not objs:
            return
        line = _dumps(objs[0] if len(objs) == 1 else objs) + b"\n"
        if len(line) <= _MAX_LINE:
            self._lines.append(line)
        else:
            self._split_turn(objs)

    def _split_turn(self, objs: list[dict[str, Any]]) -> None:
        """A turn too big for one line: its commands go first, one line each (a
        write or publish in pieces), in order, then the consumed and the closes.

        Atomicity is lost (a crash in between would replay bytes whose answer
        was partly sent), but a line over tgate's limit would be dropped whole,
        ``consumed`` included.
        """
        _log("a reply exceeds tgate's line limit; sending its writes on separate lines")
        rest: list[dict[str, Any]] = []
        # Worst case 6 bytes per code point (``\u0000``), plus room for the ids.
        step = max(1, (_MAX_LINE - 4096) // 6)
        framed = self.framing != "raw"
        for obj in objs:
            if obj["op"] in ("consumed", "close"):
                rest.append(obj)
                continue
            if obj["op"] not in ("write", "publish"):  # subscribe, unsubscribe
                self._lines.append(_dumps(obj) + b"\n")
                continue
            text: str = obj["data"]
            if framed and not obj.get("raw"):
                # Pieces of a frame would be frames of their own: frame it
                # here and send the pieces unframed.
                if len(text) <= step:
                    self._lines.append(_dumps(obj) + b"\n")
                    continue
                framed_text = _frame(self.framing, text)
                if framed_text is None:
                    _log(f"a frame of {len(text)} bytes cannot be sent in framing "
                         f"{self.framing!r}; dropped")
                    continue
                text = framed_text
                obj = {**obj, "raw": True}
            for start in range(0, len(text), step):
                piece = {**obj, "data": text[start : start + step]}
                self._lines.append(_dumps(piece) + b"\n")
        if rest:
            self._lines.append(_dumps(rest[0] if len(rest) == 1 else rest) + b"\n")

    def _report(self, exc: BaseException, client: Client | None) -> None:
        try:
            self.on_error(exc, client)
        except Exception as err:  # a broken on_error must not stop the loop
            _log("on_error failed while reporting:")
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
            traceback.print_exception(err, file=sys.stderr)
            sys.stderr.flush()

    def _fail(self, exc: BaseException, client: Client) -> None:
        self._report(exc, client)
        client.close()

    def _on_data(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        if not _is_int(cid):
            _log(f"ignoring data with an invalid id: {cid!r}")
            return
        text = msg.get("data", "")
        n = 0
        client = self.clients.get(cid)
        if client is None:
            _log(f"data for unknown client {cid}; consumed nothing")
        elif not isinstance(text, str):
            _log(f"client {cid}: data is not a string; consumed nothing")
        elif not client.closed:
            n = self._process(client, text, msg.get("eof") is True)
        self._end_turn((cid, n))

    def _process(self, client: Client, text: str, eof: bool) -> int:
        try:
            new = text.encode("latin-1")
        except UnicodeEncodeError as exc:
            self._fail(exc, client)
            return 0
        # The one copy of this batch: the held bytes and the new ones together.
        buf = client._buf + new if client._buf else new
        if eof:
            client.eof = True
        total = 0
        size = len(buf)
        zero_copy = self._overrides("process_client_buffer")
        name = "process_client_buffer" if zero_copy else "process_client_data"
        while total < size and not client.closed:
            left = size - total
            try:
                if zero_copy:
                    # No copy per message: the same buf, the offset moves.
                    n = self.process_client_buffer(client, buf, total, left)
                else:
                    # The documented contract: a bytes object of what remains.
                    n = self.process_client_data(client, buf[total:] if total else buf)
            except Exception as exc:
                self._fail(exc, client)
                break
            if not _is_int(n):
                self._fail(
                    TypeError(
                        f"{name} returned {n!r} ({type(n).__name__}) for "
                        f"client {client.id}, expected an int in 0..{left}; closing it"
                    ),
                    client,
                )
                break
            if not 0 <= n <= left:
                self._fail(
                    ValueError(
                        f"{name} returned {n} for client {client.id}, "
                        f"expected an int in 0..{left}; closing it"
                    ),
                    client,
                )
                break
            if n == 0:
                break
            total += n
        # Compact once per batch: keep only what was not consumed.
        client._buf = buf[total:] if total else buf
        return total

    def _overrides(self, name: str) -> bool:
        """Whether this handler defines callback ``name`` (in a subclass or on the instance)."""
        return name in self.__dict__ or getattr(type(self), name) is not getattr(ServerLoop, name)

    def _check_framing(self) -> None:
        """Exit if the handler's callbacks cannot serve ``self.framing``: every
        client would fail at run time, far from the cause."""
        raw = "process_client_buffer" if self._overrides("process_client_buffer") else (
            "process_client_data" if self._overrides("process_client_data") else None
        )
        framed = self._overrides("process_frame")
        who = type(self).__name__
        if self.framing == "raw" and framed and raw is None:
            problem = (
                f"{who} defines process_frame but not process_client_data, and tgate runs "
                f"in raw mode (hello framing 'raw'), where every client would fail: start "
                f"tgate with --framing line (or another framing) or implement "
                f"process_client_data"
            )
        elif self.framing != "raw" and raw is not None and not framed:
            problem = (
                f"{who} defines {raw} but not process_frame, and tgate runs with "
                f"--framing {self.framing}, where every client would fail: start tgate "
                f"with --framing raw or implement process_frame"
            )
        else:
            return
        _log(f"{problem}; exiting")
        raise SystemExit(1)

    def _on_frame(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        if not _is_int(cid):
            _log(f"ignoring frame with an invalid id: {cid!r}")
            return
        client = self.clients.get(cid)
        text = msg.get("data")
        if client is None:
            _log(f"ignoring a frame for unknown client {cid}")
        elif not isinstance(text, str):
            _log(f"client {cid}: frame data is not a string; ignored")
        elif not client.closed:
            try:
                self.process_frame(client, text.encode("latin-1"))
            except Exception as exc:
                self._fail(exc, client)
        self._end_turn(None)

    def _on_eof(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        client = self.clients.get(cid) if _is_int(cid) else None
        if client is None:
            _log(f"ignoring an eof for unknown client {cid!r}")
            return
        client.eof = True
        if not client.closed:
            try:
                self.client_eof(client)
            except Exception as exc:
                self._fail(exc, client)
        self._end_turn(None)

    def _on_connect(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        if not _is_int(cid):
            _log(f"ignoring connect with an invalid id: {cid!r}")
            return
        if cid in self.clients:
            _log(f"ignoring a second connect for client {cid}")
            return
        # "replay": true marks a connect replayed to a restarted process (only
        # a real true counts: the field is absent on a first connect).
        replayed = msg.get("replay") is True
        client = Client(self, cid, _addr(msg.get("peer")), _addr(msg.get("local")), replayed)
        self.clients[cid] = client
        try:
            client.data = self.client_connected(client)
        except Exception as exc:
            self._fail(exc, client)
        self._end_turn(None)

    def _on_disconnect(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        client = self.clients.pop(cid, None) if _is_int(cid) else None
        if client is None:
            return
        reason = msg.get("reason")
        self._gone(client, reason if isinstance(reason, str) else "reset")
        self._end_turn(None)

    def _gone(self, client: Client, reason: str) -> None:
        client.closed = True
        client.reason = reason
        try:
            self.client_disconnected(client)
        except Exception as exc:
            self._report(exc, client)

    def _on_tick(self) -> None:
        try:
            self.update()
        except Exception as exc:
            self._report(exc, None)
        self._end_turn(None)

    def _on_hello(self, msg: dict[str, Any]) -> None:
        if msg.get("protocol") != PROTOCOL_VERSION:
            _log(f"tgate speaks protocol {msg.get('protocol')!r}, this adapter {PROTOCOL_VERSION}")
        self.hello = msg
        framing = msg.get("framing", "raw")
        self.framing = framing if isinstance(framing, str) else "raw"
        worker, workers = msg.get("worker"), msg.get("workers")
        self.workers = workers if _is_int(workers) and workers >= 1 else 1
        self.worker = worker if _is_int(worker) and 0 <= worker < self.workers else 0
        self._check_framing()
        # A new session: forget every client (tgate replays the live ones).
        old = list(self.clients.values())
        self.clients = {}
        for client in old:
            client.closed = True
        for client in old:
            self._gone(client, "reset")
        self._end_turn(None)


def _frame(framing: str, text: str) -> str | None:
    """A payload (latin-1 string) framed as tgate would frame it, or None if
    it cannot be (too long for the prefix, or a framing this adapter does
    not know)."""
    n = len(text)
    if framing == "line":
        return text + "\n"
    if framing == "crlf":
        return text + "\r\n"
    if framing == "packet2" and n < 1 << 16:
        return n.to_bytes(2, "big").decode("latin-1") + text
    if framing == "packet4" and n < 1 << 32:
        return n.to_bytes(4, "big").decode("latin-1") + text
    if framing == "netstring":
        return f"{n}:{text},"
    return None


@contextlib.contextmanager
def _protocol_stdout() -> Iterator[BinaryIO]:
    """Yield a private stream on the real stdout; stdout itself goes to stderr meanwhile."""
    saved = sys.stdout
    with contextlib.suppress(Exception):
        saved.flush()
    try:
        fd = saved.fileno()
        private = os.dup(fd)
    except (AttributeError, OSError, ValueError):
        # No file descriptor to protect (stdout was replaced): use the stream as is.
        sys.stdout = sys.stderr
        try:
            yield saved.buffer
        finally:
            sys.stdout = saved
        return
    out = os.fdopen(private, "wb")
    try:
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError):
        fd = -1
    sys.stdout = sys.stderr
    try:
        yield out
    finally:
        sys.stdout = saved
        with contextlib.suppress(OSError):
            out.flush()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.dup2(private, fd)
        with contextlib.suppress(OSError):
            out.close()
