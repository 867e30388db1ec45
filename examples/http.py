"""A small HTTP/1.1 server as a tgate handler.

    tgate --handler "python3 examples/http.py" --port 8080
    curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/stream

Routes:

- ``GET /`` (and ``HEAD``): 200, a short text body;
- ``POST /echo``: 200, the request body back (``application/octet-stream``);
- ``GET /stream`` (and ``HEAD``): 200 with ``Transfer-Encoding: chunked``, a few
  chunks (to an HTTP/1.0 client, the same bytes with a ``Content-Length``);
- another method on those paths: 405 with ``Allow``; any other path: 404.

Connections: HTTP/1.1 keeps the connection open unless the request says
``Connection: close``; HTTP/1.0 closes it unless the request says
``Connection: keep-alive``. Pipelined requests (several in one read) are
answered in order, each as soon as it is complete. ``Expect: 100-continue``
gets an interim ``100 Continue`` before the body is read.

Errors, after which the connection is closed (the rest of the stream cannot be
trusted, or the request cannot be read at all): 400 for a malformed request line
or header (including a missing ``Host`` in HTTP/1.1 and conflicting
``Content-Length`` values), 505 for an HTTP major version other than 1, 431
for a request head over ``MAX_HEAD`` bytes, 413 for a body over ``MAX_BODY``
bytes, and 411 (Length Required) for a request with ``Transfer-Encoding``: this
server reads request bodies framed by ``Content-Length`` only. That is a
choice, not an oversight: 411 tells the client exactly what to send instead
(curl, for instance, uses ``Content-Length`` whenever it knows the size), while
501 would read as "this server cannot do that method".

Every response is framed (``Content-Length`` or chunked) and has a fixed,
deterministic set of headers: no ``Date``, and ``Server: tgate-example``.

Give tgate ``python3 examples/http.py`` as its handler command; it runs from a
checkout without installing anything.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import partial

try:
    from tgate_handler import Client, ServerLoop
except ImportError:  # running from a checkout: use the adapter next door
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "adapters", "python")
    )
    from tgate_handler import Client, ServerLoop

#: Longest request head (request line and headers, with the blank line) in bytes.
MAX_HEAD = 8192
#: Longest request body in bytes. A request is answered only once it is complete,
#: so until then ALL of it sits unconsumed in tgate's buffer for this client,
#: which holds at most --max-bufsize bytes (65536 by default) before tgate
#: disconnects the client (``overflow``) without a word. So the limit stays
#: below that, and is lowered further per request so that head + body always
#: fit the max_bufsize tgate announces in its ``hello``.
MAX_BODY = 60000

SERVER = b"tgate-example"
INDEX_BODY = b"Hello from tgate!\n"
STREAM_CHUNKS = (b"chunk 1 of 3\n", b"chunk 2 of 3\n", b"chunk 3 of 3: done\n")

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}

# RFC 9110 tokens; one SP between the three parts; a target of visible ASCII.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than HTAB
HEAD_END = re.compile(rb"\r?\n\r?\n")
LINE_END = re.compile(rb"\r?\n")
LEADING_BLANK_LINES = re.compile(rb"(?:\r?\n)+")


@dataclass
class Conn:
    """Per-client state (``client.data``)."""

    #: a ``100 Continue`` was sent for the request being read
    continued: bool = False


class HttpError(Exception):
    """A request we answer with an error status, then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: bytes
    target: bytes
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]  # (lower-case name, value)
    head_len: int  # bytes of the head, blank line included
    body_len: int

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    def tokens(self, name: bytes) -> set[bytes]:
        """The comma-separated tokens of a header, lower-cased (``Connection``, ``Expect``)."""
        return {t.strip().lower() for v in self.values(name) for t in v.split(b",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens(b"connection")
        if self.version >= (1, 1):
            return b"close" not in conn
        return b"keep-alive" in conn and b"close" not in conn

    @property
    def path(self) -> bytes:
        target = self.target
        if target.startswith((b"http://", b"https://")):  # absolute-form: drop the authority
            slash = target.find(b"/", target.find(b"//") + 2)
            target = target[slash:] if slash >= 0 else b"/"
        return target.split(b"?", 1)[0]


def parse_head(buf: bytes, head_len: int, body_limit: int) -> Request:
    """Parse a complete request head (``buf[:head_len]``, blank line included)."""
    lines = LINE_END.split(buf[:head_len])
    while lines and not lines[-1]:
        lines.pop()
    m = REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise HttpError(400, "malformed request line")
    method, target, major, minor = m.groups()
    if major != b"1":
        raise HttpError(505, "only HTTP/1.x is spoken here")
    if not (target.startswith(b"/") or target == b"*" or b"://" in target):
        raise HttpError(400, "malformed request target")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        h = HEADER.fullmatch(line)  # obs-fold lines (leading SP/HT) do not match
        if h is None or BAD_VALUE.search(h.group(2)):
            raise HttpError(400, "malformed header field")
        headers.append((h.group(1).lower(), h.group(2)))
    req = Request(method, target, (1, int(minor)), headers, head_len, 0)
    if req.version >= (1, 1) and len(req.values(b"host")) != 1:
        raise HttpError(400, "HTTP/1.1 needs exactly one Host header")
    if req.values(b"transfer-encoding"):
        raise HttpError(411, "request bodies must have a Content-Length")
    lengths = {v.strip() for value in req.values(b"content-length") for v in value.split(b",")}
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise HttpError(400, "invalid Content-Length")
    if lengths:
        (length,) = lengths
        if len(length) > 18 or int(length) > body_limit:
            raise HttpError(413, f"request bodies are limited to {body_limit} bytes")
        req.body_len = int(length)
    return req


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: tuple[bytes, ...] = (),
    version: tuple[int, int] = (1, 1),
    close: bool = False,
    head_only: bool = False,
    chunks: tuple[bytes, ...] | None = None,
) -> bytes:
    """A whole response: status line, the fixed headers, framing, body."""
    lines = [
        b"HTTP/1.1 %d %s" % (status, REASONS[status].encode()),
        b"Server: " + SERVER,
        b"Content-Type: " + content_type,
        *extra,
    ]
    if chunks is not None and version >= (1, 1):
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    else:
        if chunks is not None:  # HTTP/1.0 knows no chunked encoding
            body = b"".join(chunks)
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    elif version < (1, 1):
        lines.append(b"Connection: keep-alive")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body


def error_response(status: int, message: str) -> bytes:
    return response(status, f"{REASONS[status]}: {message}\n".encode(), close=True)


def route(req: Request, body: bytes, close: bool) -> bytes:
    """The response to one complete request."""
    method, path = req.method, req.path
    reply = partial(response, version=req.version, close=close, head_only=method == b"HEAD")
    if path == b"/":
        if method in (b"GET", b"HEAD"):
            return reply(200, INDEX_BODY)
        allow = b"GET, HEAD"
    elif path == b"/stream":
        if method in (b"GET", b"HEAD"):
            return reply(200, chunks=STREAM_CHUNKS)
        allow = b"GET, HEAD"
    elif path == b"/echo":
        if method == b"POST":
            return reply(200, body, content_type=b"application/octet-stream")
        allow = b"POST"
    else:
        return reply(404, b"Not Found\n")
    return reply(405, b"Method Not Allowed\n", extra=(b"Allow: " + allow,))


class Http(ServerLoop):
    def client_connected(self, client: Client) -> Conn:
        return Conn()

    def limits(self) -> tuple[int, int]:
        """(head limit, buffer size): a request must fit tgate's buffer whole."""
        bufsize = int(self.hello.get("max_bufsize", 65536))
        return min(MAX_HEAD, bufsize), bufsize

    def process_client_data(self, client: Client, buf: bytes) -> int:
        blank = LEADING_BLANK_LINES.match(buf)
        if blank:  # empty lines before a request line are ignored (RFC 9112, 2.2)
            return blank.end()
        if buf == b"\r":
            return 0
        head_limit, bufsize = self.limits()
        end = HEAD_END.search(buf, 0, head_limit)
        if end is None:
            if len(buf) >= head_limit:
                return self.fail(client, buf, HttpError(431, f"the limit is {head_limit} bytes"))
            return 0  # the head is not complete yet
        conn: Conn = client.data
        try:
            req = parse_head(buf, end.end(), min(MAX_BODY, bufsize - end.end()))
        except HttpError as exc:
            return self.fail(client, buf, exc)
        total = req.head_len + req.body_len
        if len(buf) < total:  # wait for the body
            if (
                not conn.continued
                and req.version >= (1, 1)
                and b"100-continue" in req.tokens(b"expect")
            ):
                client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                conn.continued = True
            return 0
        conn.continued = False
        close = not req.keep_alive
        client.write(route(req, buf[req.head_len : total], close))
        if close:
            client.close()
        return total

    def fail(self, client: Client, buf: bytes, exc: HttpError) -> int:
        client.write(error_response(exc.status, str(exc)))
        client.close()
        return len(buf)


if __name__ == "__main__":
    Http().run()
