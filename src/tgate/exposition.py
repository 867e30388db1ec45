"""/metrics and /status bodies from a snapshot of the gateway (sans-IO).

observe.py takes a :class:`Snapshot` of the live gateway (a plain dict of
numbers, copied in one go inside the trio loop) and serves it; this module
only turns a snapshot into bytes, so it is tested without sockets.

Why the Prometheus text format is written by hand, not with
``prometheus_client``: the format (0.0.4) is a few line shapes (HELP, TYPE,
``name{label="value"} number``), every value here comes from one snapshot
taken on demand, and the gateway is one thread. ``prometheus_client`` would
fit (a custom collector plus ``generate_latest``), but it would add a
dependency to be imported by the gateway for what is about one hundred
lines, its registry and metric objects would be unused (tgate's counters are
plain ints on :class:`tgate.metrics.Metrics`), and its HTTP server, the part
that saves work, is a thread, which the design excludes. The output is
checked by ``promtool check metrics`` in the tests.

The snapshot (all counts since the gateway started; gauges are what holds
at the instant it was taken):

``version``
    tgate's version (``tgate_build_info{version=...}``).
``state``
    ``"running"``, or ``"draining"`` while a drain is in progress.
``started_at``
    when the gateway started, Unix time in seconds (``tgate_start_time_seconds``).
``uptime_seconds``
    seconds since ``started_at``.
``clients``
    clients connected now.
``clients_paused``
    of those, clients whose reading is paused by backpressure (their worker's
    pipe budget is spent, their output queue is past half of --max-output, or
    their buffer is full).
``connections_accepted`` / ``connections_refused``
    connections accepted, and closed at once by --max-clients-per-ip.
``connections_closed``
    ``{reason: count}`` for each disconnect reason (eof, reset, slow, ...).
``bytes_received`` / ``bytes_sent``
    bytes read from and written to client sockets.
``messages_to_handler`` / ``messages_from_handler``
    protocol messages written to the handlers, lines read from them.
``handler_restarts``
    ``{cause: count}`` of handler processes replaced (crash, hang, reload, link).
``publishes``
    channel publishes; ``channels``: channels with at least one subscriber now.
``pipe_queued_bytes``
    bytes queued for the handlers' stdin now (every worker).
``owed``
    data messages awaiting their ``consumed`` reply now (every worker).
``workers_up``
    handler processes running now.
``workers``
    one :class:`WorkerSnapshot` per worker of the pool, by index.
``latency``
    the handler reply latency histogram (:class:`LatencySnapshot`): from a
    data message sent to the handler to its ``consumed`` reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal, TypedDict

import orjson

#: Where ``tgate status`` looks when given no --metrics.
DEFAULT_METRICS_ADDRESS = "127.0.0.1:7001"
#: The Content-Type of a /metrics response.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS_CONTENT_TYPE = "application/json"


class WorkerSnapshot(TypedDict):
    index: int
    #: its running handler process, or None between processes
    pid: int | None
    up: bool
    clients: int
    #: data messages awaiting their reply
    owed: int
    #: bytes queued for its stdin (outbox plus the write in progress)
    queued_bytes: int
    #: handler processes started to replace a previous one (reloads included)
    restarts: int
    #: handler processes that exited or were killed unasked (crash, hang, link)
    crashes: int


class LatencySnapshot(TypedDict):
    #: upper bounds of the buckets, in seconds, increasing (+Inf implied)
    buckets: list[float]
    #: per bucket, NOT cumulative; one more than ``buckets``: the last is +Inf
    counts: list[int]
    #: sum of the observed latencies, in seconds
    sum: float


class Snapshot(TypedDict):
    version: str
    state: Literal["running", "draining"]
    started_at: float
    uptime_seconds: float
    clients: int
    clients_paused: int
    connections_accepted: int
    connections_refused: int
    connections_closed: dict[str, int]
    bytes_received: int
    bytes_sent: int
    messages_to_handler: int
    messages_from_handler: int
    handler_restarts: dict[str, int]
    publishes: int
    channels: int
    pipe_queued_bytes: int
    owed: int
    workers_up: int
    workers: list[WorkerSnapshot]
    latency: LatencySnapshot


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (127.0.0.1) as (host, port);
    ValueError otherwise (usable as an argparse type)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    return host or "127.0.0.1", int(port_text)


# ------------------------------------------------------------------ /metrics


def _num(value: float) -> str:
    """A sample value or bound as Prometheus reads it (Go's ParseFloat)."""
    if isinstance(value, int):
        return str(int(value))  # int(): a bool is 1 or 0, not True
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {escaped}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def by(self, name: str, kind: str, help_text: str, label: str,
           values: Iterable[tuple[str, float]]) -> None:
        self.family(name, kind, help_text)
        for key, value in values:
            self.sample(name, value, ((label, key),))


def render_metrics(snap: Snapshot) -> str:
    """The Prometheus text format (0.0.4) for a snapshot."""
    out = _Writer()
    one = out.one
    one("tgate_start_time_seconds", "gauge",
        "When the gateway started, in seconds since the Unix epoch.", snap["started_at"])
    one("tgate_draining", "gauge", "1 while the gateway drains, else 0.",
        int(snap["state"] == "draining"))
    one("tgate_clients", "gauge", "Clients connected now.", snap["clients"])
    one("tgate_clients_paused", "gauge",
        "Clients whose reading is paused by backpressure (handler pipe budget, output "
        "queue or buffer full).", snap["clients_paused"])
    one("tgate_connections_accepted_total", "counter", "Connections accepted.",
        snap["connections_accepted"])
    one("tgate_connections_refused_total", "counter",
        "Connections closed at once by --max-clients-per-ip.", snap["connections_refused"])
    out.by("tgate_connections_closed_total", "counter",
           "Connections closed, by disconnect reason.", "reason",
           snap["connections_closed"].items())
    one("tgate_client_received_bytes_total", "counter", "Bytes read from client sockets.",
        snap["bytes_received"])
    one("tgate_client_sent_bytes_total", "counter", "Bytes written to client sockets.",
        snap["bytes_sent"])
    one("tgate_handler_sent_messages_total", "counter",
        "Protocol messages written to the handlers' stdin.", snap["messages_to_handler"])
    one("tgate_handler_received_messages_total", "counter",
        "Lines read from the handlers' stdout.", snap["messages_from_handler"])
    out.by("tgate_handler_restarts_total", "counter",
           "Handler processes replaced, by cause.", "cause", snap["handler_restarts"].items())
    one("tgate_handler_pipe_queued_bytes", "gauge",
        "Bytes queued for the handlers' stdin (every worker).", snap["pipe_queued_bytes"])
    one("tgate_handler_owed_replies", "gauge",
        "Data messages awaiting their consumed reply (every worker).", snap["owed"])
    one("tgate_workers", "gauge", "Workers in the pool.", len(snap["workers"]))
    one("tgate_workers_up", "gauge", "Workers whose handler process is running.",
        snap["workers_up"])
    workers = snap["workers"]

    def per_worker(name: str, kind: str, help_text: str,
                   value: Callable[[WorkerSnapshot], int]) -> None:
        out.family(name, kind, help_text)
        for w in workers:
            out.sample(name, value(w), (("worker", str(w["index"])),))

    per_worker("tgate_worker_up", "gauge", "1 if the worker's handler process is running.",
               lambda w: int(w["up"]))
    per_worker("tgate_worker_clients", "gauge", "Clients served by the worker.",
               lambda w: w["clients"])
    per_worker("tgate_worker_owed_replies", "gauge",
               "Data messages awaiting the worker's consumed reply.", lambda w: w["owed"])
    per_worker("tgate_worker_pipe_queued_bytes", "gauge",
               "Bytes queued for the worker's stdin.", lambda w: w["queued_bytes"])
    per_worker("tgate_worker_restarts_total", "counter",
               "Handler processes started to replace the worker's previous one.",
               lambda w: w["restarts"])
    per_worker("tgate_worker_crashes_total", "counter",
               "The worker's handler processes that crashed, hung or broke the link.",
               lambda w: w["crashes"])
    one("tgate_channels", "gauge", "Channels with at least one subscriber.", snap["channels"])
    one("tgate_channel_publishes_total", "counter", "Publishes to channels.",
        snap["publishes"])
    _histogram(out, "tgate_handler_reply_latency_seconds",
               "Seconds from a data message sent to a handler to its consumed reply.",
               snap["latency"])
    out.family("tgate_build_info", "gauge", "Always 1; the labels say which tgate this is.")
    out.sample("tgate_build_info", 1, (("version", snap["version"]),))
    out.lines.append("")
    return "\n".join(out.lines)


def _histogram(out: _Writer, name: str, help_text: str, h: LatencySnapshot) -> None:
    bounds, counts = h["buckets"], h["counts"]
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{name}: {len(counts)} counts for {len(bounds)} buckets (+Inf)")
    out.family(name, "histogram", help_text)
    total = 0
    for bound, count in zip([*bounds, math.inf], counts, strict=True):
        total += count
        out.sample(f"{name}_bucket", total, (("le", _num(float(bound))),))
    out.sample(f"{name}_sum", h["sum"])
    out.sample(f"{name}_count", total)


# ------------------------------------------------------------------ /status


def render_status(snap: Snapshot) -> bytes:
    """The snapshot as JSON (indented: it is read by people too)."""
    return orjson.dumps(snap, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
