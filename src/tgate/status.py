"""``tgate status [--metrics HOST:PORT]``: a running gateway's /status as a table.

A separate process asking a running tgate (started with ``--metrics``) over
HTTP: blocking urllib is fine here, and nothing of the gateway is imported
but the address parser.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .exposition import DEFAULT_METRICS_ADDRESS, parse_address

#: Seconds to wait for the gateway's answer.
TIMEOUT = 5.0


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tgate status",
        description="Print the state of a running tgate started with --metrics HOST:PORT "
        "(its /status endpoint) as a table.",
    )
    p.add_argument("--metrics", type=_address, default=DEFAULT_METRICS_ADDRESS,
                   metavar="HOST:PORT",
                   help=f"the gateway's --metrics address (default {DEFAULT_METRICS_ADDRESS})")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON instead")
    return p


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/status"


def fetch(url: str, timeout: float = TIMEOUT) -> bytes:
    """The body of a 200 response; OSError (urllib's errors are) otherwise."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{seconds:.1f}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _counts(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in d.items())


def render(status: dict[str, Any], where: str) -> str:
    """The human table for a /status document."""
    g = status.get
    workers: list[dict[str, Any]] = list(g("workers") or [])
    lines = [
        f"tgate {g('version', '?')} ({where}): {g('state', '?')}, "
        f"up {_duration(float(g('uptime_seconds', 0.0)))}",
        f"clients {g('clients', 0)} (paused by backpressure {g('clients_paused', 0)}), "
        f"channels {g('channels', 0)}, workers up {g('workers_up', 0)}/{len(workers)}",
        "",
    ]
    rows = [["worker", "pid", "up", "clients", "owed", "queued", "restarts", "crashes"]]
    for w in workers:
        pid = w.get("pid")
        rows.append([
            str(w.get("index", "?")), "-" if pid is None else str(pid),
            "yes" if w.get("up") else "no", str(w.get("clients", 0)), str(w.get("owed", 0)),
            _size(int(w.get("queued_bytes", 0))), str(w.get("restarts", 0)),
            str(w.get("crashes", 0)),
        ])
    rows.append([
        "total", "", str(sum(1 for w in workers if w.get("up"))),
        str(sum(int(w.get("clients", 0)) for w in workers)),
        str(sum(int(w.get("owed", 0)) for w in workers)),
        _size(sum(int(w.get("queued_bytes", 0)) for w in workers)),
        str(sum(int(w.get("restarts", 0)) for w in workers)),
        str(sum(int(w.get("crashes", 0)) for w in workers)),
    ])
    lines += _table(rows)
    closed = g("connections_closed") or {}
    closed_total = sum(closed.values()) if isinstance(closed, dict) else 0
    nonzero = {k: v for k, v in closed.items() if v} if isinstance(closed, dict) else {}
    latency = g("latency") or {}
    replies = sum(latency.get("counts") or [])
    mean = (f", mean {latency.get('sum', 0.0) / replies * 1000:.2f} ms" if replies else "")
    lines += [
        "",
        f"connections: accepted {g('connections_accepted', 0)}, "
        f"refused {g('connections_refused', 0)}, closed {closed_total}"
        + (f" ({_counts(nonzero)})" if nonzero else ""),
        f"bytes: received {_size(int(g('bytes_received', 0)))}, "
        f"sent {_size(int(g('bytes_sent', 0)))}",
        f"handler: messages sent {g('messages_to_handler', 0)}, "
        f"received {g('messages_from_handler', 0)}, owed {g('owed', 0)}, "
        f"queued {_size(int(g('pipe_queued_bytes', 0)))}; {replies} replies timed{mean}",
        f"restarts: {_counts(g('handler_restarts'))}; publishes {g('publishes', 0)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    host, port = args.metrics
    url = url_for(host, port)
    try:
        body = fetch(url)
    except urllib.error.HTTPError as exc:
        print(f"tgate status: {url}: HTTP {exc.code} {exc.reason}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tgate status: cannot connect to {url}: {reason}", file=sys.stderr)
        return 1
    try:
        status = json.loads(body)
        if not isinstance(status, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"tgate status: {url} did not answer a /status document: {exc}",
              file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        try:
            sys.stdout.write(render(status, f"{host}:{port}" if ":" not in host
                                    else f"[{host}]:{port}"))
        except (TypeError, ValueError, AttributeError) as exc:
            print(f"tgate status: {url}: unexpected /status document: {exc}",
                  file=sys.stderr)
            return 1
    return 0
