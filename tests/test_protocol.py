"""Unit tests for tgate.protocol, the handler protocol v1 codec (sans-IO)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgate.protocol import (
    MAX_HANDLER_LINE,
    PROTOCOL_VERSION,
    TICK,
    Close,
    Consumed,
    HandlerError,
    Invalid,
    Write,
    encode_connect,
    encode_data,
    encode_disconnect,
    encode_hello,
    parse_command,
    parse_line,
    quote,
)

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)
ALL_BYTES = bytes(range(256))


def one_line(encoded: bytes) -> Any:
    """Assert `encoded` is exactly one JSON line and return its value."""
    assert type(encoded) is bytes
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    encoded.decode("utf-8")  # JSON text is UTF-8
    return orjson.loads(encoded)


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


# ------------------------------------------------------------------ encoders


def test_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_HANDLER_LINE == 16 * 1024 * 1024


def test_encode_hello() -> None:
    msg = one_line(
        encode_hello(
            tgate_version="0.1.0", framing="raw", bufsize=128, max_bufsize=65536, update_time=1.0
        )
    )
    assert msg == {
        "op": "hello",
        "protocol": 1,
        "tgate": "0.1.0",
        "framing": "raw",
        "bufsize": 128,
        "max_bufsize": 65536,
        "update_time": 1.0,
        "worker": 0,
        "workers": 1,
    }
    assert type(msg["update_time"]) is float


def test_encode_hello_fractional_update_time() -> None:
    msg = one_line(
        encode_hello(tgate_version="9", framing="raw", bufsize=1, max_bufsize=2, update_time=0.25)
    )
    assert msg["update_time"] == 0.25


def test_encode_connect() -> None:
    msg = one_line(encode_connect(7, ("127.0.0.1", 40312), ("::1", 7000)))
    assert msg == {"op": "connect", "id": 7, "peer": ["127.0.0.1", 40312], "local": ["::1", 7000]}


def test_encode_data() -> None:
    line = encode_data(3, b"GET / HTTP/1.1\r\n")
    assert line == b'{"op":"data","id":3,"data":"GET / HTTP/1.1\\r\\n"}\n'  # ASCII readable
    msg = one_line(line)
    assert msg == {"op": "data", "id": 3, "data": "GET / HTTP/1.1\r\n"}
    assert "eof" not in msg


def test_encode_data_eof() -> None:
    assert one_line(encode_data(3, b"x", eof=True)) == {
        "op": "data",
        "id": 3,
        "data": "x",
        "eof": True,
    }
    assert one_line(encode_data(3, b"", True)) == {"op": "data", "id": 3, "data": "", "eof": True}


def test_encode_data_empty_without_eof() -> None:
    assert one_line(encode_data(1, b"")) == {"op": "data", "id": 1, "data": ""}


def test_encode_data_all_256_bytes_exact() -> None:
    line = encode_data(1, ALL_BYTES)
    msg = one_line(line)
    assert len(msg["data"]) == 256  # one code point per byte
    assert [ord(ch) for ch in msg["data"]] == list(range(256))
    assert msg["data"].encode("latin-1") == ALL_BYTES
    assert json.loads(line)["data"].encode("latin-1") == ALL_BYTES  # any JSON parser


@pytest.mark.parametrize("byte", range(256))
def test_encode_data_each_byte(byte: int) -> None:
    b = bytes([byte])
    msg = one_line(encode_data(1, b * 3))
    assert msg["data"] == chr(byte) * 3


def test_encode_data_high_bytes_are_utf8_of_latin1_code_points() -> None:
    assert encode_data(1, b"\xe9") == '{"op":"data","id":1,"data":"\u00e9"}\n'.encode()
    assert b"\xc3\xa9" in encode_data(1, b"\xe9")


def test_encode_data_bytearray() -> None:
    assert one_line(encode_data(1, bytearray(b"ab")))["data"] == "ab"


@FAST
@given(
    data=st.binary(max_size=300),
    cid=st.integers(min_value=1, max_value=2**62),
    eof=st.booleans(),
)
def test_encode_data_roundtrip(data: bytes, cid: int, eof: bool) -> None:
    msg = one_line(encode_data(cid, data, eof))
    assert msg["id"] == cid
    assert msg["data"].encode("latin-1") == data
    assert msg.get("eof", False) is eof
    # and the handler's write of the same string comes back as the same bytes
    assert parse_line(dumps({"op": "write", "id": cid, "data": msg["data"]})) == (
        [Write((cid,), data)],
        [],
    )


@pytest.mark.parametrize(
    "reason", ["eof", "reset", "overflow", "closed", "shutdown", "error", "quarantined", "slow"]
)
def test_encode_disconnect(reason: str) -> None:
    assert one_line(encode_disconnect(5, reason)) == {"op": "disconnect", "id": 5, "reason": reason}


def test_tick() -> None:
    assert one_line(TICK) == {"op": "tick"}


# ------------------------------------------------------------------ parse: valid


def test_parse_consumed() -> None:
    assert parse_line(b'{"op":"consumed","id":3,"n":6}') == ([Consumed(3, 6)], [])


def test_parse_consumed_negative_n_is_syntactically_valid() -> None:
    # the core rejects it against the buffer; the codec only checks types
    assert parse_line(b'{"op":"consumed","id":3,"n":-1}') == ([Consumed(3, -1)], [])


def test_parse_write() -> None:
    assert parse_line(b'{"op":"write","id":1,"data":"PONG\\r\\n"}') == (
        [Write((1,), b"PONG\r\n")],
        [],
    )


def test_parse_broadcast() -> None:
    assert parse_line(b'{"op":"write","ids":[1,2,3],"data":"x"}') == (
        [Write((1, 2, 3), b"x")],
        [],
    )


def test_parse_broadcast_empty_ids() -> None:
    assert parse_line(b'{"op":"write","ids":[],"data":"x"}') == ([Write((), b"x")], [])


def test_parse_write_with_both_id_and_ids_is_rejected() -> None:
    assert parse_line(b'{"op":"write","id":9,"ids":[1],"data":"x"}') == (
        [],
        ["write has both 'id' and 'ids'"],
    )


def test_parse_close() -> None:
    assert parse_line(b'{"op":"close","id":4}') == ([Close(4)], [])


def test_parse_ignores_unknown_fields() -> None:
    line = b'{"op":"close","id":4,"extra":[1,{"a":null}],"why":"bye"}'
    assert parse_line(line) == ([Close(4)], [])


def test_parse_field_order_and_whitespace() -> None:
    line = b' \t{ "n" : 0 , "id" : 2 , "op" : "consumed" }\r '
    assert parse_line(line) == ([Consumed(2, 0)], [])


def test_parse_all_json_escapes_accepted() -> None:
    line = rb'{"op":"write","id":1,"data":"\u0041\/\"\\\b\f\n\r\t\u00ff\u0000"}'
    assert parse_line(line) == ([Write((1,), b'A/"\\\b\f\n\r\t\xff\x00')], [])


def test_parse_data_latin1_all_256_code_points() -> None:
    text = ALL_BYTES.decode("latin-1")
    for encoded in (
        json.dumps({"op": "write", "id": 1, "data": text}).encode(),  # \u escapes
        json.dumps({"op": "write", "id": 1, "data": text}, ensure_ascii=False).encode(),  # UTF-8
        orjson.dumps({"op": "write", "id": 1, "data": text}),
    ):
        assert parse_line(encoded) == ([Write((1,), ALL_BYTES)], [])


def test_parse_utf8_text_sent_as_its_bytes() -> None:
    # "é" as the two code points of its UTF-8 encoding
    assert parse_line(rb'{"op":"write","id":1,"data":"\u00c3\u00a9"}') == (
        [Write((1,), "é".encode())],
        [],
    )


def test_parse_array() -> None:
    line = b'[{"op":"write","id":3,"data":"PONG\\r\\n"},{"op":"consumed","id":3,"n":6}]'
    assert parse_line(line) == ([Write((3,), b"PONG\r\n"), Consumed(3, 6)], [])


def test_parse_empty_array() -> None:
    assert parse_line(b"[]") == ([], [])


def test_commands_are_immutable_and_comparable() -> None:
    c = Consumed(1, 2)
    with pytest.raises(AttributeError):
        c.n = 3  # type: ignore[misc]
    assert c == Consumed(1, 2)
    assert hash(Write((1,), b"x")) == hash(Write((1,), b"x"))


# ------------------------------------------------------------------ parse: errors


def error_of(line: bytes) -> str:
    commands, errors = parse_line(line)
    assert commands == []
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"hello world",
        b"{",
        b"{'op':'close','id':1}",
        b'{"op":"close","id":1} trailing',
        b'{"op":"close","id":1}{"op":"close","id":1}',
        b'"\xff"',  # not UTF-8
        b'"\xed\xa0\x80"',  # UTF-8-encoded surrogate
        b'"\\ud800"',  # lone surrogate escape
        b"NaN",
        b"1e400",
        b"[" * 2000 + b"]" * 2000,  # deeper than the parser allows
    ],
)
def test_parse_not_json(line: bytes) -> None:
    assert error_of(line).startswith("not JSON")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"1", "int"),
        (b"1.5", "float"),
        (b'"str"', "str"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
)
def test_parse_not_object_or_array(line: bytes, kind: str) -> None:
    assert error_of(line) == f"expected a JSON object, got {kind}"


def test_parse_missing_op() -> None:
    assert error_of(b'{"id":1,"n":0}') == "missing field 'op'"
    assert error_of(b"{}") == "missing field 'op'"


@pytest.mark.parametrize("op", ['"data"', '"hello"', '"CONSUMED"', '""', "5", "[]", "{}", "true"])
def test_parse_unknown_op(op: str) -> None:
    assert error_of(f'{{"op":{op},"id":1,"n":0}}'.encode()).startswith("unknown op")


def test_parse_unknown_op_names_it() -> None:
    assert error_of(b'{"op":"frobnicate","id":1}') == "unknown op 'frobnicate'"


@pytest.mark.parametrize("op", ["consumed", "close", "write"])
def test_parse_missing_id(op: str) -> None:
    assert error_of(dumps({"op": op, "n": 0, "data": "x"})) == "missing field 'id'"


@pytest.mark.parametrize("op", ["consumed", "close", "write"])
@pytest.mark.parametrize("bad", ["1", 1.0, 1.5, [1], {"id": 1}, True, False])
def test_parse_mistyped_id(op: str, bad: object) -> None:
    err = error_of(dumps({"op": op, "id": bad, "n": 0, "data": "x"}))
    assert err.startswith("field 'id' must be an integer client id")


def test_parse_bool_id_rejected() -> None:
    assert error_of(b'{"op":"close","id":true}') == (
        "field 'id' must be an integer client id, not True"
    )


@pytest.mark.parametrize("bad", [None, "1", 1.0, 0.5, True, False, [0], {}])
def test_parse_consumed_n_not_int(bad: object) -> None:
    # Not a dropped line: the client would wait forever for its reply, so
    # the core is told which client to disconnect (reason error).
    obj: dict[str, object] = {"op": "consumed", "id": 1, "n": bad}
    assert parse_line(dumps(obj)) == (
        [Invalid(1, f"consumed: field 'n' must be an integer, not {bad!r}")], []
    )


def test_parse_consumed_missing_n() -> None:
    (cmd,), errors = parse_line(b'{"op":"consumed","id":1}')
    assert errors == [] and type(cmd) is Invalid and cmd.id == 1
    assert "field 'n' must be an integer" in cmd.error


def test_parse_consumed_bad_n_and_bad_id_is_an_error() -> None:
    assert error_of(b'{"op":"consumed","id":"x","n":"y"}').startswith("field 'id'")


def test_parse_write_missing_data() -> None:
    assert error_of(b'{"op":"write","id":1}') == "missing field 'data'"


@pytest.mark.parametrize(("bad", "kind"), [(1, "int"), ([], "list"), ({}, "dict"), (True, "bool")])
def test_parse_write_data_not_str(bad: object, kind: str) -> None:
    assert error_of(dumps({"op": "write", "id": 1, "data": bad})) == (
        f"field 'data' must be a string, not {kind}"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [("\u0100", 0), ("ab\u0100", 2), ("\u00e9\u20ac", 1), ("x\U0001f600", 1), ("\uffff", 0)],
)
def test_parse_write_code_point_above_ff(text: str, where: int) -> None:
    err = error_of(dumps({"op": "write", "id": 1, "data": text}))
    assert err == (
        f"'data' has code point U+{ord(text[where]):04X} at {where}; "
        "bytes are code points U+0000..U+00FF"
    )


def test_parse_write_code_point_error_names_first_offender() -> None:
    err = error_of(dumps({"op": "write", "id": 1, "data": "ab\u00ff\u0100\u0200"}))
    assert err.startswith("'data' has code point U+0100 at 3;")


def test_parse_broadcast_code_point_above_ff() -> None:
    assert "U+0101" in error_of(dumps({"op": "write", "ids": [1], "data": "\u0101"}))


@pytest.mark.parametrize("ids", [1, "1,2", None, {"1": 1}, [1, "2"], [1, 2.0], [True], [1, [2]]])
def test_parse_ids_not_list_of_ints(ids: object) -> None:
    err = error_of(dumps({"op": "write", "ids": ids, "data": "x"}))
    assert err == "field 'ids' must be a list of integer client ids"


# ------------------------------------------------------------------ arrays


def test_array_keeps_valid_elements_in_order() -> None:
    line = dumps(
        [
            {"op": "write", "id": 1, "data": "a"},
            {"op": "nope"},
            {"op": "consumed", "id": 1, "n": 1},
            5,
            {"op": "write", "id": 2, "data": "\u0100"},
            {"op": "close", "id": 2},
            [{"op": "close", "id": 3}],
            {"op": "consumed", "id": True, "n": 0},
            {"op": "write", "ids": [1, 2], "data": "b"},
        ]
    )
    commands, errors = parse_line(line)
    assert commands == [Write((1,), b"a"), Consumed(1, 1), Close(2), Write((1, 2), b"b")]
    assert errors == [
        "element 1: unknown op 'nope'",
        "element 3: expected a JSON object, got int",
        "element 4: 'data' has code point U+0100 at 0; bytes are code points U+0000..U+00FF",
        "element 6: expected a JSON object, got list",
        "element 7: field 'id' must be an integer client id, not True",
    ]


def test_array_all_invalid() -> None:
    commands, errors = parse_line(b'[1, "x", null]')
    assert commands == []
    assert [e.split(":")[0] for e in errors] == ["element 0", "element 1", "element 2"]


# ------------------------------------------------------------------ parse_command


def test_parse_command_directly() -> None:
    assert parse_command({"op": "close", "id": 1}) == Close(1)
    with pytest.raises(HandlerError, match="expected a JSON object, got list"):
        parse_command([])
    with pytest.raises(HandlerError, match="unknown op"):
        parse_command({"op": "tick"})


# ------------------------------------------------------------------ quote


def test_quote_short() -> None:
    assert quote(b"hello") == "b'hello'"
    assert quote(bytearray(b"a\nb")) == "b'a\\nb'"


def test_quote_long_is_cut() -> None:
    q = quote(b"x" * 1000, limit=10)
    assert q == "b'xxxxxxxxxx...' (1000 bytes)"


def test_quote_exactly_limit_not_cut() -> None:
    assert quote(b"x" * 200) == repr(b"x" * 200)


# ------------------------------------------------------------------ property-based

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=20,
)
OPS = st.sampled_from(["consumed", "write", "close", "data", "tick", ""]) | JSON_SCALARS
PROTOCOLISH = st.fixed_dictionaries(
    {"op": OPS},
    optional={
        "id": st.integers(min_value=-3, max_value=5) | JSON_VALUES,
        "ids": st.lists(st.integers(min_value=-3, max_value=5), max_size=4) | JSON_VALUES,
        "n": st.integers(min_value=-3, max_value=50) | JSON_VALUES,
        "data": st.text(max_size=10) | JSON_VALUES,
    },
)
ANY_JSON = JSON_VALUES | PROTOCOLISH | st.lists(PROTOCOLISH | JSON_VALUES, max_size=6)


def check_result(result: object) -> None:
    assert type(result) is tuple and len(result) == 2
    commands, errors = result
    assert type(commands) is list and type(errors) is list
    assert all(type(c) in (Consumed, Write, Close, Invalid) for c in commands)
    assert all(type(e) is str and e for e in errors)
    for c in commands:
        if type(c) is Consumed:
            assert type(c.id) is int and type(c.n) is int
        elif type(c) is Write:
            assert type(c.data) is bytes
            assert all(type(i) is int for i in c.ids)
        else:
            assert type(c.id) is int


@FAST
@given(st.binary(max_size=200))
def test_parse_line_never_raises_on_bytes(line: bytes) -> None:
    check_result(parse_line(line))


@FAST
@given(ANY_JSON)
def test_parse_line_never_raises_on_json(value: object) -> None:
    result = parse_line(orjson.dumps(value))
    check_result(result)
    commands, errors = result
    if type(value) is list:
        # every element is either a command or an error, in order
        assert len(commands) + len(errors) == len(value)
        bad = [int(e.split(":")[0].removeprefix("element ")) for e in errors]
        assert bad == sorted(bad)
        good = [v for i, v in enumerate(value) if i not in bad]
        assert [parse_command(v) for v in good] == commands
    else:
        assert len(commands) + len(errors) == 1


@FAST
@given(ANY_JSON)
def test_parse_line_with_python_json_encoding(value: object) -> None:
    # \u-escaped (ensure_ascii) text must parse the same as raw UTF-8 text
    a = json.dumps(value).encode()
    b = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    check_result(parse_line(a))
    check_result(parse_line(b))
