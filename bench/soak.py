"""Soak: 10,000 concurrent connections through tgate, memory and latency.

    python bench/soak.py [--connections 10000] [--duration 60] [--active 200]
                         [--handler "python3 examples/echo.py"]

Starts tgate (port 0) with the handler, opens the connections (one echo
each, so every client has been through the whole path), and reports the RSS
of tgate and of the handler per connection. Then runs mixed traffic for
--duration seconds: --active connections in a closed loop of 32-byte
requests (latency measured), a trickle of churn (connect, one request,
close), the rest idle. Then closes everything and reports RSS again once
the clients have left. Every reply is checked byte for byte.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """tgate's handler processes (not its guardian, a `python -I -S -c` helper)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return [p for p in out
            if b"\0-I\0-S\0-c\0" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--active", type=int, default=200)
    ap.add_argument("--handler", default=f"{shlex.quote(sys.executable)} examples/echo.py")
    args = ap.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < args.connections + 100:
        sys.exit(f"open-file hard limit {hard} is below {args.connections} connections")

    cmd = ["tgate", "--handler", args.handler, "--port", "0", "--log-level", "warning",
           "--max-clients", str(args.connections + 1000), "--listen-count", "4096"]
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"command: {shlex.join(cmd)}")
    gw = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, start_new_session=True)
    assert gw.stderr is not None
    port = 0
    while not port:
        line = gw.stderr.readline().decode()
        if not line:
            sys.exit("tgate exited")
        if m := re.search(r"tgate listening on .*:(\d+)$", line.strip()):
            port = int(m.group(1))
    try:
        await trio.sleep(0.5)
        handler = children(gw.pid)[0]
        base_gw, base_h = rss_kib(gw.pid), rss_kib(handler)
        print(f"baseline RSS: tgate {base_gw} KiB, handler {base_h} KiB")

        streams: list[trio.SocketStream] = []
        t0 = time.monotonic()
        for i in range(args.connections):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(s)
            if i % 1000 == 999:
                await trio.sleep(0)
        for i, s in enumerate(streams):
            await s.send_all(b"%031d\n" % i)
        for i, s in enumerate(streams):
            want = b"%031d\n" % i
            got = b""
            while len(got) < 32:
                got += await s.receive_some(32 - len(got))
            assert got == want
        print(f"opened {len(streams)} connections (one echo each) in {time.monotonic() - t0:.1f} s")
        await trio.sleep(2)
        full_gw, full_h = rss_kib(gw.pid), rss_kib(handler)
        n = len(streams)
        print(f"RSS with {n} idle connections: tgate {full_gw} KiB "
              f"({(full_gw - base_gw) * 1024 / n:.0f} bytes/connection), handler {full_h} KiB "
              f"({(full_h - base_h) * 1024 / n:.0f} bytes/connection)")

        latencies: list[float] = []
        errors = 0
        churned = 0
        deadline = time.monotonic() + args.duration
        rng = random.Random(7)

        async def active(s: trio.SocketStream, k: int) -> None:
            nonlocal errors
            seq = 0
            while time.monotonic() < deadline:
                msg = b"a%030d\n" % (k * 1_000_000 + seq % 1_000_000)
                t = time.perf_counter()
                await s.send_all(msg)
                got = b""
                while len(got) < 32:
                    got += await s.receive_some(32 - len(got))
                latencies.append(time.perf_counter() - t)
                if got != msg:
                    errors += 1
                seq += 1

        async def churn() -> None:
            nonlocal churned, errors
            while time.monotonic() < deadline:
                async with await trio.open_tcp_stream("127.0.0.1", port) as s:
                    await s.send_all(b"c" * 31 + b"\n")
                    got = b""
                    while len(got) < 32:
                        got += await s.receive_some(32 - len(got))
                    errors += got != b"c" * 31 + b"\n"
                churned += 1
                await trio.sleep(0.01)

        picks = rng.sample(range(n), min(args.active, n))
        async with trio.open_nursery() as nursery:
            for k, i in enumerate(picks):
                nursery.start_soon(active, streams[i], k)
            for _ in range(4):
                nursery.start_soon(churn)
        mid_gw = rss_kib(gw.pid)
        print(f"mixed traffic {args.duration:.0f} s: {len(latencies)} requests on {len(picks)} "
              f"active connections ({len(latencies) / args.duration:.0f}/s), {churned} churned "
              f"connections, {errors} errors")
        p50, p99 = pct(latencies, 0.5) * 1e6, pct(latencies, 0.99) * 1e6
        print(f"latency p50 {p50:.0f} us, p99 {p99:.0f} us (measured by this Python client)")
        print(f"RSS after traffic: tgate {mid_gw} KiB, handler {rss_kib(handler)} KiB")
        for s in streams:
            await s.aclose()
        await trio.sleep(3)  # tgate's ticker returns memory after a crowd leaves
        end_gw = rss_kib(gw.pid)
        print(f"RSS after the clients left: tgate {end_gw} KiB (baseline {base_gw}, "
              f"peak {max(full_gw, mid_gw)}), handler {rss_kib(handler)} KiB")
    finally:
        os.killpg(gw.pid, signal.SIGTERM)
        gw.wait(timeout=30)


if __name__ == "__main__":
    trio.run(main)
