"""``--metrics HOST:PORT``: /metrics (Prometheus) and /status (JSON) over a
minimal HTTP/1.1 listener of its own, served in the gateway's trio loop.

A scrape is not the hot path: each connection gets a task, reads one
request head (at most :data:`MAX_HEAD` bytes within :data:`READ_TIMEOUT`
seconds), gets one response and is closed (``Connection: close``). The
snapshot is taken synchronously, between two trio checkpoints, so it is
consistent. Nothing a scraper does (garbage, a reset, a stall, too many
connections) can raise out of :func:`serve_metrics`: it is logged in one line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from . import __version__
from .exposition import (
    METRICS_CONTENT_TYPE,
    STATUS_CONTENT_TYPE,
    LatencySnapshot,
    Snapshot,
    WorkerSnapshot,
    render_metrics,
    render_status,
)
from .metrics import LATENCY_BUCKETS, Metrics
from .poller import READ

log = logging.getLogger("tgate")

#: A request head (request line and headers) larger than this gets 431.
MAX_HEAD = 8192
#: Seconds a scraper has to send its request head, and to read the response.
READ_TIMEOUT = 5.0
#: Scrape connections served at once; more are answered 503 and closed.
MAX_CONNECTIONS = 16
#: After the response, read and drop at most this much of what the scraper
#: still sends (until its EOF) so that closing does not reset the response.
_LINGER_BYTES = 65536
_LINGER_TIME = 1.0

_ZERO = Metrics()
#: when this module was loaded: the start time of a gateway without started_at
_LOADED_AT = time.time()


# ------------------------------------------------------------------ snapshot


def take_snapshot(gw: Any) -> Snapshot:
    """What /metrics and /status show, read from a live Gateway (server.py)
    at once, without awaiting: a consistent view."""
    core = gw.core
    m: Metrics = getattr(gw, "metrics", None) or _ZERO
    links = list(getattr(gw, "links", ()))
    workers: list[WorkerSnapshot] = []
    for w in core.workers:
        link = links[w.index] if w.index < len(links) else None
        workers.append(WorkerSnapshot(
            index=w.index,
            pid=link.pid if link is not None else None,
            up=bool(w.up),
            clients=w.nclients,
            owed=w.owed,
            queued_bytes=len(w.outbox) + w.pipe_pending,
            restarts=link.restarts if link is not None else 0,
            crashes=link.crashes if link is not None else 0,
        ))
    paused = 0
    for conn in gw.clients.conns:
        if conn.reading and not conn.closed and not conn.interest & READ:
            paused += 1
    started = getattr(gw, "started_at", None) or _LOADED_AT
    return Snapshot(
        version=__version__,
        state="draining" if getattr(gw, "draining", False) else "running",
        started_at=started,
        uptime_seconds=max(0.0, time.time() - started),
        clients=len(core.clients),
        clients_paused=paused,
        connections_accepted=m.connections_accepted,
        connections_refused=m.connections_refused,
        connections_closed=dict(m.connections_closed),
        bytes_received=m.bytes_received,
        bytes_sent=m.bytes_sent,
        messages_to_handler=m.messages_to_handler,
        messages_from_handler=m.lines_from_handler,
        handler_restarts=dict(m.handler_restarts),
        publishes=m.publishes,
        channels=len(core.channels),
        pipe_queued_bytes=sum(w["queued_bytes"] for w in workers),
        owed=sum(w["owed"] for w in workers),
        workers_up=sum(1 for w in workers if w["up"]),
        workers=workers,
        latency=LatencySnapshot(
            buckets=list(LATENCY_BUCKETS), counts=list(m.latency_counts), sum=m.latency_sum,
        ),
    )


# ------------------------------------------------------------------ HTTP

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}
_PAGES = {"/metrics": METRICS_CONTENT_TYPE, "/status": STATUS_CONTENT_TYPE}


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              *, head_only: bool = False, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n"
        f"{extra}"
        f"Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


def _error(status: int, detail: str = "", **kw: Any) -> bytes:
    text = f"{status} {_REASONS[status]}{': ' + detail if detail else ''}\n"
    return _response(status, text.encode(), **kw)


def respond(gw: Any, head: bytes) -> bytes:
    """The whole response to a request head (sans-IO: the tests call it too)."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
        return _error(400)
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return _error(400)
    path = target.split("?", 1)[0]
    content_type = _PAGES.get(path)
    if content_type is None:
        return _error(404, "try /metrics or /status")
    if method not in ("GET", "HEAD"):
        return _error(405, extra="Allow: GET, HEAD\r\n")
    snap = take_snapshot(gw)
    body = render_metrics(snap).encode() if path == "/metrics" else render_status(snap)
    return _response(200, body, content_type, head_only=method == "HEAD")


def _head_end(buf: bytearray, start: int) -> int:
    """Where the request head ends (after its blank line), or -1."""
    begin = max(0, start - 3)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = buf.find(sep, begin)
        if i >= 0:
            return i + len(sep)
    return -1


async def _read_head(stream: trio.SocketStream) -> bytes | int:
    """The request head, or the error status to answer (400, 408, 431)."""
    buf = bytearray()
    with trio.move_on_after(READ_TIMEOUT):
        while True:
            chunk = await stream.receive_some(MAX_HEAD + 1 - len(buf))
            if not chunk:
                return 400  # EOF before the end of the head
            start = len(buf)
            buf += chunk
            end = _head_end(buf, start)
            if end >= 0:
                return bytes(buf[:end])
            if len(buf) > MAX_HEAD:
                return 431
    return 408


async def _serve_one(gw: Any, stream: trio.SocketStream, limiter: trio.CapacityLimiter) -> None:
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await _send(stream, _error(503, "too many scrapes at once"))
        return
    try:
        head = await _read_head(stream)
        if isinstance(head, int):
            reply = _error(head)
        else:
            try:
                reply = respond(gw, head)
            except Exception as exc:  # a bug here must not cost the gateway
                log.error("metrics: cannot answer %s: %s: %s", _peer(stream),
                          type(exc).__name__, exc)
                reply = _error(500)
        await _send(stream, reply)
    finally:
        limiter.release()


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(READ_TIMEOUT):
        await stream.send_all(data)
        await stream.send_eof()
        with trio.move_on_after(_LINGER_TIME):
            dropped = 0
            while dropped < _LINGER_BYTES:
                chunk = await stream.receive_some(_LINGER_BYTES)
                if not chunk:
                    break
                dropped += len(chunk)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_metrics(gw: Any, host: str, port: int, *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics and /status for `gw` on host:port until cancelled.

    Reports the bound (host, port) through ``task_status.started`` (so port
    0 picks a free one). OSError if it cannot listen.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_one(gw, stream, limiter)
        except Exception as exc:  # never let a scrape take the gateway down
            log.warning("metrics: request from %s failed: %s: %s", _peer(stream),
                        type(exc).__name__, exc)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    try:
        address = listeners[0].socket.getsockname()
        task_status.started((address[0], address[1]))
        await trio.serve_listeners(handle, listeners)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
