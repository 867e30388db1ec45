"""Shared fixtures: an in-process gateway on port 0 with a real handler."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tgate.core import Settings
from tgate.server import Gateway, Options

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
PY = shlex.quote(sys.executable)
#: CI sets this so that a missing tool fails the run instead of skipping.
REQUIRE_TOOLS = os.environ.get("TGATE_REQUIRE_TOOLS") == "1"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"{tool} is required (TGATE_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(f"{tool} not installed")
    return path


def example(name: str) -> str:
    """The handler command for examples/<name>."""
    path = shlex.quote(str(REPO / "examples" / name))
    if name.endswith(".py"):
        return f"{PY} {path}"
    if name.endswith(".js"):
        return f"node {path}"
    return path


def scripted(logfile: Path, *mode: str) -> str:
    args = " ".join(shlex.quote(m) for m in mode)
    script = shlex.quote(str(FIXTURES / "scripted_handler.py"))
    return f"{PY} {script} {shlex.quote(str(logfile))} {args}"


def read_log(logfile: Path) -> list[dict[str, Any]]:
    if not logfile.exists():
        return []
    return [json.loads(line) for line in logfile.read_text().splitlines() if line]


_SETTINGS = {f for f in Settings.__dataclass_fields__}


@asynccontextmanager
async def running_gateway(handler: str, **kw: Any) -> AsyncIterator[tuple[Gateway, int]]:
    settings = Settings(**{k: kw.pop(k) for k in list(kw) if k in _SETTINGS})
    gw = Gateway(Options(handler=shlex.split(handler), port=0, **kw), settings)
    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(gw.serve)
        try:
            yield gw, port
        finally:
            gw.stop()
            with trio.fail_after(30):
                await gw.stopped.wait()


@pytest.fixture
def gateway() -> Callable[..., Any]:
    return running_gateway


async def recv_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf)!r}")
        buf += chunk
    return bytes(buf)


async def expect(stream: trio.SocketStream, data: bytes) -> None:
    """Receive exactly len(data) bytes and check they are `data`."""
    assert await recv_exactly(stream, len(data)) == data


async def recv_until_eof(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition on real time (for state held by a real subprocess)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
