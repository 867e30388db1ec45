"""Tests for the Python handler adapter (adapters/python/tgate_handler.py) and examples.

They drive ServerLoop.run() with in-memory binary streams: protocol lines in,
JSON lines out. A few tests run the examples as real subprocesses.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import need_module

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_DIR = ROOT / "adapters" / "python"
# Test the checkout's adapter, not a copy an install may have put in site-packages.
sys.path.insert(0, str(ADAPTER_DIR))

import tgate_handler  # noqa: E402
from tgate_handler import Client, ServerLoop  # noqa: E402

assert Path(tgate_handler.__file__).resolve().parent == ADAPTER_DIR, (
    f"tgate_handler was imported from {tgate_handler.__file__}, not from {ADAPTER_DIR}"
)

Msg = dict[str, Any]

HELLO: Msg = {
    "op": "hello",
    "protocol": 1,
    "tgate": "0.1.0",
    "framing": "raw",
    "bufsize": 128,
    "max_bufsize": 65536,
    "update_time": 1.0,
}


# -- helpers -----------------------------------------------------------------


def connect(cid: int) -> Msg:
    return {"op": "connect", "id": cid, "peer": ["127.0.0.1", 40000 + cid], "local": ["::1", 7000]}


def data(cid: int, payload: bytes, eof: bool = False) -> Msg:
    msg: Msg = {"op": "data", "id": cid, "data": payload.decode("latin-1")}
    if eof:
        msg["eof"] = True
    return msg


def disconnect(cid: int, reason: str = "eof") -> Msg:
    return {"op": "disconnect", "id": cid, "reason": reason}


TICK: Msg = {"op": "tick"}
LINE_HELLO: Msg = {**HELLO, "framing": "line"}


def frame(cid: int, payload: bytes) -> Msg:
    return {"op": "frame", "id": cid, "data": payload.decode("latin-1")}


def eof(cid: int) -> Msg:
    return {"op": "eof", "id": cid}


def encode(*msgs: Msg, ensure_ascii: bool = True) -> bytes:
    return b"".join(json.dumps(m, ensure_ascii=ensure_ascii).encode("utf-8") + b"\n" for m in msgs)


def parse(out: bytes) -> list[list[Msg]]:
    """Output lines, each as a list of commands (a bare object becomes a 1-list)."""
    assert out == b"" or out.endswith(b"\n")
    lines = []
    for raw in out.split(b"\n")[:-1]:
        obj = json.loads(raw)
        assert isinstance(obj, dict | list), raw
        lines.append(obj if isinstance(obj, list) else [obj])
    return lines


def run(loop: ServerLoop, *msgs: Msg, hello: bool = True) -> list[list[Msg]]:
    out = io.BytesIO()
    loop.run(io.BytesIO(encode(*((HELLO, *msgs) if hello else msgs))), out)
    return parse(out.getvalue())


def flat(lines: list[list[Msg]]) -> list[Msg]:
    return [cmd for line in lines for cmd in line]


def received(lines: list[list[Msg]]) -> dict[int, bytes]:
    """What each client receives, applying write commands in order."""
    got: dict[int, bytes] = {}
    for cmd in flat(lines):
        if cmd["op"] == "write":
            for cid in cmd["ids"] if "ids" in cmd else [cmd["id"]]:
                got[cid] = got.get(cid, b"") + cmd["data"].encode("latin-1")
    return got


def consumed(lines: list[list[Msg]], cid: int | None = None) -> list[int]:
    return [
        c["n"] for c in flat(lines) if c["op"] == "consumed" and (cid is None or c["id"] == cid)
    ]


def closes(lines: list[list[Msg]]) -> list[int]:
    return [c["id"] for c in flat(lines) if c["op"] == "close"]


class ChunkReader:
    """A binary stdin whose read1() returns the given chunks, one per call."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks: Iterator[bytes] = iter(list(chunks))
        self.reads = 0

    def read1(self, n: int = -1) -> bytes:
        self.reads += 1
        chunk = next(self.chunks, b"")
        assert n < 0 or len(chunk) <= n
        return chunk


class CountingWriter(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, b: Any) -> int:
        self.writes += 1
        return super().write(b)

    def flush(self) -> None:
        self.flushes += 1


class Echo(ServerLoop):
    def process_client_data(self, client: Client, buf: bytes) -> int:
        client.write(buf)
        return len(buf)


class Recorder(ServerLoop):
    """Records every callback; process_client_data consumes whole lines, one per call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.errors: list[tuple[BaseException, Client | None]] = []

    def client_connected(self, client: Client) -> Any:
        self.calls.append(("connected", client.id))
        return {"state": client.id}

    def process_client_data(self, client: Client, buf: bytes) -> int:
        self.calls.append(("data", (client.id, buf, client.eof)))
        end = buf.find(b"\n")
        return 0 if end < 0 else end + 1

    def client_disconnected(self, client: Client) -> None:
        self.calls.append(("disconnected", (client.id, client.reason, client.id in self.clients)))

    def update(self) -> None:
        self.calls.append(("update", None))

    def on_error(self, exc: BaseException, client: Client | None) -> None:
        self.errors.append((exc, client))

    def data_calls(self) -> list[tuple[int, bytes, bool]]:
        return [args for name, args in self.calls if name == "data"]


@pytest.fixture(params=["json", "orjson"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the stdlib json codec and with orjson (when installed)."""
    if request.param == "json":
        monkeypatch.setattr(tgate_handler, "_loads", json.loads)
        monkeypatch.setattr(tgate_handler, "_dumps", tgate_handler._std_dumps)
    elif importlib.util.find_spec("orjson") is None:
        need_module("orjson")  # a dependency of tgate: fails under TGATE_REQUIRE_TOOLS=1
    else:
        import orjson

        monkeypatch.setattr(tgate_handler, "_loads", orjson.loads)
        monkeypatch.setattr(tgate_handler, "_dumps", orjson.dumps)
    return str(request.param)


# -- echo, splitting, binary -------------------------------------------------


def test_echo_whole(backend: str) -> None:
    lines = run(Echo(), connect(1), data(1, b"hello\r\n"), disconnect(1))
    assert lines == [
        [{"op": "write", "id": 1, "data": "hello\r\n"}, {"op": "consumed", "id": 1, "n": 7}]
    ]


def test_echo_payload_split_at_every_byte_boundary() -> None:
    payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(len(payload) + 1):
        lines = run(Echo(), connect(1), data(1, payload[:i]), data(1, payload[i:]))
        assert received(lines) == ({1: payload} if payload else {})
        assert consumed(lines) == [i, len(payload) - i]


def test_input_stream_split_at_every_byte_boundary(backend: str) -> None:
    msgs = [HELLO, connect(1), connect(2), data(1, b"ab\xe9\x00"), TICK, data(2, b"\xff\n")]
    stream = encode(*msgs, ensure_ascii=False)  # raw UTF-8 on the wire, multi-byte chars
    expected = io.BytesIO()
    Echo().run(io.BytesIO(stream), expected)
    assert received(parse(expected.getvalue())) == {1: b"ab\xe9\x00", 2: b"\xff\n"}
    for i in range(len(stream) + 1):
        out = io.BytesIO()
        chunks = [c for c in (stream[:i], stream[i:]) if c]  # b"" would mean EOF
        Echo().run(ChunkReader(chunks), out)  # type: ignore[arg-type]
        assert out.getvalue() == expected.getvalue(), i
    out = io.BytesIO()
    Echo().run(ChunkReader(stream[i : i + 1] for i in range(len(stream))), out)  # type: ignore[arg-type]
    assert out.getvalue() == expected.getvalue()


def test_binary_bytes_round_trip_exactly(backend: str) -> None:
    payload = bytes(range(256)) * 2
    for ensure_ascii in (True, False):
        stream = encode(HELLO, connect(1), data(1, payload), ensure_ascii=ensure_ascii)
        out = io.BytesIO()
        Echo().run(io.BytesIO(stream), out)
        lines = parse(out.getvalue())
        assert received(lines) == {1: payload}
        assert consumed(lines) == [512]
        # The output is valid UTF-8 JSON whose strings only hold U+0000..U+00FF.
        write = flat(lines)[0]
        assert max(map(ord, write["data"])) == 255


def test_write_accepts_bytes_like_and_str() -> None:
    class Writer(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.write(b"a")
            client.write(bytearray(b"b"))
            client.write(memoryview(b"xcx")[1:2])
            client.write("é€\n")
            client.write(b"")  # nothing
            return len(buf)

    lines = run(Writer(), connect(1), data(1, b"?"))
    assert received(lines) == {1: b"abc" + "é€\n".encode()}
    # Consecutive writes to one client are coalesced into one command.
    assert lines == [
        [
            {"op": "write", "id": 1, "data": "abc" + "é€\n".encode().decode("latin-1")},
            {"op": "consumed", "id": 1, "n": 1},
        ]
    ]


def test_write_rejects_other_types() -> None:
    class Bad(Recorder):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.write(42)  # type: ignore[arg-type]
            return len(buf)

    loop = Bad()
    lines = run(loop, connect(1), data(1, b"x"))
    assert isinstance(loop.errors[0][0], TypeError)
    assert closes(lines) == [1]


# -- the process loop --------------------------------------------------------


def test_process_loop_several_messages_incomplete_and_trailing_data() -> None:
    loop = Recorder()
    lines = run(
        loop,
        connect(1),
        data(1, b"a\nbb\ncc"),  # two messages and a partial one
        data(1, b"c"),  # still partial: mirror "ccc"
        data(1, b"\nd\n"),  # completes it, and one more
    )
    assert loop.data_calls() == [
        (1, b"a\nbb\ncc", False),
        (1, b"bb\ncc", False),
        (1, b"cc", False),
        (1, b"ccc", False),
        (1, b"ccc\nd\n", False),
        (1, b"d\n", False),
    ]
    assert consumed(lines) == [5, 0, 6]
    assert loop.clients[1]._buf == b""


class LineCounter(ServerLoop):
    """Consumes one line per call and measures the adapter's work: the bytes of
    every distinct ``buf`` object it is handed (a new object means the adapter
    built it, i.e. copied bytes). Aborts the client once that exceeds
    ``budget``, so a quadratic adapter fails fast instead of copying gigabytes.

    It defines both raw callbacks: ``process_client_buffer`` (zero-copy,
    preferred when the adapter has it) and ``process_client_data`` (the same
    handler for an adapter without it, which is how the test fails there)."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.calls = 0
        self.lines = 0
        self.bytes_handed = 0  # total size of the distinct buf objects seen
        self._last: bytes | None = None

    def _see(self, buf: bytes) -> None:
        self.calls += 1
        if buf is not self._last:
            self._last = buf
            self.bytes_handed += len(buf)
            if self.bytes_handed > self.budget:
                raise RuntimeError(f"over budget: {self.bytes_handed} bytes in {self.calls} calls")

    def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
        self._see(buf)
        end = buf.find(b"\n", pos, pos + length)
        if end < 0:
            return 0
        self.lines += 1
        return end + 1 - pos

    def process_client_data(self, client: Client, buf: bytes) -> int:
        self._see(buf)
        end = buf.find(b"\n")
        if end < 0:
            return 0
        self.lines += 1
        return end + 1


@pytest.mark.parametrize("chunk", [256 * 1024, 16 * 1024, 1000])
def test_many_small_messages_cost_linear_work(chunk: int) -> None:
    """256 KiB of one-byte messages (empty lines), sent as tgate would in
    ``data`` messages of ``chunk`` bytes. The adapter hands the handler
    O(total) bytes, not O(total * messages per batch): the buf is shared by
    all the calls of one batch. Copying the rest per message (the old adapter)
    is 34 GB for one 256 KiB batch and 2 GB for 16 KiB batches."""
    total = 256 * 1024
    payload = b"\n" * total
    msgs = [connect(1)]
    for start in range(0, total, chunk):
        msgs.append(data(1, payload[start : start + chunk]))
    loop = LineCounter(budget=4 * total)
    lines = run(loop, *msgs)
    assert loop.calls == total, (loop.calls, loop.bytes_handed)
    assert loop.lines == total
    assert sum(consumed(lines, 1)) == total
    assert closes(lines) == []
    # Each batch is handed once (plus nothing left over: every message is whole).
    assert loop.bytes_handed == total
    assert loop.clients[1]._buf == b""


def test_process_client_buffer_carries_partial_messages_across_batches() -> None:
    """2-byte messages split across batches at odd offsets: the zero-copy
    callback sees the held byte and the new ones in one buf, and the adapter
    keeps exactly the unconsumed tail."""
    seen: list[tuple[bytes, int, int]] = []

    class Pairs(ServerLoop):
        def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
            seen.append((buf, pos, length))
            if length < 2:
                return 0
            client.write(buf[pos : pos + 2].upper())
            return 2

    stream = b"abcdefghij"
    lines = run(Pairs(), connect(1), data(1, stream[:3]), data(1, stream[3:4]),
                data(1, stream[4:9]), data(1, stream[9:]))
    assert received(lines) == {1: stream.upper()}
    assert consumed(lines) == [2, 2, 4, 2]
    assert seen == [
        (b"abc", 0, 3), (b"abc", 2, 1),
        (b"cd", 0, 2),
        (b"efghi", 0, 5), (b"efghi", 2, 3), (b"efghi", 4, 1),
        (b"ij", 0, 2),
    ]
    # One buf object per batch, shared by its calls.
    assert seen[0][0] is seen[1][0] and seen[3][0] is seen[4][0] is seen[5][0]


@pytest.mark.parametrize("bad", [-1, 2, "1", None, True])
def test_process_client_buffer_bad_return_closes_only_that_client(bad: Any) -> None:
    errors: list[BaseException] = []

    class Bad(ServerLoop):
        def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
            if client.id == 1 and pos == 1:
                return bad  # type: ignore[no-any-return]
            return 1

        def on_error(self, exc: BaseException, client: Client | None) -> None:
            errors.append(exc)

    lines = run(Bad(), connect(1), connect(2), data(1, b"ab"), data(2, b"ab"))
    assert lines == [
        [{"op": "consumed", "id": 1, "n": 1}, {"op": "close", "id": 1}],
        [{"op": "consumed", "id": 2, "n": 2}],
    ]
    [exc] = errors
    assert str(exc).startswith(f"process_client_buffer returned {bad!r}")
    assert "expected an int in 0..1" in str(exc)


def test_default_process_client_buffer_delegates_to_process_client_data() -> None:
    loop = Recorder()
    assert loop.process_client_buffer(Client(loop, 1), b"xa\nb", 1, 3) == 2
    assert loop.process_client_buffer(Client(loop, 2), b"c\n", 0, 2) == 2
    assert loop.data_calls() == [(1, b"a\nb", False), (2, b"c\n", False)]


def test_process_not_called_without_bytes() -> None:
    loop = Recorder()
    lines = run(loop, connect(1), data(1, b""))
    assert loop.data_calls() == []
    assert consumed(lines) == [0]


@pytest.mark.parametrize("bad", [-1, 4, 100, "1", 1.0, None, True, False, [1]])
def test_invalid_return_value_closes_only_that_client(bad: Any) -> None:
    class Bad(Recorder):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            super().process_client_data(client, buf)
            if client.id == 1 and buf.startswith(b"bad"):
                client.write(b"before")
                return bad  # type: ignore[no-any-return]
            client.write(buf[:2])
            return 2

    loop = Bad()
    lines = run(
        loop,
        connect(1),
        connect(2),
        data(1, b"okbad"),  # consumes 2, then the bad value on "bad"
        data(2, b"xxyy"),
        data(1, b"more"),  # client 1 is closed: no call, consumed 0
        data(2, b"zz"),
    )
    assert len(loop.errors) == 1
    exc, client = loop.errors[0]
    wrong_type = isinstance(bad, bool) or not isinstance(bad, int)
    assert isinstance(exc, TypeError if wrong_type else ValueError)
    assert client is loop.clients[1]
    assert "client 1" in str(exc)
    assert lines[0] == [
        {"op": "write", "id": 1, "data": "okbefore"},
        {"op": "consumed", "id": 1, "n": 2},
        {"op": "close", "id": 1},
    ]
    assert consumed(lines, 1) == [2, 0]
    assert consumed(lines, 2) == [4, 2]
    assert received(lines) == {1: b"okbefore", 2: b"xxyyzz"}
    assert closes(lines) == [1]
    assert [a for a in loop.data_calls() if a[0] == 1] == [(1, b"okbad", False), (1, b"bad", False)]


def test_default_on_error_reports_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    class Bad(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            if buf == b"boom":
                raise RuntimeError("kaboom")
            return -5

    lines = run(Bad(), connect(7), connect(8), data(7, b"boom"), data(8, b"x"))
    assert closes(lines) == [7, 8]
    err = capsys.readouterr().err
    assert "client 7" in err and "RuntimeError: kaboom" in err and "Traceback" in err
    # The invalid return value is one line naming the client.
    [line] = [x for x in err.splitlines() if "client 8" in x]
    assert "returned -5" in line and "ValueError" in line


def test_exception_in_handler_closes_only_that_client() -> None:
    class Crashy(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.errors: list[tuple[BaseException, Client | None]] = []

        def process_client_data(self, client: Client, buf: bytes) -> int:
            if b"!" in buf:
                client.write(b"partial")
                raise ValueError("bang")
            return super().process_client_data(client, buf)

        def on_error(self, exc: BaseException, client: Client | None) -> None:
            self.errors.append((exc, client))

    loop = Crashy()
    lines = run(
        loop,
        connect(1),
        connect(2),
        data(2, b"x!"),
        data(1, b"hello"),
        data(2, b"more"),
        disconnect(2, "closed"),
        data(1, b" world"),
    )
    assert [(str(e), c.id if c else None) for e, c in loop.errors] == [("bang", 2)]
    assert received(lines) == {1: b"hello world", 2: b"partial"}
    assert consumed(lines, 2) == [0, 0]
    assert consumed(lines, 1) == [5, 6]
    assert closes(lines) == [2]
    assert list(loop.clients) == [1]


def test_on_error_that_raises_does_not_stop_the_loop(capsys: pytest.CaptureFixture[str]) -> None:
    class Worse(Echo):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            if client.id == 1:
                raise KeyError("first")
            return super().process_client_data(client, buf)

        def on_error(self, exc: BaseException, client: Client | None) -> None:
            raise RuntimeError("second")

    lines = run(Worse(), connect(1), connect(2), data(1, b"a"), data(2, b"b"))
    assert closes(lines) == [1]
    assert received(lines) == {2: b"b"}
    err = capsys.readouterr().err
    assert "first" in err and "second" in err


# -- replies and commands ----------------------------------------------------


def test_exactly_one_consumed_per_data_message() -> None:
    class Mixed(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            if buf.startswith(b"close"):
                client.close()
                return 5
            if buf.startswith(b"raise"):
                raise RuntimeError
            return 1 if buf[:1] == b"1" else 0

        def on_error(self, exc: BaseException, client: Client | None) -> None:
            pass

    msgs = [connect(1), connect(2), connect(3)]
    sent: dict[int, int] = {1: 0, 2: 0, 3: 0, 99: 0}
    for i, payload in enumerate([b"1", b"0", b"11x", b"", b"close1", b"raise", b"1", b"x"] * 3):
        cid = [1, 2, 3, 99][i % 4]  # 99 is unknown: still answered
        msgs.append(data(cid, payload))
        sent[cid] += 1
    lines = run(Mixed(), *msgs)
    for cid, count in sent.items():
        assert len(consumed(lines, cid)) == count
    for line in lines:  # at most one consumed per line
        assert sum(c["op"] == "consumed" for c in line) <= 1


def test_commands_of_one_turn_share_the_consumed_line() -> None:
    class Relay(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            end = buf.find(b"\n")
            if end < 0:
                return 0
            other = self.clients[3 - client.id]
            client.write(b"ack\n")
            other.write(buf[: end + 1])
            self.broadcast(self.clients.values(), b"*\n")
            if buf.startswith(b"quit"):
                client.close()
                client.write(b"ignored after close")
            return end + 1

    lines = run(Relay(), connect(1), connect(2), data(1, b"hi\nquit\n"))
    assert lines[-1] == [
        {"op": "write", "id": 1, "data": "ack\n"},
        {"op": "write", "id": 2, "data": "hi\n"},
        {"op": "write", "ids": [1, 2], "data": "*\n"},
        {"op": "write", "id": 1, "data": "ack\n"},
        {"op": "write", "id": 2, "data": "quit\n"},
        {"op": "write", "ids": [1, 2], "data": "*\n"},
        {"op": "consumed", "id": 1, "n": 8},
        {"op": "close", "id": 1},
    ]
    assert len(lines) == 1  # connects produced nothing


def test_single_command_is_a_bare_object() -> None:
    out = io.BytesIO()
    Recorder().run(io.BytesIO(encode(HELLO, connect(1), data(1, b"x"))), out)
    assert out.getvalue() == b'{"op":"consumed","id":1,"n":0}\n'


def test_broadcast_uses_ids_skips_closed_and_unknown_and_coalesces() -> None:
    class Caster(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            if buf == b"close":
                client.close()
            else:
                targets: list[Client | int] = [self.clients[1], 2, 3, 2, 42, self.clients[3]]
                self.broadcast(targets, buf)
                self.broadcast(targets, "!")
                self.broadcast([], b"nobody")
                self.broadcast([42], b"nobody")
            return len(buf)

    lines = run(Caster(), connect(1), connect(2), connect(3), data(3, b"close"), data(1, b"hey"))
    assert lines[-1] == [
        {"op": "write", "ids": [1, 2], "data": "hey!"},
        {"op": "consumed", "id": 1, "n": 3},
    ]


# -- workers and channels ----------------------------------------------------


def test_hello_worker_fields_default_to_0_and_1() -> None:
    seen: list[tuple[int, int]] = []

    class Who(ServerLoop):
        def client_connected(self, client: Client) -> None:
            seen.append((self.worker, self.workers))

    loop = Who()
    assert (loop.worker, loop.workers) == (0, 1)  # before hello
    run(loop, {**HELLO, "worker": 2, "workers": 4}, connect(1), hello=False)
    assert seen == [(2, 4)]
    run(loop, HELLO, connect(1), hello=False)  # an older tgate: no fields
    assert seen[-1] == (0, 1)
    # Nonsense is not believed.
    for bad, expected in [
        ({"worker": 4, "workers": 4}, (0, 4)),
        ({"worker": -1}, (0, 1)),
        ({"worker": 1, "workers": 0}, (0, 1)),
        ({"worker": True, "workers": 3}, (0, 3)),
        ({"worker": "1", "workers": 2.0}, (0, 1)),
    ]:
        run(loop, {**HELLO, **bad}, connect(1), hello=False)
        assert seen[-1] == expected, bad


def test_subscribe_unsubscribe_and_publish_on_the_wire(backend: str) -> None:
    class Room(ServerLoop):
        def client_connected(self, client: Client) -> None:
            client.subscribe("room")
            client.subscribe("café")  # any non-empty str
            client.unsubscribe("café")

        def process_client_data(self, client: Client, buf: bytes) -> int:
            self.publish("room", buf)  # to every subscriber
            self.publish("room", buf, exclude=client)  # but the sender
            self.publish("room", "hé", exclude=2)  # an id; a str is sent as UTF-8
            self.publish("room", memoryview(b"\x00\xff"), raw=True)  # raw means nothing here
            self.publish("room", b"")  # no bytes: nothing to send
            return len(buf)

    out = io.BytesIO()
    Room().run(io.BytesIO(encode(HELLO, connect(1), data(1, b"hi\xff"))), out)
    assert out.getvalue() == (
        '[{"op":"subscribe","id":1,"channel":"room"},'
        '{"op":"subscribe","id":1,"channel":"café"},'
        '{"op":"unsubscribe","id":1,"channel":"café"}]\n'
        '[{"op":"publish","channel":"room","data":"hi\u00ff"},'
        '{"op":"publish","channel":"room","data":"hi\u00ff","exclude":1},'
        '{"op":"publish","channel":"room","data":"h\u00c3\u00a9","exclude":2},'
        '{"op":"publish","channel":"room","data":"\u0000\u00ff"},'
        '{"op":"consumed","id":1,"n":3}]\n'
    ).encode("utf-8").replace(b"\x00", b"\\u0000")


def test_channel_commands_share_the_consumed_line_in_order_closes_last() -> None:
    class Mixer(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.write(b"before ")
            client.subscribe("a")
            self.publish("a", b"news", exclude=client)
            client.write(b"after")  # not coalesced with "before " across the publish
            self.clients[2].unsubscribe("a")
            client.close()
            client.subscribe("b")  # closed: ignored
            client.unsubscribe("a")  # closed: ignored
            self.publish("a", b"bye")  # not tied to a client: still sent
            return len(buf)

    out = CountingWriter()
    Mixer().run(io.BytesIO(encode(HELLO, connect(1), connect(2), data(1, b"go"), TICK)), out)
    assert out.writes == 1
    assert parse(out.getvalue()) == [
        [
            {"op": "write", "id": 1, "data": "before "},
            {"op": "subscribe", "id": 1, "channel": "a"},
            {"op": "publish", "channel": "a", "data": "news", "exclude": 1},
            {"op": "write", "id": 1, "data": "after"},
            {"op": "unsubscribe", "id": 2, "channel": "a"},
            {"op": "publish", "channel": "a", "data": "bye"},
            {"op": "consumed", "id": 1, "n": 2},
            {"op": "close", "id": 1},
        ]
    ]


def test_channel_commands_from_connect_disconnect_and_tick() -> None:
    class Presence(ServerLoop):
        def client_connected(self, client: Client) -> None:
            client.subscribe("all")
            self.publish("all", f"+{client.id}", exclude=client.id)

        def client_disconnected(self, client: Client) -> None:
            client.subscribe("all")  # gone: ignored
            self.publish("all", f"-{client.id}")

        def update(self) -> None:
            self.publish("all", "tick")

        def process_client_data(self, client: Client, buf: bytes) -> int:
            return len(buf)

    lines = run(Presence(), connect(1), connect(2), disconnect(1), TICK, data(2, b"x"))
    assert lines == [
        [
            {"op": "subscribe", "id": 1, "channel": "all"},
            {"op": "publish", "channel": "all", "data": "+1", "exclude": 1},
        ],
        [
            {"op": "subscribe", "id": 2, "channel": "all"},
            {"op": "publish", "channel": "all", "data": "+2", "exclude": 2},
        ],
        [{"op": "publish", "channel": "all", "data": "-1"}],
        [{"op": "publish", "channel": "all", "data": "tick"}],
        [{"op": "consumed", "id": 2, "n": 1}],
    ]


def test_consecutive_publishes_of_bytes_coalesce_frames_never() -> None:
    class Caster(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            for line in buf.splitlines(keepends=True):
                self.publish("a", line, exclude=client)  # one publish for all of them
            self.publish("a", b"!", exclude=client.id)  # the same exclude, as an id
            self.publish("a", b"x")  # another exclude
            self.publish("b", b"y")  # another channel
            self.publish("b", b"z")
            return len(buf)

        def process_frame(self, client: Client, frame: bytes) -> None:
            self.publish("a", frame)
            self.publish("a", frame)  # two frames
            self.publish("a", b"> ", raw=True)
            self.publish("a", b"$ ", raw=True)  # raw bytes coalesce
            self.publish("a", frame)

    lines = run(Caster(), connect(1), data(1, b"one\ntwo\nthree\n"))
    assert lines[-1] == [
        {"op": "publish", "channel": "a", "data": "one\ntwo\nthree\n!", "exclude": 1},
        {"op": "publish", "channel": "a", "data": "x"},
        {"op": "publish", "channel": "b", "data": "yz"},
        {"op": "consumed", "id": 1, "n": 14},
    ]
    lines = run(Caster(), LINE_HELLO, connect(1), frame(1, b"f"), hello=False)
    assert lines[-1] == [
        {"op": "publish", "channel": "a", "data": "f"},
        {"op": "publish", "channel": "a", "data": "f"},
        {"op": "publish", "channel": "a", "data": "> $ ", "raw": True},
        {"op": "publish", "channel": "a", "data": "f"},
    ]


def test_framed_publish_is_one_frame_raw_only_when_asked() -> None:
    class Room(ServerLoop):
        def process_frame(self, client: Client, frame: bytes) -> None:
            self.publish("room", frame, exclude=client)
            self.publish("room", b"")  # an empty frame
            self.publish("room", b"> ", raw=True)
            self.publish("room", b"", raw=True)  # no bytes, unframed: nothing

    lines = run(Room(), LINE_HELLO, connect(1), frame(1, b"hi"), hello=False)
    assert lines == [
        [
            {"op": "publish", "channel": "room", "data": "hi", "exclude": 1},
            {"op": "publish", "channel": "room", "data": ""},
            {"op": "publish", "channel": "room", "data": "> ", "raw": True},
        ]
    ]


def test_bad_channels_and_excludes_raise_and_close_the_client() -> None:
    class Bad(Recorder):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            with pytest.raises(ValueError):
                client.subscribe("")
            with pytest.raises(TypeError):
                client.subscribe(b"room")  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                client.unsubscribe(None)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                self.publish("", b"x")
            with pytest.raises(TypeError):
                self.publish("a", 42)  # type: ignore[arg-type]
            for exclude in ("1", 1.0, True):
                with pytest.raises(TypeError):
                    self.publish("a", b"x", exclude=exclude)  # type: ignore[arg-type]
            client.subscribe(7)  # type: ignore[arg-type]  # uncaught: reported, closed
            return len(buf)

    loop = Bad()
    lines = run(loop, connect(1), data(1, b"x"))
    assert [type(exc) for exc, _ in loop.errors] == [TypeError]
    assert lines == [[{"op": "consumed", "id": 1, "n": 0}, {"op": "close", "id": 1}]]


def test_turn_over_the_line_limit_keeps_channel_commands_in_order(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tgate_handler, "_MAX_LINE", 4096 + 6 * 1000)  # pieces of 1000

    class Big(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.subscribe("big")
            self.publish("big", b"\x00" * 2500, exclude=client)
            client.unsubscribe("big")
            return len(buf)

    lines = run(Big(), connect(1), data(1, b"x"))
    piece = {"op": "publish", "channel": "big", "exclude": 1}
    assert lines == [
        [{"op": "subscribe", "id": 1, "channel": "big"}],
        *[[{**piece, "data": "\x00" * k}] for k in (1000, 1000, 500)],
        [{"op": "unsubscribe", "id": 1, "channel": "big"}],
        [{"op": "consumed", "id": 1, "n": 1}],
    ]
    assert "line limit" in capsys.readouterr().err


def test_a_framed_publish_over_the_line_limit_is_framed_by_the_adapter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tgate_handler, "_MAX_LINE", 4096 + 6 * 1000)

    class Big(ServerLoop):
        def process_frame(self, client: Client, frame: bytes) -> None:
            self.publish("big", b"\x00" * 2500)

    lines = run(Big(), {**HELLO, "framing": "netstring"}, connect(1), frame(1, b"go"),
                hello=False)
    cmds = flat(lines)
    assert all(c["op"] == "publish" and c.get("raw") is True for c in cmds)
    assert "".join(c["data"] for c in cmds) == "2500:" + "\x00" * 2500 + ","
    assert "line limit" in capsys.readouterr().err


def test_eof_flag_lets_the_handler_finish_a_partial_message() -> None:
    class Lines(Recorder):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            n = super().process_client_data(client, buf)
            if n:
                client.write(buf[:n])
            elif client.eof:
                client.write(b"[partial]" + buf)
                return len(buf)
            return n

    loop = Lines()
    lines = run(
        loop, connect(1), data(1, b"one\ntw"), data(1, b"o\nthree", eof=True), disconnect(1, "eof")
    )
    assert loop.data_calls() == [
        (1, b"one\ntw", False),
        (1, b"tw", False),
        (1, b"two\nthree", True),
        (1, b"three", True),
    ]
    assert received(lines) == {1: b"one\ntwo\n[partial]three"}
    assert consumed(lines) == [4, 9]
    assert ("disconnected", (1, "eof", False)) in loop.calls


def test_eof_with_empty_data() -> None:
    loop = Recorder()
    lines = run(loop, connect(1), data(1, b"x"), data(1, b"", eof=True))
    assert loop.data_calls() == [(1, b"x", False), (1, b"x", True)]
    assert consumed(lines) == [0, 0]


# -- lifecycle ---------------------------------------------------------------


def test_connect_sets_client_fields_and_data() -> None:
    seen: list[Client] = []

    class Greeter(ServerLoop):
        def client_connected(self, client: Client) -> Any:
            seen.append(client)
            client.write(f"welcome {client.id}\n")
            return ["state", client.id]

    loop = Greeter()
    lines = run(loop, connect(5))
    [client] = seen
    assert loop.clients == {5: client}
    assert (client.id, client.peer, client.local) == (5, ("127.0.0.1", 40005), ("::1", 7000))
    assert client.data == ["state", 5]
    assert (client.eof, client.reason, client.closed) == (False, None, False)
    assert lines == [[{"op": "write", "id": 5, "data": "welcome 5\n"}]]


def replayed(cid: int) -> Msg:
    """A ``connect`` tgate replays to a restarted handler process."""
    return {**connect(cid), "replay": True}


def test_a_replayed_connect_sets_client_replayed_before_client_connected() -> None:
    seen: dict[int, bool] = {}

    class Watcher(ServerLoop):
        def client_connected(self, client: Client) -> Any:
            seen[client.id] = client.replayed

    # Only a real true counts: the field is absent on a first connect.
    odd = [{**connect(3), "replay": False}, {**connect(4), "replay": 1}]
    loop = Watcher()
    assert run(loop, connect(1), replayed(2), *odd, {**connect(5), "replay": "true"}) == []
    assert seen == {1: False, 2: True, 3: False, 4: False, 5: False}
    assert {cid: c.replayed for cid, c in loop.clients.items()} == seen
    assert Client(loop, 9).replayed is False


def test_exception_in_client_connected_closes_that_client() -> None:
    class Picky(Recorder):
        def client_connected(self, client: Client) -> Any:
            if client.id == 1:
                client.write(b"go away\n")
                raise PermissionError("no")
            return super().client_connected(client)

    loop = Picky()
    lines = run(loop, connect(1), connect(2), data(1, b"x\n"), data(2, b"y\n"))
    assert [c.id for _, c in loop.errors if c] == [1]
    assert lines[0] == [
        {"op": "write", "id": 1, "data": "go away\n"},
        {"op": "close", "id": 1},
    ]
    assert consumed(lines, 1) == [0]
    assert consumed(lines, 2) == [2]
    assert loop.data_calls() == [(2, b"y\n", False)]
    assert loop.clients[1].data is None and loop.clients[2].data == {"state": 2}


def test_disconnect_calls_client_disconnected_once_and_forgets() -> None:
    kept: list[Client] = []

    class Keeper(Recorder):
        def client_connected(self, client: Client) -> Any:
            kept.append(client)
            return None

        def client_disconnected(self, client: Client) -> None:
            super().client_disconnected(client)
            client.write(b"too late")
            client.close()

    loop = Keeper()
    lines = run(
        loop,
        connect(1),
        connect(2),
        disconnect(1, "reset"),
        disconnect(1, "reset"),  # duplicate: ignored
        disconnect(9, "eof"),  # unknown: ignored
        data(1, b"late\n"),  # after disconnect: answered, not processed
        disconnect(2, "some-new-reason"),
    )
    disconnected = [args for name, args in loop.calls if name == "disconnected"]
    assert disconnected == [(1, "reset", False), (2, "some-new-reason", False)]
    assert loop.clients == {}
    assert kept[0].closed and kept[0].reason == "reset"
    assert loop.data_calls() == []
    assert flat(lines) == [{"op": "consumed", "id": 1, "n": 0}]


def test_disconnect_after_handler_close() -> None:
    class Closer(Recorder):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            super().process_client_data(client, buf)
            client.close()
            client.close()  # twice: one command
            return len(buf)

    loop = Closer()
    lines = run(loop, connect(1), data(1, b"bye"), disconnect(1, "closed"))
    assert lines == [[{"op": "consumed", "id": 1, "n": 3}, {"op": "close", "id": 1}]]
    assert ("disconnected", (1, "closed", False)) in loop.calls


def test_tick_calls_update_and_its_writes_go_out() -> None:
    class Pinger(Recorder):
        def update(self) -> None:
            super().update()
            self.broadcast(self.clients.values(), b"PING\n")
            if len(self.calls) > 4:
                raise RuntimeError("update failed")

    loop = Pinger()
    lines = run(loop, TICK, connect(1), connect(2), TICK, TICK)
    assert lines == [[{"op": "write", "ids": [1, 2], "data": "PING\n"}]] * 2
    assert [(str(e), c) for e, c in loop.errors] == [("update failed", None)]
    assert closes(lines) == []


def test_exception_in_client_disconnected_only_reported() -> None:
    class Grumpy(Recorder):
        def client_disconnected(self, client: Client) -> None:
            self.broadcast(self.clients.values(), b"left\n")
            raise RuntimeError("oops")

    loop = Grumpy()
    lines = run(loop, connect(1), connect(2), disconnect(1), data(2, b"z\n"))
    assert [(str(e), c.id if c else None) for e, c in loop.errors] == [("oops", 1)]
    assert lines == [
        [{"op": "write", "ids": [2], "data": "left\n"}],
        [{"op": "consumed", "id": 2, "n": 2}],
    ]


def test_unknown_ops_fields_and_garbage_are_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    stream = (
        encode(
            {**HELLO, "future": {"x": 1}},
            {"op": "frobnicate", "id": 1},
            {"no": "op"},
            {**connect(1), "tls": True},
            {**data(1, b"abc"), "more": [1, 2]},
        )
        + b"not json\n[1, 2]\n\n  \r\n"
        + encode({"op": "data", "id": "1", "data": "x"})
    )
    out = io.BytesIO()
    Echo().run(io.BytesIO(stream), out)
    assert parse(out.getvalue()) == [
        [{"op": "write", "id": 1, "data": "abc"}, {"op": "consumed", "id": 1, "n": 3}]
    ]
    assert "not json" in capsys.readouterr().err


def test_hello_resets_state() -> None:
    loop = Recorder()
    lines = run(loop, connect(1), data(1, b"partial"), HELLO, connect(1), data(1, b"x\n"))
    assert ("disconnected", (1, "reset", False)) in loop.calls
    assert loop.data_calls()[-1] == (1, b"x\n", False)  # the old mirror is gone
    assert consumed(lines) == [0, 2]
    assert loop.hello == HELLO


def test_last_line_without_newline_and_read_fallback() -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.buf.read(n)

    stream = encode(HELLO, connect(1)) + json.dumps(data(1, b"q")).encode()
    out = io.BytesIO()
    Echo().run(ReadOnly(stream), out)  # type: ignore[arg-type]
    assert received(parse(out.getvalue())) == {1: b"q"}


# -- batching and output -----------------------------------------------------


def test_one_output_write_per_input_chunk() -> None:
    n = 50
    msgs = [HELLO] + [connect(i) for i in range(1, n + 1)]
    msgs += [data(i, b"x%d" % i) for i in range(1, n + 1)]
    stream = encode(*msgs)
    out = CountingWriter()
    Echo().run(io.BytesIO(stream), out)
    assert (out.writes, out.flushes) == (1, 1)
    assert len(parse(out.getvalue())) == n

    # Several chunks: one write per chunk that completes a line that has a reply.
    cut = stream.index(b"\n", stream.index(b'"data"')) + 3  # 3 bytes into a data line
    chunks = [stream[:cut], stream[cut : cut + 5], stream[cut + 5 :]]
    reader = ChunkReader([*chunks, b"", b"never read"])
    out = CountingWriter()
    Echo().run(reader, out)  # type: ignore[arg-type]
    assert (out.writes, out.flushes) == (2, 2)  # chunks 1 and 3; chunk 2 is mid-line
    assert reader.reads == 4  # returned at EOF
    assert received(parse(out.getvalue())) == {i: b"x%d" % i for i in range(1, n + 1)}


def test_reply_over_the_line_limit_is_split(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tgate_handler, "_MAX_LINE", 4096 + 6 * 1000)  # pieces of 1000
    payload = b"\x00" * 4200  # 6 bytes per byte on the wire: too long for one line
    lines = run(Echo(), connect(1), connect(2), data(1, payload), data(2, b"small"))
    assert lines == [
        *[[{"op": "write", "id": 1, "data": "\x00" * k}] for k in (1000, 1000, 1000, 1000, 200)],
        [{"op": "consumed", "id": 1, "n": 4200}],
        [{"op": "write", "id": 2, "data": "small"}, {"op": "consumed", "id": 2, "n": 5}],
    ]
    assert "line limit" in capsys.readouterr().err


def test_process_client_data_must_be_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(ServerLoop(), connect(1), connect(2), data(1, b"x"), data(2, b""))
    assert lines == [
        [{"op": "consumed", "id": 1, "n": 0}, {"op": "close", "id": 1}],
        [{"op": "consumed", "id": 2, "n": 0}],
    ]
    assert "NotImplementedError: ServerLoop.process_client_data" in capsys.readouterr().err


def test_nothing_written_when_there_is_nothing_to_say() -> None:
    out = CountingWriter()
    Recorder().run(io.BytesIO(encode(HELLO, connect(1), TICK, disconnect(1))), out)
    assert out.writes == 0


def test_broken_stdout_ends_run(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(io.BytesIO):
        def write(self, b: Any) -> int:
            raise BrokenPipeError

    reader = ChunkReader([encode(HELLO, connect(1), data(1, b"x")), encode(data(1, b"y"))])
    Echo().run(reader, Broken())  # type: ignore[arg-type]
    assert reader.reads == 1
    assert "stdout is closed" in capsys.readouterr().err


def test_system_exit_in_handler_flushes_finished_turns() -> None:
    class Quitter(Echo):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            if buf == b"quit":
                client.write(b"unsent")
                raise SystemExit(3)
            return super().process_client_data(client, buf)

    out = io.BytesIO()
    with pytest.raises(SystemExit):
        Quitter().run(io.BytesIO(encode(HELLO, connect(1), data(1, b"a"), data(1, b"quit"))), out)
    assert parse(out.getvalue()) == [
        [{"op": "write", "id": 1, "data": "a"}, {"op": "consumed", "id": 1, "n": 1}]
    ]


# -- framed modes (--framing line|crlf|packet2|packet4|netstring) ------------


class FrameRecorder(ServerLoop):
    """Records frames and eofs; echoes each frame, and closes on a b"quit" frame."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.errors: list[tuple[BaseException, Client | None]] = []

    def process_frame(self, client: Client, frame: bytes) -> None:
        self.calls.append(("frame", (client.id, frame)))
        if frame == b"quit":
            client.close()
        client.write(frame)

    def client_eof(self, client: Client) -> None:
        self.calls.append(("eof", (client.id, client.eof)))
        super().client_eof(client)

    def on_error(self, exc: BaseException, client: Client | None) -> None:
        self.errors.append((exc, client))


def test_hello_sets_framing() -> None:
    loop = ServerLoop()  # no data callbacks: serves any framing (see the mismatch tests)
    assert loop.framing == "raw"
    run(loop, hello=False)
    assert loop.framing == "raw"
    run(loop, LINE_HELLO, hello=False)
    assert loop.framing == "line"
    run(loop, {k: v for k, v in HELLO.items() if k != "framing"}, hello=False)
    assert loop.framing == "raw"  # an old tgate without the field: raw


def test_frames_are_delivered_whole_and_get_no_consumed(backend: str) -> None:
    loop = FrameRecorder()
    binary = bytes(range(256))
    lines = run(
        loop,
        LINE_HELLO,
        connect(1),
        connect(2),
        frame(1, b"hello"),
        frame(2, binary),
        frame(1, b""),
        TICK,
        frame(1, b"x\r"),
        hello=False,
    )
    assert loop.calls == [
        ("frame", (1, b"hello")),
        ("frame", (2, binary)),
        ("frame", (1, b"")),
        ("frame", (1, b"x\r")),
    ]
    assert consumed(lines) == []
    # One line per frame message, one frame per write (an empty frame included).
    assert lines == [
        [{"op": "write", "id": 1, "data": "hello"}],
        [{"op": "write", "id": 2, "data": binary.decode("latin-1")}],
        [{"op": "write", "id": 1, "data": ""}],
        [{"op": "write", "id": 1, "data": "x\r"}],
    ]
    assert loop.errors == []


def test_framed_writes_are_one_frame_each_raw_writes_are_marked_and_coalesced() -> None:
    class Prompt(ServerLoop):
        def process_frame(self, client: Client, frame: bytes) -> None:
            client.write(b"one")
            client.write("two")
            client.write(b"")
            client.write_raw(b"> ")
            client.write_raw("\u00e9")
            client.write_raw(b"")  # nothing at all
            client.write(b"three")
            self.broadcast(self.clients.values(), b"all")
            self.broadcast(self.clients.values(), b"all")
            self.broadcast([2], b"*", raw=True)
            self.broadcast([2], b"*", raw=True)

    lines = run(Prompt(), {**HELLO, "framing": "crlf"}, connect(1), connect(2), frame(1, b"go"),
                hello=False)
    assert lines == [
        [
            {"op": "write", "id": 1, "data": "one"},
            {"op": "write", "id": 1, "data": "two"},
            {"op": "write", "id": 1, "data": ""},
            {"op": "write", "id": 1, "data": "> \u00c3\u00a9", "raw": True},
            {"op": "write", "id": 1, "data": "three"},
            {"op": "write", "ids": [1, 2], "data": "all"},
            {"op": "write", "ids": [1, 2], "data": "all"},
            {"op": "write", "ids": [2], "data": "**", "raw": True},
        ]
    ]


def test_write_raw_in_raw_mode_is_a_plain_write() -> None:
    class Both(ServerLoop):
        def process_client_data(self, client: Client, buf: bytes) -> int:
            client.write(b"a")
            client.write_raw(b"b")
            client.write(b"")
            self.broadcast([client], b"c", raw=True)
            return len(buf)

    assert run(Both(), connect(1), data(1, b"x")) == [
        [
            {"op": "write", "id": 1, "data": "ab"},
            {"op": "write", "ids": [1], "data": "c"},
            {"op": "consumed", "id": 1, "n": 1},
        ]
    ]


def test_eof_closes_the_client_by_default_after_its_writes() -> None:
    loop = FrameRecorder()
    lines = run(loop, LINE_HELLO, connect(1), connect(2), frame(1, b"last"), eof(1),
                frame(2, b"still here"), disconnect(1, "closed"), hello=False)
    assert loop.calls == [
        ("frame", (1, b"last")),
        ("eof", (1, True)),  # client.eof is set before client_eof is called
        ("frame", (2, b"still here")),
    ]
    assert lines == [
        [{"op": "write", "id": 1, "data": "last"}],
        [{"op": "close", "id": 1}],
        [{"op": "write", "id": 2, "data": "still here"}],
    ]
    assert consumed(lines) == []
    assert list(loop.clients) == [2]


def test_eof_after_the_handler_closed_the_client_calls_nothing() -> None:
    loop = FrameRecorder()
    lines = run(loop, LINE_HELLO, connect(1), frame(1, b"quit"), eof(1), hello=False)
    assert loop.calls == [("frame", (1, b"quit"))]
    assert lines == [[{"op": "close", "id": 1}]]  # the write after close is dropped
    assert loop.clients[1].eof


def test_overriding_client_eof() -> None:
    class Polite(FrameRecorder):
        def client_eof(self, client: Client) -> None:
            self.calls.append(("eof", (client.id, client.eof)))
            client.write(b"bye")  # and keep it open until the next tick

        def update(self) -> None:
            for client in self.clients.values():
                if client.eof:
                    client.write_raw(b"!")
                    client.close()

    loop = Polite()
    lines = run(loop, LINE_HELLO, connect(1), connect(2), eof(1), TICK, TICK, hello=False)
    assert lines == [
        [{"op": "write", "id": 1, "data": "bye"}],
        [{"op": "write", "id": 1, "data": "!", "raw": True}, {"op": "close", "id": 1}],
    ]
    assert [c.eof for c in loop.clients.values()] == [True, False]


def test_exception_in_process_frame_closes_only_that_client() -> None:
    class Crashy(FrameRecorder):
        def process_frame(self, client: Client, frame: bytes) -> None:
            if frame == b"boom":
                client.write(b"partial")
                self.broadcast(self.clients.values(), b"to all")
                raise ValueError("bang")
            super().process_frame(client, frame)

    loop = Crashy()
    lines = run(
        loop,
        LINE_HELLO,
        connect(1),
        connect(2),
        frame(1, b"boom"),
        frame(2, b"hello"),
        frame(1, b"ignored: closed"),
        eof(1),  # client_eof not called: already closed
        disconnect(1, "closed"),
        frame(2, b"world"),
        hello=False,
    )
    assert [(str(e), c.id if c else None) for e, c in loop.errors] == [("bang", 1)]
    assert lines == [
        [
            {"op": "write", "id": 1, "data": "partial"},
            {"op": "write", "ids": [1, 2], "data": "to all"},
            {"op": "close", "id": 1},
        ],
        [{"op": "write", "id": 2, "data": "hello"}],
        [{"op": "write", "id": 2, "data": "world"}],
    ]
    assert loop.calls == [("frame", (2, b"hello")), ("frame", (2, b"world"))]


def test_exception_in_client_eof_closes_the_client() -> None:
    class Bad(FrameRecorder):
        def client_eof(self, client: Client) -> None:
            raise RuntimeError("eof failed")

    loop = Bad()
    lines = run(loop, LINE_HELLO, connect(1), eof(1), hello=False)
    assert [(str(e), c.id if c else None) for e, c in loop.errors] == [("eof failed", 1)]
    assert lines == [[{"op": "close", "id": 1}]]


def test_process_frame_must_be_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(ServerLoop(), LINE_HELLO, connect(1), connect(2), frame(1, b"x"), eof(2),
                hello=False)
    assert lines == [[{"op": "close", "id": 1}], [{"op": "close", "id": 2}]]
    assert "NotImplementedError: ServerLoop.process_frame" in capsys.readouterr().err


class FramesOnly(ServerLoop):
    def process_frame(self, client: Client, frame: bytes) -> None:
        client.write(frame)


class BytesOnly(ServerLoop):
    def process_client_data(self, client: Client, buf: bytes) -> int:
        client.write(buf)
        return len(buf)


class BufferOnly(ServerLoop):
    def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
        return length


@pytest.mark.parametrize(
    ("loop", "hello", "message"),
    [
        pytest.param(
            FramesOnly(), HELLO,
            "tgate_handler: FramesOnly defines process_frame but not process_client_data, and "
            "tgate runs in raw mode (hello framing 'raw'), where every client would fail: start "
            "tgate with --framing line (or another framing) or implement process_client_data; "
            "exiting\n",
            id="frame-only-in-raw",
        ),
        pytest.param(
            FramesOnly(), {k: v for k, v in HELLO.items() if k != "framing"},
            "FramesOnly defines process_frame but not process_client_data",
            id="frame-only-old-tgate-without-framing",
        ),
        pytest.param(
            BytesOnly(), LINE_HELLO,
            "tgate_handler: BytesOnly defines process_client_data but not process_frame, and "
            "tgate runs with --framing line, where every client would fail: start tgate with "
            "--framing raw or implement process_frame; exiting\n",
            id="data-only-in-line",
        ),
        pytest.param(
            BufferOnly(), {**HELLO, "framing": "packet4"},
            "BufferOnly defines process_client_buffer but not process_frame, and tgate runs "
            "with --framing packet4",
            id="buffer-only-in-packet4",
        ),
    ],
)
def test_callbacks_that_cannot_serve_the_framing_exit_at_hello(
    loop: ServerLoop, hello: Msg, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.BytesIO()
    stream = encode(hello, connect(1), data(1, b"x"), frame(1, b"x"))
    with pytest.raises(SystemExit) as info:
        loop.run(io.BytesIO(stream), out)
    assert info.value.code == 1
    assert out.getvalue() == b""
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1  # one line, no traceback


def test_callbacks_that_fit_the_framing_do_not_exit() -> None:
    # Each handler in the framing it serves; a handler with both, or with
    # neither (a banner that needs no input), serves any framing.
    assert received(run(BytesOnly(), connect(1), data(1, b"x"))) == {1: b"x"}
    assert consumed(run(BufferOnly(), connect(1), data(1, b"xy"))) == [2]
    assert flat(run(FramesOnly(), LINE_HELLO, connect(1), frame(1, b"x"), hello=False)) == [
        {"op": "write", "id": 1, "data": "x"}
    ]

    class Banner(ServerLoop):
        def client_connected(self, client: Client) -> None:
            client.write(b"hi")
            client.close()

    class Both(FramesOnly, BytesOnly):
        pass

    for hello in (HELLO, LINE_HELLO):
        assert flat(run(Banner(), hello, connect(1), hello=False)) == [
            {"op": "write", "id": 1, "data": "hi"}, {"op": "close", "id": 1},
        ]
    assert received(run(Both(), connect(1), data(1, b"d"))) == {1: b"d"}
    assert received(run(Both(), LINE_HELLO, connect(1), frame(1, b"f"), hello=False)) == {
        1: b"f"
    }


def test_a_callback_set_on_the_instance_counts(capsys: pytest.CaptureFixture[str]) -> None:
    loop = ServerLoop()
    loop.process_frame = lambda client, frame: None  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        run(loop)
    assert "ServerLoop defines process_frame but not process_client_data" in (
        capsys.readouterr().err
    )
    loop.process_client_data = lambda client, buf: len(buf)  # type: ignore[method-assign]
    assert consumed(run(loop, connect(1), data(1, b"ab"))) == [2]


def test_frame_only_handler_process_in_raw_mode_exits_1_with_one_line() -> None:
    script = f"""
import sys
sys.path.insert(0, {str(ADAPTER_DIR)!r})
from tgate_handler import ServerLoop

class LineEcho(ServerLoop):
    def process_frame(self, client, frame):
        client.write(frame)

LineEcho().run()
print("not reached", file=sys.stderr)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=encode(HELLO, connect(1), data(1, b"hi\n")),
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        "tgate_handler: LineEcho defines process_frame but not process_client_data, and tgate "
        "runs in raw mode (hello framing 'raw'), where every client would fail: start tgate "
        "with --framing line (or another framing) or implement process_client_data; exiting\n"
    )


def test_frames_and_eofs_for_unknown_clients_are_ignored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop = FrameRecorder()
    lines = run(
        loop,
        LINE_HELLO,
        frame(9, b"who?"),
        eof(9),
        {"op": "frame", "id": "1", "data": "x"},
        connect(1),
        {"op": "frame", "id": 1, "data": 5},
        {"op": "frame", "id": 1, "data": "ok", "future": True},
        hello=False,
    )
    assert lines == [[{"op": "write", "id": 1, "data": "ok"}]]
    err = capsys.readouterr().err
    assert "frame for unknown client 9" in err and "eof for unknown client 9" in err


def test_framed_output_is_one_write_per_input_chunk() -> None:
    n = 30
    msgs = [LINE_HELLO] + [connect(i) for i in range(1, n + 1)]
    msgs += [frame(i, b"f%d" % i) for i in range(1, n + 1)]
    msgs += [eof(i) for i in range(1, n + 1)]
    stream = encode(*msgs)
    out = CountingWriter()
    FrameRecorder().run(io.BytesIO(stream), out)
    assert (out.writes, out.flushes) == (1, 1)
    lines = parse(out.getvalue())
    assert len(lines) == 2 * n and consumed(lines) == []
    assert closes(lines) == list(range(1, n + 1))

    cut = stream.index(b'"op": "eof"')  # mid-line
    reader = ChunkReader([stream[:cut], stream[cut:]])
    out = CountingWriter()
    FrameRecorder().run(reader, out)  # type: ignore[arg-type]
    assert (out.writes, out.flushes) == (2, 2)
    assert parse(out.getvalue()) == lines


@pytest.mark.parametrize(
    ("framing", "prefix", "suffix"),
    [
        ("line", b"", b"\n"),
        ("crlf", b"", b"\r\n"),
        ("packet2", b"\x0c\x00", b""),
        ("packet4", b"\x00\x00\x0c\x00", b""),
        ("netstring", b"3072:", b","),
    ],
)
def test_a_frame_over_the_line_limit_is_framed_by_the_adapter(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    framing: str,
    prefix: bytes,
    suffix: bytes,
) -> None:
    monkeypatch.setattr(tgate_handler, "_MAX_LINE", 4096 + 6 * 300)  # pieces of 300
    payload = bytes(range(256)) * 12  # about 6,500 bytes of JSON: over the limit
    loop = FrameRecorder()
    lines = run(loop, {**HELLO, "framing": framing}, connect(1), frame(1, payload), eof(1),
                hello=False)
    # Pieces of one frame would be frames of their own: the adapter frames it and
    # sends the pieces raw, so the client still gets exactly one frame.
    *pieces, last = lines
    assert len(pieces) == 11
    assert all(cmd.get("raw") is True for line in pieces for cmd in line)
    assert b"".join(cmd["data"].encode("latin-1") for line in pieces for cmd in line) == (
        prefix + payload + suffix
    )
    assert last == [{"op": "close", "id": 1}]
    assert "line limit" in capsys.readouterr().err


def test_a_frame_too_long_for_packet2_is_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tgate_handler, "_MAX_LINE", 4096 + 6 * 1000)

    class Big(ServerLoop):
        def process_frame(self, client: Client, frame: bytes) -> None:
            client.write(b"\x00" * 70000)
            client.write(b"small")

    lines = run(Big(), {**HELLO, "framing": "packet2"}, connect(1), frame(1, b"x"), hello=False)
    assert lines == [[{"op": "write", "id": 1, "data": "small"}]]
    assert "cannot be sent in framing 'packet2'" in capsys.readouterr().err


# -- the examples, as real processes -----------------------------------------


def run_process(args: list[str], stream: bytes) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [sys.executable, *args],
        input=stream,
        capture_output=True,
        timeout=20,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},  # no PYTHONPATH
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def test_echo_example_process() -> None:
    payload = bytes(range(256))
    stream = encode(HELLO, connect(1), data(1, b"h"), data(1, b"i\n"), TICK, data(1, b"", eof=True))
    stream += encode(disconnect(1), connect(2), data(2, payload), ensure_ascii=False)
    # -S: no site-packages, so the example must find the adapter from the checkout
    # (and uses the stdlib json codec).
    proc = run_process(["-S", "examples/echo.py"], stream)
    lines = parse(proc.stdout)
    assert lines[:3] == [
        [{"op": "write", "id": 1, "data": "h"}, {"op": "consumed", "id": 1, "n": 1}],
        [{"op": "write", "id": 1, "data": "i\n"}, {"op": "consumed", "id": 1, "n": 2}],
        [{"op": "consumed", "id": 1, "n": 0}],
    ]
    assert received(lines) == {1: b"hi\n", 2: payload}
    assert proc.stderr == b""


# -- a fake gateway, to tell what the clients of a handler using channels get --

#: The client id of the fence (tests must not use it).
FENCE = 1000


def fenced(msgs: list[Msg]) -> list[Msg]:
    """``msgs`` (hello first) with a fence after each message: a client FENCE
    that connects right after hello, then an empty ``data`` for it after every
    message. Its ``consumed`` (always sent, alone: there are no bytes to
    process) marks the end of the commands the message before it produced;
    :func:`answers` splits them back. The fence is also a client of the handler
    (a chat subscribes it, say): ignore what it receives. An empty ``data``
    works in framed modes too (the adapter answers it all the same)."""
    fence = data(FENCE, b"")
    return [msgs[0], connect(FENCE), fence, *(m for msg in msgs[1:] for m in (msg, fence))]


def answers(lines: list[list[Msg]], n: int) -> list[list[Msg]]:
    """The commands of a fenced run, one list per message after hello."""
    groups: list[list[Msg]] = [[]]
    for cmd in flat(lines):
        if cmd["op"] == "consumed" and cmd["id"] == FENCE:
            groups.append([])
        else:
            groups[-1].append(cmd)
    # groups[0]: hello and the fence's connect; then one per message; then nothing.
    assert len(groups) == n + 2 and groups[-1] == [], groups
    return groups[1:-1]


def simulate(msgs: list[Msg], per_msg: list[list[Msg]], framed: bool = False) -> dict[int, bytes]:
    """What each client receives when a gateway applies ``per_msg[i]`` right
    after sending ``msgs[i]`` (both without hello): writes and channels as
    docs/protocol.md says, a client leaving its channels at its disconnect and
    getting nothing after it or after its close. ``framed``: each write or
    publish is a line (tgate appends ``\\n``) unless raw."""
    got: dict[int, bytes] = {}
    live: set[int] = set()
    closed: set[int] = set()
    channels: dict[str, set[int]] = {}

    def send(cid: int, cmd: Msg) -> None:
        if cid in live and cid not in closed:
            end = b"\n" if framed and not cmd.get("raw") else b""
            got[cid] = got.get(cid, b"") + cmd["data"].encode("latin-1") + end

    for msg, cmds in zip(msgs, per_msg, strict=True):
        if msg["op"] == "connect":
            live.add(msg["id"])
        elif msg["op"] == "disconnect":
            live.discard(msg["id"])
            for members in channels.values():
                members.discard(msg["id"])
        for cmd in cmds:
            op = cmd["op"]
            if op == "write":
                for cid in cmd["ids"] if "ids" in cmd else [cmd["id"]]:
                    send(cid, cmd)
            elif op == "close":
                closed.add(cmd["id"])
            elif op == "subscribe" and cmd["id"] in live:
                channels.setdefault(cmd["channel"], set()).add(cmd["id"])
            elif op == "unsubscribe":
                channels.get(cmd["channel"], set()).discard(cmd["id"])
            elif op == "publish":
                for cid in sorted(channels.get(cmd["channel"], ())):
                    if cid != cmd.get("exclude"):
                        send(cid, cmd)
    return got


CHAT_RAW: list[Msg] = [
    HELLO,
    connect(1),
    connect(2),
    connect(3),
    data(1, b"hello\r\nhow are"),  # one line, one partial line
    data(2, b"\xe9\xff\x00 \r\r\n"),  # binary; only one \r stripped
    data(1, b" you?\n\n"),  # completes the partial line, then an empty line
    disconnect(3, "reset"),
    data(2, b"unterminated\r", eof=True),  # still a line, as --framing line makes it
    disconnect(2, "eof"),
    TICK,
]


def test_chat_example_process() -> None:
    # A fence after each message tells which commands answer it.
    proc = run_process(["-S", "examples/chat.py"], encode(*fenced(CHAT_RAW)))
    lines = parse(proc.stdout)
    assert consumed(lines, 1) == [7, 14]
    assert consumed(lines, 2) == [7, 13]
    assert proc.stderr == b""
    per = answers(lines, len(CHAT_RAW) - 1)
    # No list of clients: one channel, each message published to it but its author.
    assert per[1] == [
        {"op": "subscribe", "id": 2, "channel": "chat"},
        {"op": "publish", "channel": "chat", "data": "* 2 joined\n", "exclude": 2},
    ]
    assert per[4] == [
        {"op": "publish", "channel": "chat", "data": "2: \xe9\xff\x00 \r\n", "exclude": 2},
        {"op": "consumed", "id": 2, "n": 7},
    ]
    assert per[6] == [{"op": "publish", "channel": "chat", "data": "* 3 left\n"}]
    assert not [cmd for cmd in flat(lines) if cmd["op"] in ("write", "close")]
    assert simulate(CHAT_RAW[1:], per) == CHAT_RECEIVED
    # Without the fences, the same commands.
    plain = run_process(["-S", "examples/chat.py"], encode(*CHAT_RAW))
    assert flat(parse(plain.stdout)) == [cmd for cmds in per for cmd in cmds]


CHAT_RECEIVED = {
    1: b"* 2 joined\n* 3 joined\n2: \xe9\xff\x00 \r\n* 3 left\n2: unterminated\n* 2 left\n",
    2: b"* 3 joined\n1: hello\n1: how are you?\n1: \n* 3 left\n",
    3: b"1: hello\n2: \xe9\xff\x00 \r\n1: how are you?\n1: \n",
}


def test_chat_example_does_not_announce_a_replayed_client() -> None:
    """A restarted chat process is replayed its live clients' connects: it
    subscribes them again (a new process knows nothing else) but the room,
    which saw them join, is not told again. Two processes, one gateway."""
    first = [HELLO, connect(1), connect(2), data(1, b"a\n")]
    second = [HELLO, replayed(1), replayed(2), data(2, b"b\n"), connect(3), data(1, b"c\n")]
    per: list[list[Msg]] = []
    for msgs in (first, second):
        proc = run_process(["-S", "examples/chat.py"], encode(*fenced(msgs)))
        assert proc.stderr == b""
        per += answers(parse(proc.stdout), len(msgs) - 1)
    # The replayed connects (per[3], per[4]): a subscribe, no publish.
    assert per[3] == [{"op": "subscribe", "id": 1, "channel": "chat"}]
    assert per[4] == [{"op": "subscribe", "id": 2, "channel": "chat"}]
    assert per[6] == [
        {"op": "subscribe", "id": 3, "channel": "chat"},
        {"op": "publish", "channel": "chat", "data": "* 3 joined\n", "exclude": 3},
    ]
    assert simulate([*first[1:], *second[1:]], per) == {
        1: b"* 2 joined\n2: b\n* 3 joined\n",
        2: b"1: a\n* 3 joined\n1: c\n",
        3: b"1: c\n",
    }


def test_chat_example_process_line_framing() -> None:
    """The same conversation as test_chat_example_process, as tgate --framing line
    delivers it: the clients receive the same bytes."""
    msgs = [
        LINE_HELLO,
        connect(1),
        connect(2),
        connect(3),
        frame(1, b"hello"),
        frame(2, b"\xe9\xff\x00 \r"),
        frame(1, b"how are you?"),
        frame(1, b""),
        disconnect(3, "reset"),
        frame(2, b"unterminated"),
        eof(2),
        disconnect(2, "closed"),
        TICK,
    ]
    proc = run_process(["-S", "examples/chat.py"], encode(*fenced(msgs)))
    lines = parse(proc.stdout)
    assert [c for c in flat(lines) if c["op"] == "consumed" and c["id"] != FENCE] == []
    assert closes(lines) == [2]
    per = answers(lines, len(msgs) - 1)
    assert per[1] == [
        {"op": "subscribe", "id": 2, "channel": "chat"},
        {"op": "publish", "channel": "chat", "data": "* 2 joined", "exclude": 2},
    ]
    assert per[6] == [{"op": "publish", "channel": "chat", "data": "1: ", "exclude": 1}]
    # tgate ends each publish with "\n": what the clients get is the raw-mode bytes.
    assert simulate(msgs[1:], per, framed=True) == CHAT_RECEIVED
    assert proc.stderr == b""


def test_echo_example_process_framed() -> None:
    payload = bytes(range(256))
    stream = encode(
        {**HELLO, "framing": "packet2"},
        connect(1),
        frame(1, payload),
        frame(1, b""),
        TICK,
        eof(1),
        disconnect(1, "closed"),
        ensure_ascii=False,
    )
    proc = run_process(["-S", "examples/echo.py"], stream)
    assert parse(proc.stdout) == [
        [{"op": "write", "id": 1, "data": payload.decode("latin-1")}],
        [{"op": "write", "id": 1, "data": ""}],
        [{"op": "close", "id": 1}],
    ]
    assert proc.stderr == b""


def test_stray_output_cannot_corrupt_the_protocol() -> None:
    script = f"""
import os, subprocess, sys
sys.path.insert(0, {str(ADAPTER_DIR)!r})
from tgate_handler import ServerLoop

class Noisy(ServerLoop):
    def process_client_data(self, client, buf):
        print("stray print")
        sys.stdout.write("stray write\\n")
        os.write(1, b"stray fd write\\n")
        subprocess.run(["echo", "stray child"], check=True)
        client.write(buf)
        return len(buf)

Noisy().run()
print("after run")
"""
    proc = run_process(["-c", script], encode(HELLO, connect(1), data(1, b"ok")))
    assert proc.stdout == (
        b'[{"op":"write","id":1,"data":"ok"},{"op":"consumed","id":1,"n":2}]\n'
        b"after run\n"  # stdout is restored once run() returns
    )
    err = proc.stderr.decode()
    for stray in ("stray print", "stray write", "stray fd write", "stray child"):
        assert stray in err


def test_process_answers_without_waiting_for_eof_then_exits_on_eof() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-S", "examples/echo.py"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(encode(HELLO, connect(1), data(1, b"x")))
    proc.stdin.flush()
    assert proc.stdout is not None
    first = proc.stdout.readline()  # answered before EOF: output is not held back
    assert json.loads(first)[1] == {"op": "consumed", "id": 1, "n": 1}
    proc.stdin.close()
    assert proc.wait(timeout=20) == 0
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()
