"""/metrics, /status and ``tgate status`` (issue 16): the exposition format
parsed back and checked by promtool, and scrapes of a live gateway."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tgate import __version__, observe, status
from tgate.cli import main as cli_main
from tgate.exposition import (
    METRICS_CONTENT_TYPE,
    LatencySnapshot,
    Snapshot,
    WorkerSnapshot,
    parse_address,
    render_metrics,
    render_status,
)
from tgate.metrics import CLOSE_REASONS, LATENCY_BUCKETS, RESTART_CAUSES
from tgate.observe import serve_metrics, take_snapshot
from tgate.server import Options

from conftest import REPO, example, expect, need, recv_until_eof

# -- a parser for the text format (0.0.4), strict about what tgate writes --

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r}"
        key = m.group(1)
        assert key not in labels, f"label {key} twice"
        labels[key] = re.sub(r"\\[\\\"n]", lambda e: _ESCAPES[e.group(0)], m.group(2))
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    """Every line checked: HELP then TYPE then the family's samples; counters
    end in _total; histograms have cumulative buckets ending at +Inf == _count."""
    assert text.endswith("\n") and not text.endswith("\n\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    lines = text[:-1].split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, line
            kind_line = lines[i + 1]
            assert kind_line.startswith(f"# TYPE {name} "), kind_line
            kind = kind_line.split(" ")[3]
            assert kind in ("counter", "gauge", "histogram"), kind_line
            assert name not in families, f"{name} twice"
            if kind == "counter":
                assert name.endswith("_total"), f"counter {name} without _total"
            else:
                assert not name.endswith("_total"), f"{kind} {name} ends in _total"
            assert name.startswith("tgate_"), name
            current = families[name] = Family(name, kind, help_text)
            i += 2
            continue
        assert not line.startswith("#"), f"stray comment {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"malformed sample {line!r}"
        assert current is not None, f"sample before any TYPE: {line!r}"
        name, labels, value = m.group(1), _parse_labels(m.group(2) or ""), m.group(3)
        allowed = {current.name}
        if current.kind == "histogram":
            allowed = {current.name + s for s in ("_bucket", "_sum", "_count")}
        assert name in allowed, f"{name} in family {current.name}"
        number = float(value)  # also takes +Inf, NaN
        if current.kind in ("counter", "histogram"):
            assert number >= 0, line
        current.samples.append((name, labels, number))
        i += 1
    for fam in families.values():
        assert fam.samples, f"{fam.name} has no samples"
        keys = [(n, tuple(sorted(lb.items()))) for n, lb, _ in fam.samples]
        assert len(keys) == len(set(keys)), f"{fam.name}: a series twice"
        if fam.kind == "histogram":
            _check_histogram(fam)
    return families


def _check_histogram(fam: Family) -> None:
    buckets = [(lb["le"], v) for n, lb, v in fam.samples if n.endswith("_bucket")]
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf, bounds
    assert buckets[-1][0] == "+Inf"
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{fam.name}: buckets not cumulative: {counts}"
    (count,) = [v for n, _, v in fam.samples if n.endswith("_count")]
    (total,) = [v for n, _, v in fam.samples if n.endswith("_sum")]
    assert counts[-1] == count
    assert total >= 0


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    fam = families.get(name) or families[re.sub(r"_(bucket|sum|count)$", "", name)]
    found = [v for n, lb, v in fam.samples if n == name and lb == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def promtool_check(text: str) -> None:
    promtool = need("promtool")
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60)
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0 and not out.strip(), f"promtool: rc {done.returncode}: {out}"


# -- a hand-made snapshot ---------------------------------------------------


def make_snapshot(**over: Any) -> Snapshot:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[0], counts[3], counts[7], counts[-1] = 5, 2, 1, 1
    snap = Snapshot(
        version=__version__,
        state="running",
        started_at=1_700_000_000.25,
        uptime_seconds=3723.5,
        clients=7,
        clients_paused=1,
        connections_accepted=20,
        connections_refused=2,
        connections_closed={r: i for i, r in enumerate(CLOSE_REASONS)},
        bytes_received=123456,
        bytes_sent=654321,
        messages_to_handler=300,
        messages_from_handler=290,
        handler_restarts={c: i + 1 for i, c in enumerate(RESTART_CAUSES)},
        publishes=12,
        channels=3,
        pipe_queued_bytes=4096,
        owed=2,
        workers_up=1,
        workers=[
            WorkerSnapshot(index=0, pid=4242, up=True, clients=4, owed=2, queued_bytes=4096,
                           restarts=3, crashes=1),
            WorkerSnapshot(index=1, pid=None, up=False, clients=3, owed=0, queued_bytes=0,
                           restarts=7, crashes=6),
        ],
        latency=LatencySnapshot(buckets=list(LATENCY_BUCKETS), counts=counts, sum=1.75),
    )
    snap.update(over)  # type: ignore[typeddict-item]
    return snap


def test_render_metrics_parses_back() -> None:
    snap = make_snapshot()
    fams = parse(render_metrics(snap))
    assert value(fams, "tgate_clients") == 7
    assert value(fams, "tgate_clients_paused") == 1
    assert value(fams, "tgate_draining") == 0
    assert value(fams, "tgate_start_time_seconds") == 1_700_000_000.25
    assert value(fams, "tgate_connections_accepted_total") == 20
    assert value(fams, "tgate_connections_refused_total") == 2
    for i, reason in enumerate(CLOSE_REASONS):
        assert value(fams, "tgate_connections_closed_total", reason=reason) == i
    for i, cause in enumerate(RESTART_CAUSES):
        assert value(fams, "tgate_handler_restarts_total", cause=cause) == i + 1
    assert value(fams, "tgate_client_received_bytes_total") == 123456
    assert value(fams, "tgate_client_sent_bytes_total") == 654321
    assert value(fams, "tgate_handler_sent_messages_total") == 300
    assert value(fams, "tgate_handler_received_messages_total") == 290
    assert value(fams, "tgate_handler_pipe_queued_bytes") == 4096
    assert value(fams, "tgate_handler_owed_replies") == 2
    assert value(fams, "tgate_workers") == 2
    assert value(fams, "tgate_workers_up") == 1
    assert value(fams, "tgate_worker_up", worker="0") == 1
    assert value(fams, "tgate_worker_up", worker="1") == 0
    assert value(fams, "tgate_worker_clients", worker="1") == 3
    assert value(fams, "tgate_worker_owed_replies", worker="0") == 2
    assert value(fams, "tgate_worker_pipe_queued_bytes", worker="0") == 4096
    assert value(fams, "tgate_worker_restarts_total", worker="1") == 7
    assert value(fams, "tgate_worker_crashes_total", worker="1") == 6
    assert value(fams, "tgate_channels") == 3
    assert value(fams, "tgate_channel_publishes_total") == 12
    assert value(fams, "tgate_build_info", version=__version__) == 1
    h = "tgate_handler_reply_latency_seconds"
    assert fams[h].kind == "histogram"
    assert value(fams, f"{h}_count") == 9
    assert value(fams, f"{h}_sum") == 1.75
    assert value(fams, f"{h}_bucket", le="0.0001") == 5
    assert value(fams, f"{h}_bucket", le="0.001") == 7
    assert value(fams, f"{h}_bucket", le="10.0") == 8
    assert value(fams, f"{h}_bucket", le="+Inf") == 9
    assert len([s for s in fams[h].samples if s[0].endswith("_bucket")]) == len(
        LATENCY_BUCKETS) + 1
    # Everything the issue asks for, by family.
    for kind in ("counter", "gauge"):
        assert any(f.kind == kind for f in fams.values())


def test_render_metrics_draining_and_escaping() -> None:
    text = render_metrics(make_snapshot(state="draining", version='1.0"\\\nx'))
    fams = parse(text)
    assert value(fams, "tgate_draining") == 1
    assert value(fams, "tgate_build_info", version='1.0"\\\nx') == 1
    assert 'version="1.0\\"\\\\\\nx"' in text


def test_render_metrics_empty_gateway() -> None:
    snap = make_snapshot(workers=[], connections_closed={}, clients=0,
                         latency=LatencySnapshot(buckets=[], counts=[0], sum=0.0))
    text = render_metrics(snap)
    # Families without a sample (no workers, no closes yet) are still declared;
    # parse() insists on samples, so only check promtool-level sanity here.
    assert "tgate_handler_reply_latency_seconds_bucket{le=\"+Inf\"} 0" in text
    promtool_check(text)


def test_render_metrics_rejects_bad_histogram() -> None:
    with pytest.raises(ValueError):
        render_metrics(make_snapshot(latency=LatencySnapshot(buckets=[1.0], counts=[1],
                                                             sum=0.0)))


def test_promtool_accepts_render_metrics() -> None:
    promtool_check(render_metrics(make_snapshot()))
    promtool_check(render_metrics(make_snapshot(state="draining", version='a"b\\c')))


def test_render_status_is_the_snapshot_as_json() -> None:
    snap = make_snapshot()
    body = render_status(snap)
    assert body.endswith(b"\n")
    assert json.loads(body) == json.loads(json.dumps(snap))


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address(":7001") == ("127.0.0.1", 7001)
    assert parse_address("localhost:80") == ("localhost", 80)
    for bad in ("", "7001", "host:", "host:x", "host:65536", "::1:80"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_status_table_from_a_snapshot() -> None:
    doc = json.loads(render_status(make_snapshot(state="draining")))
    text = status.render(doc, "127.0.0.1:7001")
    lines = text.splitlines()
    assert "draining" in lines[0] and "up 1h 02m 03s" in lines[0]
    assert re.search(r"^0\s+4242\s+yes\s+4\s+2\s+4.0 KiB\s+3\s+1$", text, re.M), text
    assert re.search(r"^1\s+-\s+no\s+3\s+0\s+0 B\s+7\s+6$", text, re.M), text
    assert re.search(r"^total\s+1\s+7\s+2\s+4.0 KiB\s+10\s+7$", text, re.M), text
    assert "accepted 20, refused 2" in text
    # A document from an older or newer tgate (missing keys) still prints.
    assert "?" in status.render({}, "x:1")


# -- live scrapes ---------------------------------------------------------


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            raw = await recv_until_eof(stream)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    first, *rest = head.decode("ascii").split("\r\n")
    proto, code, _reason = first.split(" ", 2)
    assert proto == "HTTP/1.1"
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in rest)}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body) or request.startswith(b"HEAD")
    return int(code), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def scrape(port: int) -> dict[str, Family]:
    code, headers, body = await get(port, "/metrics")
    assert code == 200
    assert headers["content-type"] == METRICS_CONTENT_TYPE
    return parse(body.decode())


async def scrape_until(port: int, ok: Callable[[dict[str, Family]], bool]) -> dict[str, Family]:
    """Counters the handler's reply moves may lag the client's echo a little."""
    with trio.move_on_after(5):
        while True:
            fams = await scrape(port)
            if ok(fams):
                return fams
            await trio.sleep(0.02)
    return await scrape(port)


async def get_status(port: int) -> dict[str, Any]:
    code, headers, body = await get(port, "/status")
    assert code == 200
    assert headers["content-type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO / "adapters" / "python")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


async def test_live_scrape(gateway: Any) -> None:
    async with gateway(example("echo.py")) as (gw, port), trio.open_nursery() as nursery:
        mhost, mport = await nursery.start(serve_metrics, gw, "127.0.0.1", 0)
        assert mhost == "127.0.0.1" and mport > 0
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"hello\n")
            await expect(client, b"hello\n")
            code, _headers, body = await get(mport, "/metrics")
            assert code == 200
            text = body.decode()
            promtool_check(text)  # CI: promtool on a live scrape
            fams = parse(text)
            assert value(fams, "tgate_clients") == 1
            assert value(fams, "tgate_workers") == 1
            assert value(fams, "tgate_workers_up") == 1
            assert value(fams, "tgate_worker_up", worker="0") == 1
            assert value(fams, "tgate_worker_clients", worker="0") == 1
            assert value(fams, "tgate_clients_paused") == 0
            assert value(fams, "tgate_draining") == 0
            assert value(fams, "tgate_build_info", version=__version__) == 1
            assert 0 < value(fams, "tgate_start_time_seconds") <= time.time() + 1

            doc = await get_status(mport)
            assert doc["state"] == "running"
            assert doc["version"] == __version__
            assert doc["clients"] == 1
            assert doc["workers_up"] == 1
            assert doc["uptime_seconds"] >= 0
            (w,) = doc["workers"]
            assert w["pid"] == gw.handler_pid and w["up"] and w["clients"] == 1

            if hasattr(gw, "metrics"):  # needs the lead's counters
                fams = await scrape_until(mport, lambda f: value(
                    f, "tgate_handler_reply_latency_seconds_count") >= 1 and value(
                    f, "tgate_client_sent_bytes_total") >= 6)
                assert value(fams, "tgate_connections_accepted_total") == 1
                assert value(fams, "tgate_client_received_bytes_total") == 6
                assert value(fams, "tgate_client_sent_bytes_total") == 6
                assert value(fams, "tgate_handler_sent_messages_total") >= 2  # connect, data
                assert value(fams, "tgate_handler_received_messages_total") >= 1
                assert value(fams, "tgate_handler_reply_latency_seconds_count") >= 1
                assert value(fams, "tgate_handler_reply_latency_seconds_sum") > 0

        # The client is gone: the gauges follow at the next scrape.
        fams = await scrape_until(mport, lambda f: value(f, "tgate_clients") == 0)
        assert value(fams, "tgate_clients") == 0
        assert value(fams, "tgate_worker_clients", worker="0") == 0
        if hasattr(gw, "metrics"):  # needs the lead's counters
            fams = await scrape_until(mport, lambda f: value(
                f, "tgate_connections_closed_total", reason="eof") == 1)
            assert value(fams, "tgate_connections_closed_total", reason="eof") == 1

        # /status says draining during a drain (gw.draining, set by the drain).
        gw.draining = True
        try:
            assert (await get_status(mport))["state"] == "draining"
            assert value(await scrape(mport), "tgate_draining") == 1
        finally:
            gw.draining = False
        nursery.cancel_scope.cancel()


async def test_live_scrape_workers_and_channels(gateway: Any) -> None:
    async with gateway(example("chat.py"), workers=2, framing="line") as (gw, port), \
            trio.open_nursery() as nursery:
        _h, mport = await nursery.start(serve_metrics, gw, "127.0.0.1", 0)
        a = await trio.open_tcp_stream("127.0.0.1", port)
        b = await trio.open_tcp_stream("127.0.0.1", port)
        async with a, b:
            await expect(a, b"* 2 joined\n")
            await b.send_all(b"hi\n")
            await expect(a, b"2: hi\n")
            text = (await get(mport, "/metrics"))[2].decode()
            promtool_check(text)
            fams = parse(text)
            assert value(fams, "tgate_workers") == 2
            assert value(fams, "tgate_workers_up") == 2
            assert value(fams, "tgate_clients") == 2
            assert value(fams, "tgate_worker_clients", worker="0") == 1
            assert value(fams, "tgate_worker_clients", worker="1") == 1
            assert value(fams, "tgate_channels") == 1
            doc = await get_status(mport)
            assert [w["pid"] for w in doc["workers"]] == gw.handler_pids
            if hasattr(gw, "metrics"):  # needs the lead's counters
                fams = await scrape_until(
                    mport, lambda f: value(f, "tgate_channel_publishes_total") >= 2)
                assert value(fams, "tgate_channel_publishes_total") >= 2  # joined, hi

            # tgate status, a separate process, against this gateway.
            cmd = [sys.executable, "-m", "tgate", "status", "--metrics", f"127.0.0.1:{mport}"]
            done = await trio.to_thread.run_sync(lambda: subprocess.run(
                cmd, capture_output=True, timeout=60, env=_env()))
            out = done.stdout.decode()
            assert done.returncode == 0, done.stderr.decode()
            assert "running" in out.splitlines()[0]
            for i, pid in enumerate(gw.handler_pids):
                assert re.search(rf"^{i}\s+{pid}\s+yes\s+1\s", out, re.M), out
            assert re.search(r"^total\s+2\s+2\s", out, re.M), out
        nursery.cancel_scope.cancel()


async def test_http_errors(gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observe, "READ_TIMEOUT", 0.3)
    async with gateway(example("echo.py")) as (gw, _port), trio.open_nursery() as nursery:
        _h, mport = await nursery.start(serve_metrics, gw, "127.0.0.1", 0)
        assert (await get(mport, "/"))[0] == 404
        assert (await get(mport, "/metricsx"))[0] == 404
        assert (await get(mport, "/metrics?x=1"))[0] == 200
        code, headers, body = await http(mport, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert code == 405 and headers["allow"] == "GET, HEAD"
        code, headers, body = await http(mport, b"HEAD /status HTTP/1.1\r\n\r\n")
        assert code == 200 and body == b"" and int(headers["content-length"]) > 0
        for bad in (b"garbage\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET  /metrics HTTP/1.1\r\n\r\n",
                    b"GET /metrics SPDY/3\r\n\r\n", b"GET /\xff HTTP/1.1\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\n"):  # EOF before the blank line
            stream = await trio.open_tcp_stream("127.0.0.1", mport)
            async with stream:
                await stream.send_all(bad)
                await stream.send_eof()
                raw = await recv_until_eof(stream)
            assert raw.startswith(b"HTTP/1.1 400 "), (bad, raw)
        # A bare-LF request is accepted.
        assert (await http(mport, b"GET /status HTTP/1.0\n\n"))[0] == 200
        # A head past 8 KiB: 431.
        big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * observe.MAX_HEAD + b"\r\n\r\n"
        stream = await trio.open_tcp_stream("127.0.0.1", mport)
        async with stream:
            await stream.send_all(big)
            raw = await recv_until_eof(stream)
        assert raw.startswith(b"HTTP/1.1 431 "), raw[:80]
        # Silence: 408 after the read timeout.
        stream = await trio.open_tcp_stream("127.0.0.1", mport)
        async with stream:
            await stream.send_all(b"GET /met")
            with trio.fail_after(5):
                raw = await recv_until_eof(stream)
        assert raw.startswith(b"HTTP/1.1 408 "), raw
        # Still serving, and the gateway is unharmed.
        assert (await get(mport, "/metrics"))[0] == 200
        assert gw.link.pid is not None
        nursery.cancel_scope.cancel()


async def test_scrape_errors_never_crash(gateway: Any, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(observe, "MAX_CONNECTIONS", 1)
    async with gateway(example("echo.py")) as (gw, port), trio.open_nursery() as nursery:
        _h, mport = await nursery.start(serve_metrics, gw, "127.0.0.1", 0)
        # A scraper that resets mid-request.
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", mport))
            sock.sendall(b"GET /met")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await trio.sleep(0.05)
        # Too many at once: one holds the only slot, the next gets 503.
        holder = await trio.open_tcp_stream("127.0.0.1", mport)
        async with holder:
            await trio.sleep(0.05)
            code, _headers, _body = await get(mport, "/metrics")
            assert code == 503
        await trio.sleep(0.05)
        assert (await get(mport, "/metrics"))[0] == 200

        # A bug in taking the snapshot: 500, one log line, still serving.
        def broken(gw: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(observe, "take_snapshot", broken)
        with caplog.at_level("ERROR", logger="tgate"):
            assert (await get(mport, "/status"))[0] == 500
        assert [r for r in caplog.records if "boom" in r.getMessage()]
        monkeypatch.undo()
        assert (await get(mport, "/status"))[0] == 200
        # And the gateway still echoes.
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"ok\n")
            await expect(client, b"ok\n")
        nursery.cancel_scope.cancel()


def test_take_snapshot_before_the_counters_exist(tmp_path: Any) -> None:
    """take_snapshot works on a Gateway without metrics/draining/started_at."""
    from tgate.server import Gateway

    gw = Gateway(Options(handler=["true"], port=0))
    for attr in ("metrics", "draining", "started_at"):
        if attr in vars(gw):
            delattr(gw, attr)
    snap = take_snapshot(gw)
    assert snap["state"] == "running" and snap["clients"] == 0
    assert snap["workers"][0]["pid"] is None and snap["workers_up"] == 0
    assert snap["bytes_received"] == 0
    assert set(snap["connections_closed"]) >= set(CLOSE_REASONS)
    assert len(snap["latency"]["counts"]) == len(LATENCY_BUCKETS) + 1
    fams = parse(render_metrics(snap))
    assert value(fams, "tgate_workers_up") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_status_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    assert status.main(["--metrics", f"127.0.0.1:{port}"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and "cannot connect" in err
    # The same through the command line dispatch.
    assert cli_main(["status", "--metrics", f"127.0.0.1:{port}"]) == 1
    with pytest.raises(SystemExit) as exc:
        status.main(["--metrics", "nonsense"])
    assert exc.value.code == 2


@pytest.mark.skipif("metrics" not in Options.__dataclass_fields__,
                    reason="Options.metrics not wired yet")
async def test_gateway_option_serves_metrics(gateway: Any) -> None:
    async with gateway(example("echo.py"), metrics=("127.0.0.1", 0)) as (gw, _port):
        address = getattr(gw, "metrics_address", None)
        assert address is not None
        fams = await scrape(address[1])
        assert value(fams, "tgate_workers_up") == 1
