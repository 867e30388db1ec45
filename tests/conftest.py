"""Shared fixtures: an in-process gateway on port 0 with a real handler."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import trio

from tgate.core import Settings
from tgate.server import Gateway, Options

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
PY = shlex.quote(sys.executable)
#: CI sets this so that a missing tool fails the run instead of skipping.
REQUIRE_TOOLS = os.environ.get("TGATE_REQUIRE_TOOLS") == "1"


# -- external tools --------------------------------------------------------
#
# Every test that needs something outside the venv's test extra (a program
# such as node, perl, ncat, curl, wrk, redis-cli, or an optional Python
# package) asks for it through one of these, so that TGATE_REQUIRE_TOOLS=1
# (set by .ci/run) turns every such skip into a failure:
#
#   need("curl")                     inside a test: the path, or skip/fail
#   need_module("redis")             inside a test: the module, or skip/fail
#   @requires("perl")                on a test, or pytest.param(..., marks=requires("node"))


def missing(what: str) -> NoReturn:
    """Skip the current test for lack of `what`, or fail it under TGATE_REQUIRE_TOOLS=1."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{what} is required (TGATE_REQUIRE_TOOLS=1) but not installed",
                    pytrace=False)
    pytest.skip(f"{what} not installed")


def need(tool: str) -> str:
    """The path of an external program, or skip (fail under TGATE_REQUIRE_TOOLS=1)."""
    path = shutil.which(tool)
    if path is None:
        missing(tool)
    return path


def need_module(name: str) -> ModuleType:
    """An optional Python package, imported; or skip (fail under TGATE_REQUIRE_TOOLS=1)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    missing(f"the Python package {name}")


def requires(*tools: str) -> pytest.MarkDecorator:
    """A mark: need(tool) for each tool before the test runs (for decorators and
    pytest.param marks, where a bare skipif would ignore TGATE_REQUIRE_TOOLS)."""
    return pytest.mark.requires_tools(*tools)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_tools(*tools): skip without these programs "
        "(fail under TGATE_REQUIRE_TOOLS=1); see conftest.requires")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_tools"):
        for tool in mark.args:
            need(tool)


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
