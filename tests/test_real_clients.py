"""Real protocols, real clients: the examples behind tgate, driven by the real tools.

- examples/miniredis.js (RESP2) with redis-py, redis-cli (one-shot, interactive
  through stdin, --pipe) and redis-benchmark;
- examples/http.py (HTTP/1.1) with curl, wrk and raw sockets;
- examples/chat.py and chat.js with several ncat clients at once.

Each test starts its own gateway on port 0 (a fresh handler, so a fresh
database). Subprocess clients run under trio.run_process with timeouts; the
blocking redis-py client runs in a thread, with socket timeouts.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from conftest import example, need, need_module, recv_exactly, recv_until_eof, requires

MINIREDIS = example("miniredis.js")
HTTP = example("http.py")
CHATS = [
    pytest.param(example("chat.py"), id="py"),
    pytest.param(example("chat.js"), id="js", marks=requires("node")),
]


async def run(
    cmd: list[str], stdin: bytes = b"", timeout: float = 30.0
) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion; its output is returned whatever its exit status."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            cmd, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )


def resp(*args: bytes | str) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_client(port: int) -> Any:
    import redis

    # miniredis speaks RESP2; redis-py 8 asks for RESP3 (HELLO 3) unless told.
    return redis.Redis(port=port, protocol=2, socket_timeout=10, socket_connect_timeout=10)


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


async def exchange(port: int, data: bytes, n: int) -> bytes:
    """Send raw bytes, read exactly n bytes back."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as s:
        await s.send_all(data)
        return await recv_exactly(s, n)


# ---- miniredis.js with redis-py -------------------------------------------


async def test_redis_py_commands(gateway) -> None:
    need("node")
    need_module("redis")
    import redis

    def scenario(port: int) -> None:
        r = redis_client(port)
        assert r.ping() is True
        assert r.echo("hi there") == b"hi there"
        # SET and its options
        assert r.set("k", "v") is True
        assert r.get("k") == b"v"
        assert r.get("missing") is None
        assert r.set("k", "other", nx=True) is None
        assert r.set("k", "v2", xx=True) is True
        assert r.set("fresh", "x", xx=True) is None
        assert r.get("k") == b"v2"
        assert r.set("fresh", "x", nx=True) is True
        assert r.set("k", "v3", get=True) == b"v2"
        # TTLs: EX, PX, EXPIRE, TTL, PTTL, PERSIST
        assert r.ttl("k") == -1
        assert r.ttl("missing") == -2
        assert r.set("ex", "1", ex=100) is True
        assert 99 <= r.ttl("ex") <= 100
        assert r.expire("k", 50) is True
        assert 49 <= r.ttl("k") <= 50
        assert r.expire("missing", 50) is False
        assert r.persist("k") is True
        assert r.ttl("k") == -1
        assert r.set("px", "1", px=150) is True
        assert 0 < r.pttl("px") <= 150
        time.sleep(0.4)
        assert r.get("px") is None
        assert r.exists("px") == 0
        assert r.ttl("px") == -2
        assert r.expire("k", -1) is True  # a past time deletes the key
        assert r.exists("k") == 0
        for bad in ({"ex": 0}, {"px": -5}):
            with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
                r.set("k", "v", **bad)
        with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
            r.execute_command("SET", "k", "v", "NX", "XX")
        # DEL, EXISTS
        assert r.mset({"a": "1", "b": "2", "c": "3"}) is True
        assert r.mget("a", "b", "nope", "c") == [b"1", b"2", None, b"3"]
        assert r.exists("a", "a", "b", "nope") == 3
        assert r.delete("a", "b", "nope") == 2
        assert r.exists("a", "b", "c") == 1
        # INCR/DECR, and their errors
        assert r.incr("n") == 1
        assert r.incr("n") == 2
        assert r.decr("n") == 1
        assert r.incrby("n", 10) == 11
        assert r.decrby("n", 20) == -9
        assert r.get("n") == b"-9"
        r.set("text", "abc")
        with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
            r.incr("text")
        r.set("max", str(2**63 - 1))
        with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
            r.incr("max")
        r.set("ttl-kept", "5", ex=100)
        assert r.incr("ttl-kept") == 6
        assert r.ttl("ttl-kept") > 0  # INCR keeps the TTL, as in Redis
        # Errors, phrased as Redis phrases them
        with pytest.raises(redis.ResponseError) as exc:
            r.execute_command("FROB", "x", "y")
        assert str(exc.value) == "unknown command 'FROB', with args beginning with: 'x' 'y' "
        with pytest.raises(
            redis.ResponseError, match="wrong number of arguments for 'get' command"
        ):
            r.execute_command("GET")
        with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
            r.execute_command("MSET", "a", "1", "b")
        assert r.lpush("list", "x", "y") == 2
        with pytest.raises(redis.ResponseError, match="WRONGTYPE Operation against a key holding"):
            r.get("list")
        assert r.mget("list", "c") == [None, b"3"]  # MGET: a non-string is nil
        assert r.type("list") == b"list"
        assert r.type("c") == b"string"
        # DBSIZE, FLUSHDB
        assert r.dbsize() == len(r.keys("*"))
        assert r.flushdb() is True
        assert r.dbsize() == 0
        assert r.keys() == []
        r.close()

    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            await in_thread(lambda: scenario(port))


async def test_redis_py_keys_glob_patterns(gateway) -> None:
    need("node")
    need_module("redis")
    names = [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "h-llo", "h^llo", "h]llo",
        "a*b", "a?b", "a\\b", "[x]", "ab", "b", "",
    ]  # fmt: skip
    # pattern -> the names it matches (checked against redis-server 7.0)
    cases = {
        "*": names,
        "h?llo": ["hello", "hallo", "hxllo", "h-llo", "h^llo", "h]llo"],
        "h*llo": ["hello", "hallo", "hxllo", "hllo", "heeeello", "h-llo", "h^llo", "h]llo"],
        "h[ae]llo": ["hello", "hallo"],
        "h[^e]llo": ["hallo", "hxllo", "h-llo", "h^llo", "h]llo"],
        "h[a-e]llo": ["hello", "hallo"],
        "h[e-a]llo": ["hello", "hallo"],  # a reversed range, as Redis allows
        "h[\\^]llo": ["h^llo"],
        "h[\\]]llo": ["h]llo"],
        "h[-]llo": ["h-llo"],
        "a\\*b": ["a*b"],
        "a\\?b": ["a?b"],
        "a\\\\b": ["a\\b"],
        "a?b": ["a*b", "a?b", "a\\b"],
        "\\[x\\]": ["[x]"],
        "[[]x]": ["[x]"],
        "?": ["b"],
        "": [""],
        "nomatch*": [],
        "*llo*": ["hello", "hallo", "hxllo", "hllo", "heeeello", "h-llo", "h^llo", "h]llo"],
    }

    def scenario(port: int) -> None:
        r = redis_client(port)
        r.mset({n: "1" for n in names})
        for pattern, expected in cases.items():
            got = sorted(k.decode() for k in r.keys(pattern))
            assert got == sorted(expected), pattern
        r.set("gone", "1", px=50)
        time.sleep(0.2)
        assert r.keys("gone") == []  # expired keys are not listed
        r.close()

    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            await in_thread(lambda: scenario(port))


async def test_redis_py_binary_values(gateway) -> None:
    need("node")
    need_module("redis")
    key = b"bin\x00key\r\n\xff"
    value = b"\x00\r\n" + bytes(range(256)) + b"\r\n*1\r\n$4\r\nPING\r\n\x00"
    big = bytes(range(256)) * 200  # 51200 bytes: fits tgate's 64 KiB buffer

    def scenario(port: int) -> None:
        r = redis_client(port)
        assert r.set(key, value) is True
        assert r.get(key) == value
        assert r.set(b"\r\n", b"") is True
        assert r.get(b"\r\n") == b""
        assert r.mset({b"k\x00" + bytes([i]): bytes([i]) * i for i in range(256)}) is True
        assert r.mget([b"k\x00" + bytes([i]) for i in range(256)]) == [
            bytes([i]) * i for i in range(256)
        ]
        assert r.set("big", big) is True
        assert r.get("big") == big
        assert key in r.keys(b"bin\x00*")
        assert r.echo(value) == value
        r.close()

    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            await in_thread(lambda: scenario(port))


async def test_redis_py_pipeline_of_1000_commands(gateway) -> None:
    need("node")
    need_module("redis")

    def scenario(port: int) -> None:
        r = redis_client(port)
        p = r.pipeline(transaction=False)
        for i in range(250):
            p.set(f"key:{i}", f"value:{i}")
            p.get(f"key:{i}")
            p.incr("counter")
            p.echo(b"\x00\r\n%d" % i)
        results = p.execute()
        assert len(results) == 1000
        for i in range(250):
            assert results[4 * i : 4 * i + 4] == [
                True,
                f"value:{i}".encode(),
                i + 1,
                b"\x00\r\n%d" % i,
            ]
        assert r.dbsize() == 251
        r.close()

    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            await in_thread(lambda: scenario(port))


async def test_redis_py_quit(gateway) -> None:
    need("node")
    need_module("redis")

    def scenario(port: int) -> None:
        r = redis_client(port)
        r.set("k", "v")
        assert r.execute_command("QUIT") in (True, b"OK", "OK")
        r.connection_pool.disconnect()  # the server closed it
        assert r.get("k") == b"v"  # a new connection, the same database
        r.close()

    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            await in_thread(lambda: scenario(port))
            # On the wire: +OK, then the connection closes; what followed is dropped.
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(resp("PING") + resp("QUIT") + resp("SET", "after", "quit"))
                assert await recv_until_eof(s) == b"+PONG\r\n+OK\r\n"
            assert await exchange(port, resp("EXISTS", "after"), 4) == b":0\r\n"


# ---- miniredis.js over raw sockets: inline commands, pipelines, limits -----


async def test_redis_inline_commands_and_split_pipelines(gateway) -> None:
    need("node")
    with trio.fail_after(20):
        async with gateway(MINIREDIS) as (_gw, port):
            stream = (
                b"PING\r\n"
                b'SET greeting "hello \\"world\\"\\r\\n\\x00"\r\n'
                b"GET greeting\n"
                b"\r\n"  # a blank line is skipped, as in Redis
                + resp("SET", b"k\x00", b"a\r\nb")
                + b"get 'k\x00'\r\n"
                b"ping 'unterminated\r\n"
            )
            expected = (
                b"+PONG\r\n"
                b"+OK\r\n"
                b'$16\r\nhello "world"\r\n\x00\r\n'
                b"+OK\r\n"
                b"$4\r\na\r\nb\r\n"
                b"-ERR Protocol error: unbalanced quotes in request\r\n"
            )
            # all at once, then one byte per send: the same replies
            for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    for piece in pieces:
                        await s.send_all(piece)
                    assert await recv_until_eof(s) == expected  # closed after the error


async def test_redis_command_larger_than_gateway_buffer(gateway) -> None:
    need("node")
    with trio.fail_after(20):
        async with gateway(MINIREDIS) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$70000\r\n")
                reply = await recv_until_eof(s)
            assert reply.startswith(b"-ERR Protocol error: command larger than the gateway")
            assert await exchange(port, b"PING\r\n", 7) == b"+PONG\r\n"


# ---- miniredis.js with redis-cli and redis-benchmark -----------------------


async def test_redis_cli_one_shot(gateway) -> None:
    need("node")
    cli = need("redis-cli")
    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            p = ["-p", str(port)]
            assert (await run([cli, *p, "SET", "k", "hello world"])).stdout == b"OK\n"
            assert (await run([cli, *p, "GET", "k"])).stdout == b"hello world\n"
            assert (await run([cli, *p, "--no-raw", "INCR", "n"])).stdout == b"(integer) 1\n"
            assert (await run([cli, *p, "--no-raw", "GET", "nope"])).stdout == b"(nil)\n"
            out = (await run([cli, *p, "NOSUCH", "x"])).stdout
            assert out.startswith(b"ERR unknown command 'NOSUCH', with args beginning with: 'x'")


async def test_redis_cli_interactive_through_stdin(gateway) -> None:
    need("node")
    cli = need("redis-cli")
    script = (
        b'SET greeting "hello world"\n'
        b"GET greeting\n"
        b"INCR visits\n"
        b"INCRBY visits 10\n"
        b"MSET a 1 b 2\n"
        b"MGET a b nope\n"
        b"EXISTS a b nope\n"
        b"KEYS [ab]\n"
        b"DEL a b\n"
        b'ECHO "tab\\there"\n'
        b"FOO bar\n"
        b"SET k v EX 0\n"
        b"PING\n"
    )
    expected = [
        'OK',
        '"hello world"',
        "(integer) 1",
        "(integer) 11",
        "OK",
        '1) "1"',
        '2) "2"',
        "3) (nil)",
        "(integer) 2",
        '1) "a"',
        '2) "b"',
        "(integer) 2",
        '"tab\\there"',
        "(error) ERR unknown command 'FOO', with args beginning with: 'bar' ",
        "(error) ERR invalid expire time in 'set' command",
        "PONG",
    ]  # fmt: skip
    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            # No command arguments: redis-cli's REPL (it sends COMMAND DOCS first).
            done = await run([cli, "-p", str(port), "--no-raw"], stdin=script)
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().splitlines() == expected


async def test_redis_cli_pipe_mode(gateway) -> None:
    need("node")
    cli = need("redis-cli")
    n = 3000
    commands = b"".join(resp("SET", f"pipe:{i}", f"v\r\n{i}") for i in range(n - 1))
    commands += resp("INCR", "pipe:counter")
    with trio.fail_after(30):
        async with gateway(MINIREDIS) as (_gw, port):
            done = await run([cli, "-p", str(port), "--pipe"], stdin=commands)
            out = done.stdout.decode()
            assert done.returncode == 0, out + done.stderr.decode()
            assert f"errors: 0, replies: {n}" in out
            assert (await run([cli, "-p", str(port), "DBSIZE"])).stdout == f"{n}\n".encode()
            got = await run([cli, "-p", str(port), "GET", "pipe:42"])
            assert got.stdout == b"v\r\n42\n"


async def test_redis_benchmark(gateway) -> None:
    need("node")
    bench = need("redis-benchmark")
    cli = need("redis-cli")
    cmd = [bench, "-t", "ping,set,get", "-P", "16", "-n", "20000", "-c", "10", "-q"]
    with trio.fail_after(50):
        async with gateway(MINIREDIS) as (_gw, port):
            done = await run([*cmd, "-p", str(port)], timeout=45)
            out = done.stdout.decode()
            err = done.stderr.decode()
            assert done.returncode == 0, out + err
            assert "rror" not in out + err and "WARNING" not in out + err
            finals = [line for line in re.split(r"[\r\n]", out) if "requests per second" in line]
            tests = [line.split(":")[0].strip() for line in finals]
            assert tests == ["PING_INLINE", "PING_MBULK", "SET", "GET"], out
            # redis-benchmark's SETs store a 3-byte value (-d 3) under one key.
            got = await run([cli, "-p", str(port), "GET", "key:__rand_int__"])
            assert re.fullmatch(rb"[\x21-\x7e]{3}\n", got.stdout), got.stdout


# ---- http.py with curl, wrk and raw sockets --------------------------------


async def test_curl_get_and_post(gateway) -> None:
    curl = need("curl")
    with trio.fail_after(30):
        async with gateway(HTTP) as (_gw, port):
            url = f"http://127.0.0.1:{port}"
            done = await run([curl, "-sS", "-i", f"{url}/"])
            assert done.returncode == 0, done.stderr
            assert done.stdout == (
                b"HTTP/1.1 200 OK\r\n"
                b"Server: tgate-example\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 18\r\n"
                b"\r\n"
                b"Hello from tgate!\n"
            )
            body = bytes(range(256)) * 100
            done = await run(
                [curl, "-sS", "--data-binary", "@-", "-H", "Content-Type: x/y", f"{url}/echo"],
                stdin=body,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout == body
            done = await run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/nope"])
            assert done.stdout == b"404"
            done = await run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/echo"])
            assert done.stdout == b"405"  # GET on a POST route


async def test_curl_reuses_one_connection_for_three_urls(gateway) -> None:
    curl = need("curl")
    with trio.fail_after(30):
        async with gateway(HTTP) as (_gw, port):
            url = f"http://127.0.0.1:{port}"
            done = await run([curl, "-sv", "--http1.1", f"{url}/", f"{url}/stream", f"{url}/"])
            assert done.returncode == 0, done.stderr
            log = done.stderr.decode()
            # curl 7.88 prints "Re-using existing connection #0 with host ...",
            # older ones "Re-using existing connection! (#0) with host ..."
            assert len(re.findall(r"Re-using existing connection", log)) == 2, log
            assert len(re.findall(r"Connected to ", log)) == 1, log
            assert done.stdout == (
                b"Hello from tgate!\nchunk 1 of 3\nchunk 2 of 3\nchunk 3 of 3: done\n"
                b"Hello from tgate!\n"
            )


async def test_curl_chunked_stream(gateway) -> None:
    curl = need("curl")
    with trio.fail_after(30):
        async with gateway(HTTP) as (_gw, port):
            url = f"http://127.0.0.1:{port}/stream"
            done = await run([curl, "-sS", "-D", "-", "--raw", url])
            assert done.returncode == 0, done.stderr
            head, _, body = done.stdout.partition(b"\r\n\r\n")
            assert b"\r\nTransfer-Encoding: chunked" in head
            assert b"Content-Length" not in head
            assert body == (
                b"d\r\nchunk 1 of 3\n\r\n"
                b"d\r\nchunk 2 of 3\n\r\n"
                b"13\r\nchunk 3 of 3: done\n\r\n"
                b"0\r\n\r\n"
            )
            decoded = await run([curl, "-sS", url])
            assert decoded.stdout == b"chunk 1 of 3\nchunk 2 of 3\nchunk 3 of 3: done\n"
            http10 = await run([curl, "-sS", "-D", "-", "--http1.0", url])
            assert b"Content-Length: 45\r\n" in http10.stdout
            assert b"chunked" not in http10.stdout


async def test_curl_too_big_body_gets_413(gateway) -> None:
    curl = need("curl")
    body = b"x" * 70000
    with trio.fail_after(30):
        async with gateway(HTTP) as (_gw, port):
            url = f"http://127.0.0.1:{port}/echo"
            for expect in ([], ["-H", "Expect: 100-continue"]):
                done = await run(
                    [curl, "-sS", "-D", "-", "--data-binary", "@-", *expect, url], stdin=body
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), done.stdout
                assert b"\r\nConnection: close\r\n" in done.stdout
            # under the limit, with the interim 100 Continue
            small = b"y" * 50000
            done = await run(
                [curl, "-sS", "--data-binary", "@-", "-H", "Expect: 100-continue", url],
                stdin=small,
            )
            assert done.stdout == small


async def test_http_malformed_request_gets_400_and_close(gateway) -> None:
    with trio.fail_after(20):
        async with gateway(HTTP) as (_gw, port):
            for request in (
                b"NOT A REQUEST\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            ):
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    await s.send_all(request + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    reply = await recv_until_eof(s)
                assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (request, reply)
                assert b"\r\nConnection: close\r\n" in reply
                assert b"200 OK" not in reply  # the request after it is not answered
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000)
                reply = await recv_until_eof(s)
            assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                reply = await recv_until_eof(s)
            assert reply.startswith(b"HTTP/1.1 411 Length Required\r\n")


async def test_http_pipelined_requests_answered_in_order(gateway) -> None:
    with trio.fail_after(20):
        async with gateway(HTTP) as (_gw, port):
            requests = (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond"
                b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"  # after the close: not answered
            )
            for pieces in ([requests], [requests[i : i + 7] for i in range(0, len(requests), 7)]):
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    for piece in pieces:
                        await s.send_all(piece)
                    reply = await recv_until_eof(s)
                statuses = re.findall(rb"HTTP/1\.1 (\d+)", reply)
                assert statuses == [b"200", b"200", b"200", b"404", b"200", b"200"]
                bodies = [
                    b"\r\n\r\nHello from tgate!\n",
                    b"\r\n\r\nfirst",
                    b"\r\n\r\nd\r\nchunk 1 of 3\n\r\n",
                    b"\r\n\r\nNot Found\n",
                    b"\r\n\r\nsecond",
                ]
                positions = [reply.index(b) for b in bodies]
                assert positions == sorted(positions)
                assert reply.endswith(b"Content-Length: 18\r\nConnection: close\r\n\r\n")


async def test_http_10_closes_unless_keep_alive(gateway) -> None:
    with trio.fail_after(20):
        async with gateway(HTTP) as (_gw, port):
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                await s.send_all(b"GET / HTTP/1.0\r\n\r\n")
                reply = await recv_until_eof(s)
            assert reply.endswith(b"Connection: close\r\n\r\nHello from tgate!\n")
            expected = (
                b"HTTP/1.1 200 OK\r\n"
                b"Server: tgate-example\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 18\r\n"
                b"Connection: keep-alive\r\n"
                b"\r\n"
                b"Hello from tgate!\n"
            )
            async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                for _ in range(2):  # the connection stays open
                    await s.send_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                    assert await recv_exactly(s, len(expected)) == expected


async def test_wrk_load(gateway) -> None:
    wrk = need("wrk")
    with trio.fail_after(30):
        async with gateway(HTTP) as (_gw, port):
            done = await run([wrk, "-t1", "-c10", "-d2s", f"http://127.0.0.1:{port}/"], timeout=25)
            out = done.stdout.decode()
            assert done.returncode == 0, out + done.stderr.decode()
            assert "Non-2xx" not in out, out
            errors = re.search(
                r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
            )
            assert errors is None or set(errors.groups()) == {"0"}, out
            requests = re.search(r"(\d+) requests in", out)
            assert requests is not None and int(requests.group(1)) > 100, out


# ---- chat with several ncat clients ----------------------------------------


class Ncat:
    """One interactive ncat client: write to its stdin, read its stdout."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()

    async def read_until(self, done: Callable[[bytes], bool]) -> bytes:
        assert self.proc.stdout is not None
        while not done(bytes(self.out)):
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                break
            self.out += chunk
        return bytes(self.out)

    async def wait_connected(self) -> None:
        assert self.proc.stderr is not None
        while b"Connected to" not in self.err:  # ncat -v says so on stderr
            chunk = await self.proc.stderr.receive_some(4096)
            assert chunk, f"ncat exited: {bytes(self.err)!r}"
            self.err += chunk

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)


@pytest.mark.parametrize("handler", CHATS)
async def test_chat_with_three_ncat_clients(gateway, handler: str) -> None:
    ncat = need("ncat")
    with trio.fail_after(30):
        async with gateway(handler) as (_gw, port):
            clients: list[Ncat] = []
            try:
                for _ in range(3):
                    proc = await trio.lowlevel.open_process(
                        [ncat, "-v", "127.0.0.1", str(port)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                    client = Ncat(proc)
                    clients.append(client)
                    await client.wait_connected()
                    # The ones already there see this one join.
                    for j, earlier in enumerate(clients[:-1]):
                        want = len(clients) - 1 - j
                        await earlier.read_until(lambda out, w=want: out.count(b"joined\n") >= w)
                a, b, c = clients
                joined = re.compile(rb"\* (\d+) joined\n")
                b_id, c_id = (int(x) for x in joined.findall(bytes(a.out)))
                assert [int(x) for x in joined.findall(bytes(b.out))] == [c_id]
                assert c.out == b""

                start_b, start_c = len(b.out), len(c.out)
                await a.send(b"hello from a\nsecond line\r\n")
                senders = set()
                for other, start in ((b, start_b), (c, start_c)):
                    out = await other.read_until(lambda o, s=start: o[s:].count(b"\n") >= 2)
                    m = re.fullmatch(rb"(\d+): hello from a\n\1: second line\n", out[start:])
                    assert m is not None, out
                    senders.add(int(m.group(1)))
                (a_id,) = senders
                assert a_id not in (b_id, c_id)

                start_a, start_c = len(a.out), len(c.out)
                await b.send(b"from b\n")
                for other, start in ((a, start_a), (c, start_c)):
                    out = await other.read_until(lambda o, s=start: b"\n" in o[s:])
                    assert out[start:] == b"%d: from b\n" % b_id

                # c leaves: its stdin ends, ncat half-closes, tgate closes it
                start_a, start_b = len(a.out), len(b.out)
                assert c.proc.stdin is not None
                await c.proc.stdin.aclose()
                for other, start in ((a, start_a), (b, start_b)):
                    out = await other.read_until(lambda o, s=start: b"\n" in o[s:])
                    assert out[start:] == b"* %d left\n" % c_id
                assert await c.proc.wait() == 0
                assert a.out.count(b"\n") == 4 and b.out.count(b"\n") == 4
            finally:
                for client in clients:
                    if client.proc.returncode is None:
                        client.proc.kill()
                    await client.proc.wait()
