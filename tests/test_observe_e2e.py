"""Issue 16 through the front door: counters checked against what a test
did to a real tgate (load, a crash, a reload), and a graceful drain."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request

from test_faults_e2e import recv_line, tgate

from conftest import FIXTURES, PY

POOL = f"{PY} {FIXTURES / 'pool_handler.py'}"
METRICS = re.compile(r"tgate metrics on http://(\S+):(\d+)/metrics")


def fetch(t, path: str) -> str:  # type: ignore[no-untyped-def]
    m = METRICS.search(t.log())
    assert m, t.log()
    with urllib.request.urlopen(f"http://{m.group(1)}:{m.group(2)}{path}", timeout=10) as r:
        return r.read().decode()


def sample(text: str, name: str, labels: str = "") -> float:
    pat = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)\n"
    m = re.search(r"^" + pat, text, re.MULTILINE)
    assert m, f"no {name}{labels} in\n{text}"
    return float(m.group(1))


def test_counters_match_what_was_done(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with tgate("--handler", POOL, "--workers", "2", "--metrics", "127.0.0.1:0") as t:
        t.wait_for(METRICS)
        sent = 0
        for i in range(5):  # five clients, three lines each, then EOF
            with t.connect() as s:
                for j in range(3):
                    line = f"client {i} line {j}\n".encode()
                    s.sendall(line)
                    assert recv_line(s) == line
                    sent += len(line)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(10)
                assert s.recv(10) == b""
        keep = t.connect()
        keep.sendall(b"WHO\n")
        m = re.match(rb"worker (\d) of 2 pid (\d+)", recv_line(keep))
        assert m
        os.kill(int(m.group(2)), signal.SIGKILL)  # one crash
        t.wait_for(r"handler started \(pid \d+\).*", count=3)
        t.signal(signal.SIGHUP)  # a rolling reload: two reloads
        t.wait_for(r"replaced by pid \d+ \[worker 1\]", timeout=30)
        keep.sendall(b"still\n")
        assert recv_line(keep) == b"still\n"
        text = fetch(t, "/metrics")
        status = json.loads(fetch(t, "/status"))
        keep.close()
    assert sample(text, "tgate_connections_accepted_total") == 6
    assert sample(text, "tgate_connections_closed_total", 'reason="eof"') == 5
    assert sample(text, "tgate_clients") == 1
    # 15 lines echoed, plus WHO and "still" from the kept client
    assert sample(text, "tgate_client_received_bytes_total") == sent + 4 + 6
    assert sample(text, "tgate_client_sent_bytes_total") >= sent + 6
    assert sample(text, "tgate_handler_restarts_total", 'cause="crash"') == 1
    assert sample(text, "tgate_handler_restarts_total", 'cause="reload"') == 2
    assert sample(text, "tgate_workers_up") == 2
    # every data message got its reply: 15 lines + 5 EOFs + WHO + still (at least)
    assert sample(text, "tgate_handler_reply_latency_seconds_count") >= 22
    assert status["clients"] == 1 and status["state"] == "running"
    assert len(status["workers"]) == 2 and all(w["up"] for w in status["workers"])


def test_drain_keeps_serving_while_refusing_new_connections() -> None:
    with tgate("--handler", POOL, "--metrics", "127.0.0.1:0", "--drain-timeout", "20") as t:
        t.wait_for(METRICS)
        client = t.connect()
        client.sendall(b"before\n")
        assert recv_line(client) == b"before\n"
        t.signal(signal.SIGTERM)
        t.wait_for("draining")
        # the listener is closed at once: a load balancer sees the refusal
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", t.port), timeout=2).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting while draining"
            time.sleep(0.05)
        assert json.loads(fetch(t, "/status"))["state"] == "draining"
        client.sendall(b"during\n")  # ...and the connected client is served
        assert recv_line(client) == b"during\n"
        start = time.monotonic()
        client.close()  # the last client leaves: the drain ends early
        assert t.wait(timeout=15) == 0
        assert time.monotonic() - start < 10


def test_drain_timeout_closes_the_rest() -> None:
    with tgate("--handler", POOL, "--drain-timeout", "1") as t:
        client = t.connect()
        client.sendall(b"x\n")
        assert recv_line(client) == b"x\n"
        t.signal(signal.SIGTERM)
        client.settimeout(15)
        assert client.recv(100) == b""  # closed (reason shutdown) after ~1 s
        assert t.wait(timeout=15) == 0
        client.close()
