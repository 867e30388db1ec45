"""Bounded in every state (issue 20): tgate's RSS where it used to grow without bound.

    python bench/memory.py                         # this checkout, every scenario (< 3 min)
    python bench/memory.py --compare /tmp/before   # the same against another tree, side by side
    python bench/memory.py --tgate-src DIR --scenarios reload,churn --churn-cycles 200000

Each scenario starts a fresh tgate (``python -m tgate`` with
PYTHONPATH=DIR/src:DIR/adapters/python, ``--port 0``, loopback only) with a
fixture handler written to a temporary directory, brings it to the state
under test, and reads the tgate process's VmRSS and VmHWM from
/proc/PID/status. "before" is VmRSS once the clients are connected (and, for
the reload, once their bytes are held); the peak counter is then reset
(``echo 5 > /proc/PID/clear_refs``) and "peak" is the larger of VmHWM and
VmRSS sampled every 20 ms while the state is driven. A sampler kills tgate
(and reports "> LIMIT") if its RSS passes --limit-mb, to protect the machine.

Scenarios (``--scenarios``, comma-separated; default all):

``line-crash``
    ``--framing line``, a handler that exits on the frame ``CRASH`` and whose
    next starts exit at once for --down seconds (so tgate backs off and
    restarts it several times). Right after the crash, --crash-clients clients
    each send --line-bytes of b"\\n" (empty lines). Ends when a handler is up
    again and a SYNC frame, sent after the flood by a new client, is echoed.
``line-up``
    ``--framing line``, an echo handler that stays up; one client sends
    --line-bytes of b"\\n" and reads its --line-bytes empty frames back.
``reload``
    raw mode, a handler that answers ``consumed n=0`` to every ``data``;
    --reload-clients clients each leave --hold-bytes NUL bytes unconsumed
    (default 65535: a full 65536-byte buffer that consumes nothing is an
    overflow). Then SIGHUP: the new handler is replayed every byte. Ends when
    the new handler has been replayed all of them.
``churn``
    raw mode, a handler that reads its hello and then never reads stdin again;
    --churn-cycles connect + immediate RST (SO_LINGER 0) cycles,
    --churners at a time.

Each scenario has a bound on the RSS delta (peak - before), shown in the
verdict column: line-crash 64 MiB, line-up 16 MiB, reload 64 MiB, churn 16
MiB (--bound-mb sets one for all). They are absolute: a bounded gateway needs
the bytes the clients make it hold (already in "before", except in line-up),
at most its 4 MiB handler-pipe queue and allocator slack, whatever the number
of frames, replays or cycles; unbounded growth passes them by 3-100x at the
default sizes. The delta/held column is the delta divided by the bytes the
clients make tgate hold (per cycle for churn). With --compare a second table
puts both trees side by side with before/current ratios. The exit status is 1
if a scenario run against the tree under test (--tgate-src, default this
checkout) exceeds its bound or does not complete; the --compare tree's
verdicts are printed but do not change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import resource
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

REPO = Path(__file__).resolve().parent.parent
KIB = 1024
MIB = 1024 * 1024

# The fixture handlers, one file, mode in argv[1]. They speak docs/protocol.md
# directly (no adapter) so that they are the same whatever tree tgate runs from.
FIXTURE = r'''
import json, os, sys, time

def say(text):
    print(f"memfix: {text}", file=sys.stderr, flush=True)

def out(lines):
    data = memoryview("".join(lines).encode())
    while data:
        data = data[os.write(1, data):]

def batches():
    """Lists of parsed messages, one list per read of stdin."""
    buf = bytearray()
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return
        buf += chunk
        end = buf.rfind(b"\n") + 1
        if end:
            lines = bytes(buf[:end]).split(b"\n")
            del buf[:end]
            yield [json.loads(x) for x in lines if x.strip()]

mode = sys.argv[1]
say(f"start {os.getpid()} {mode}")

if mode == "line":
    # --framing line echo; the frame CRASH makes it exit, and the starts
    # that follow exit at once until DOWN_SECONDS have passed.
    down_file, down_seconds = sys.argv[2], float(sys.argv[3])
    try:
        with open(down_file) as f:
            until = float(f.read())
    except (OSError, ValueError):
        until = 0.0
    if time.time() < until:
        say("down")
        sys.exit(1)
    say("up")
    for batch in batches():
        replies = []
        for m in batch:
            if m.get("op") != "frame":
                continue
            if m["data"] == "CRASH":
                out(replies)
                with open(down_file, "w") as f:
                    f.write(repr(time.time() + down_seconds))
                say("crashing")
                os._exit(1)
            replies.append(json.dumps({"op": "write", "id": m["id"], "data": m["data"]}) + "\n")
        if replies:
            out(replies)

elif mode == "sink":
    # raw mode: consume nothing, ever. Says "ready" once EXPECT clients have
    # shown it at least HOLD bytes.
    expect, hold = int(sys.argv[2]), int(sys.argv[3])
    held = {}
    full = 0
    said = False
    for batch in batches():
        replies = []
        for m in batch:
            op = m.get("op")
            if op == "data":
                cid = m["id"]
                before = held.get(cid, 0)
                held[cid] = now = before + len(m["data"])
                if before < hold <= now:
                    full += 1
                replies.append('{"op":"consumed","id":%d,"n":0}\n' % cid)
            elif op == "disconnect":
                if held.pop(m["id"], 0) >= hold:
                    full -= 1
        if replies:
            out(replies)
        if not said and full >= expect:
            say(f"ready {full}")
            said = True

elif mode == "block":
    # Reads its hello, then never reads stdin again.
    sys.stdin.buffer.readline()
    say("blocked")
    while True:
        time.sleep(3600)

else:
    sys.exit(f"unknown mode {mode}")
'''

BANNER = re.compile(r"tgate listening on (\S+):(\d+)\s*$")
EVENTS = {
    "start": re.compile(r"memfix: start "),
    "up": re.compile(r"memfix: up"),
    "down": re.compile(r"memfix: down"),
    "crashing": re.compile(r"memfix: crashing"),
    "ready": re.compile(r"memfix: ready"),
    "blocked": re.compile(r"memfix: blocked"),
    "restarting": re.compile(r"restarting in"),
    "max_clients": re.compile(r"at --max-clients"),
    "tgate_started": re.compile(r"handler started \(pid"),
}
FIXTURE_PID = re.compile(r"memfix: start (\d+) ")


class Aborted(Exception):
    """tgate was killed for passing --limit-mb, or died."""


@dataclass
class Tree:
    label: str
    src: Path


@dataclass
class Result:
    scenario: str
    params: str
    tree: str
    bound_mib: float
    held: int | None = None  # bytes the clients make tgate hold (for delta/held)
    cycles: int | None = None  # churn: cycles done (for delta/cycle)
    before_kib: int = 0
    peak_kib: int = 0
    restarts: int = 0
    aborted: bool = False
    error: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def delta_kib(self) -> int:
        return self.peak_kib - self.before_kib

    @property
    def ok(self) -> bool:
        return not self.aborted and self.error is None and self.delta_kib <= self.bound_mib * KIB


def read_status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None when the process is gone."""
    rss = hwm = -1
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        return None
    if rss < 0 or hwm < 0:
        return None  # a zombie has no memory lines
    return rss, hwm


class Gateway:
    """One tgate process: its stderr consumed by a thread, its RSS by another."""

    def __init__(
        self,
        tree: Tree,
        workdir: Path,
        handler: list[str],
        tgate_args: list[str],
        limit_kib: int,
        verbose: bool,
    ) -> None:
        handler_cmd = shlex.join([sys.executable, str(workdir / "fixture.py"), *handler])
        self.cmd = [
            sys.executable, "-m", "tgate", "--handler", handler_cmd, "--port", "0",
            "--host", "127.0.0.1", "--log-level", "info", "--shutdown-grace", "1", *tgate_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{tree.src / 'src'}:{tree.src / 'adapters' / 'python'}"
        self.fixture = str(workdir / "fixture.py")
        self.verbose = verbose
        self.limit_kib = limit_kib
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(EVENTS, 0)
        self.tail: deque[str] = deque(maxlen=40)
        self.handler_pids: set[int] = set()
        self.port = 0
        self.port_seen = threading.Event()
        self.aborted = False
        self.sampled_peak = 0
        self.last_rss = 0
        self.stopping = threading.Event()
        self.proc = subprocess.Popen(
            self.cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -------------------------------------------------------------- threads

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.verbose:
                print(f"    | {line}", file=sys.stderr, flush=True)
            with self.lock:
                self.tail.append(line)
                for name, pattern in EVENTS.items():
                    if pattern.search(line):
                        self.counts[name] += 1
                if m := FIXTURE_PID.search(line):
                    self.handler_pids.add(int(m.group(1)))
            if not self.port and (m := BANNER.search(line)):
                self.port = int(m.group(2))
                self.port_seen.set()
        self.port_seen.set()  # EOF: nobody waits forever

    def _sample(self) -> None:
        while not self.stopping.is_set():
            status = read_status(self.pid)
            if status is None:
                if self.proc.poll() is not None:
                    return
            else:
                rss = status[0]
                with self.lock:
                    self.last_rss = rss
                    self.sampled_peak = max(self.sampled_peak, rss)
                if rss > self.limit_kib and not self.aborted:
                    self.aborted = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self._kill_handlers()
                    return
            time.sleep(0.02)

    # -------------------------------------------------------------- queries

    def count(self, event: str) -> int:
        with self.lock:
            return self.counts[event]

    def alive(self) -> bool:
        return not self.aborted and self.proc.poll() is None

    async def wait_port(self, timeout: float) -> int:
        with trio.move_on_after(timeout):
            await trio.to_thread.run_sync(self.port_seen.wait, abandon_on_cancel=True)
        if not self.port:
            raise RuntimeError(f"no 'tgate listening on' banner: {self.last_lines(4)}")
        return self.port

    async def wait_event(self, event: str, n: int, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        while self.count(event) < n:
            if not self.alive():
                raise Aborted
            if trio.current_time() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {event!r} #{n}")
            await trio.sleep(0.02)

    def last_lines(self, n: int) -> str:
        """The last n meaningful lines of tgate's stderr (traceback frames skipped)."""
        with self.lock:
            lines = [x.strip(" |+-") for x in self.tail]
        return " / ".join([x for x in lines if x][-n:])

    def rss(self) -> int:
        status = read_status(self.pid)
        if status is None:
            raise Aborted
        return status[0]

    def reset_peak(self) -> None:
        """Start a new peak: VmHWM := VmRSS (Linux >= 4.0), and the sampler's too."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        with self.lock:
            self.sampled_peak = 0

    def peak(self) -> int:
        status = read_status(self.pid)
        with self.lock:
            sampled = max(self.sampled_peak, self.last_rss if status is None else 0)
        return sampled if status is None else max(sampled, status[0], status[1])

    # -------------------------------------------------------------- the end

    def _kill_handlers(self) -> None:
        """SIGKILL the fixture handlers this tgate started that are still alive."""
        with self.lock:
            pids = list(self.handler_pids)
        for pid in pids:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if self.fixture.encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.stopping.set()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._kill_handlers()
        self._reader.join(timeout=5)
        self._sampler.join(timeout=5)


# ------------------------------------------------------------------ clients


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def drain(stream: trio.SocketStream, got: list[int], idx: int, ended: list[int]) -> None:
    """Read and count everything a client receives until EOF or an error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while chunk := await stream.receive_some(1 << 16):
            got[idx] += len(chunk)
    ended[0] += 1


async def read_until(stream: trio.SocketStream, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            raise RuntimeError(f"tgate closed the connection before sending {marker!r}")
        seen = (seen + chunk)[-4096:]


async def send_quietly(stream: trio.SocketStream, data: bytes, failed: list[int]) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        failed[0] += 1


async def close_all(streams: list[trio.SocketStream]) -> None:
    for s in streams:
        with contextlib.suppress(Exception):
            await s.aclose()


# ------------------------------------------------------------------ scenarios

Runner = Callable[[Gateway, argparse.Namespace, Result], Awaitable[None]]


async def run_line_crash(gw: Gateway, args: argparse.Namespace, res: Result) -> None:
    port = await gw.wait_port(10)
    await gw.wait_event("up", 1, 10)
    ctl = await connect(port)
    clients = [await connect(port) for _ in range(args.crash_clients)]
    got = [0] * len(clients)
    failed = [0]
    ended = [0]
    try:
        async with trio.open_nursery() as nursery:
            for i, s in enumerate(clients):
                nursery.start_soon(drain, s, got, i, ended)
            await trio.sleep(0.5)
            res.before_kib = gw.rss()
            gw.reset_peak()
            await ctl.send_all(b"CRASH\n")
            await gw.wait_event("crashing", 1, 10)
            # Flood as soon as tgate has seen the handler die (its log line,
            # or the next handler's start if the log wording changed).
            deadline = trio.current_time() + 5
            while gw.count("restarting") < 1 and gw.count("start") < 2:
                if not gw.alive():
                    raise Aborted
                if trio.current_time() > deadline:
                    res.notes.append("no 'restarting in' line: flooded anyway")
                    break
                await trio.sleep(0.01)
            payload = b"\n" * args.line_bytes
            async with trio.open_nursery() as senders:
                for s in clients:
                    senders.start_soon(send_quietly, s, payload, failed)
            # Up again after the down window; then a frame after the flood,
            # from a new client (the others may have been quarantined).
            await gw.wait_event("up", 2, args.down + 30)
            sync = await connect(port)
            clients.append(sync)
            await sync.send_all(b"SYNC\n")
            await read_until(sync, b"SYNC\n")
            await trio.sleep(1.0)
            res.peak_kib = gw.peak()
            if ended[0]:
                res.notes.append(f"{ended[0]} of {args.crash_clients} clients disconnected by "
                                 "tgate (quarantined)")
            nursery.cancel_scope.cancel()
    finally:
        await close_all([ctl, *clients])
    res.notes.append(f"{sum(got)} of {args.crash_clients * args.line_bytes} newlines echoed "
                     "(frames are at most once across a crash)")
    if failed[0]:
        res.notes.append(f"{failed[0]} sends failed (client closed by tgate)")


async def run_line_up(gw: Gateway, args: argparse.Namespace, res: Result) -> None:
    port = await gw.wait_port(10)
    await gw.wait_event("up", 1, 10)
    s = await connect(port)
    try:
        await trio.sleep(0.5)
        res.before_kib = gw.rss()
        gw.reset_peak()
        got = [0]

        async def reader() -> None:
            while got[0] < args.line_bytes:
                chunk = await s.receive_some(1 << 16)
                if not chunk:
                    raise Aborted
                got[0] += len(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await s.send_all(b"\n" * args.line_bytes)
        await trio.sleep(0.5)
        res.peak_kib = gw.peak()
    finally:
        await close_all([s])


async def run_reload(gw: Gateway, args: argparse.Namespace, res: Result) -> None:
    port = await gw.wait_port(10)
    clients = [await connect(port) for _ in range(args.reload_clients)]
    failed = [0]
    try:
        payload = b"\0" * args.hold_bytes
        async with trio.open_nursery() as nursery:
            for s in clients:
                nursery.start_soon(send_quietly, s, payload, failed)
        await gw.wait_event("ready", 1, 60)
        await trio.sleep(0.5)
        res.before_kib = gw.rss()
        gw.reset_peak()
        os.kill(gw.pid, signal.SIGHUP)
        await gw.wait_event("ready", 2, 60)
        await trio.sleep(1.0)
        res.peak_kib = gw.peak()
    finally:
        await close_all(clients)
    if failed[0]:
        res.notes.append(f"{failed[0]} sends failed")


async def run_churn(gw: Gateway, args: argparse.Namespace, res: Result) -> None:
    port = await gw.wait_port(10)
    await gw.wait_event("blocked", 1, 10)
    await trio.sleep(0.5)
    res.before_kib = gw.rss()
    gw.reset_peak()
    linger = struct.pack("ii", 1, 0)
    todo = [args.churn_cycles]
    done = [0]
    stalled = [0]
    failed = [0]
    t0 = time.monotonic()
    # Leave time to measure before the scenario's own timeout.
    stop_at = trio.current_time() + max(5.0, args.timeout - 10)

    async def churner() -> None:
        while todo[0] > 0:
            if trio.current_time() > stop_at:
                res.notes.append(f"churn stopped at the time limit ({args.timeout - 10:g} s)")
                todo[0] = 0
                return
            todo[0] -= 1
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                with trio.move_on_after(2) as scope:
                    await sock.connect(("127.0.0.1", port))
                if not scope.cancelled_caught:
                    done[0] += 1
                else:
                    # Loopback connects only stall when the listen backlog is
                    # full: tgate is not accepting. One stall per churner and
                    # the churn is over.
                    stalled[0] += 1
                    if stalled[0] >= args.churners:
                        todo[0] = 0
            except OSError:
                failed[0] += 1
                if not gw.alive():
                    raise Aborted from None
            finally:
                sock.close()  # SO_LINGER 0: RST

    async with trio.open_nursery() as nursery:
        for _ in range(args.churners):
            nursery.start_soon(churner)
    elapsed = time.monotonic() - t0
    await trio.sleep(2.0)  # let tgate accept and reap the backlog
    res.peak_kib = gw.peak()
    res.cycles = done[0]
    with contextlib.suppress(OSError):
        sockets = sum(1 for fd in Path(f"/proc/{gw.pid}/fd").iterdir()
                      if os.readlink(fd).startswith("socket:"))
        res.notes.append(f"tgate holds {sockets} sockets 2 s after the churn")
    res.notes.append(f"{done[0]} cycles in {elapsed:.1f} s ({done[0] / elapsed:.0f}/s)")
    if stalled[0]:
        why = " (tgate logged: at --max-clients)" if gw.count("max_clients") else ""
        res.notes.append(f"churn stopped: {stalled[0]} connects stalled > 2 s, i.e. tgate "
                         f"stopped accepting{why}")
    if failed[0]:
        res.notes.append(f"{failed[0]} connects failed")
        if failed[0] > args.churn_cycles // 10:
            res.error = f"{failed[0]} of {args.churn_cycles} connects failed"


@dataclass
class Scenario:
    name: str
    params: Callable[[argparse.Namespace], str]
    handler: Callable[[argparse.Namespace, Path], list[str]]
    tgate_args: list[str]
    bound_mib: float
    held: Callable[[argparse.Namespace], int | None]
    run: Runner


SCENARIOS = [
    Scenario(
        "line-crash",
        lambda a: (f"--framing line; {a.crash_clients} clients x {a.line_bytes} B of \\n "
                   f"while the handler crashes, down {a.down:g} s"),
        lambda a, d: ["line", str(d / "down"), str(a.down)],
        ["--framing", "line"],
        64,
        lambda a: a.crash_clients * a.line_bytes,
        run_line_crash,
    ),
    Scenario(
        "line-up",
        lambda a: f"--framing line; 1 client x {a.line_bytes} B of \\n, echo handler up",
        lambda a, d: ["line", str(d / "down"), "0"],
        ["--framing", "line"],
        16,
        lambda a: a.line_bytes,
        run_line_up,
    ),
    Scenario(
        "reload",
        lambda a: (f"raw; {a.reload_clients} clients x {a.hold_bytes} B of NUL unconsumed, "
                   "SIGHUP"),
        lambda a, d: ["sink", str(a.reload_clients), str(a.hold_bytes)],
        [],
        64,
        lambda a: a.reload_clients * a.hold_bytes,
        run_reload,
    ),
    Scenario(
        "churn",
        lambda a: (f"raw; {a.churn_cycles} connect+RST cycles ({a.churners} at a time), "
                   "handler not reading stdin"),
        lambda a, d: ["block"],
        [],
        16,
        lambda a: None,
        run_churn,
    ),
]


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


async def run_scenario(
    sc: Scenario, tree: Tree, args: argparse.Namespace, workdir: Path
) -> Result:
    bound = args.bound_mb if args.bound_mb is not None else sc.bound_mib
    res = Result(sc.name, sc.params(args), tree.label, bound, held=sc.held(args))
    (workdir / "down").unlink(missing_ok=True)
    gw = Gateway(tree, workdir, sc.handler(args, workdir), sc.tgate_args,
                 int(args.limit_mb * KIB), args.verbose)
    t0 = time.monotonic()
    print(f"  {sc.name} [{tree.label}] ...", end="", file=sys.stderr, flush=True)
    try:
        with trio.move_on_after(args.timeout) as scope:
            await sc.run(gw, args, res)
        if scope.cancelled_caught:
            res.error = f"timed out after {args.timeout:g} s"
    except Exception as exc:  # reported in the table; the run goes on
        if not gw.alive():
            res.error = f"tgate exited ({gw.proc.poll()}): {gw.last_lines(2)}"
        else:
            first = leaves(exc)[0]
            res.error = f"{type(first).__name__}: {first}"
    if gw.aborted:
        res.aborted = True
        res.error = None
        res.peak_kib = max(res.peak_kib, gw.peak())
    elif res.error and not res.peak_kib:
        res.peak_kib = gw.peak()
    # The handler's own "start" line, or tgate's log line when tgate was too
    # busy to relay the handler's stderr.
    res.restarts = max(0, gw.count("start") - 1, gw.count("tgate_started") - 1)
    res.seconds = time.monotonic() - t0
    gw.stop()
    if res.error:
        res.notes.append(f"tgate stderr tail: {gw.last_lines(4)}")
    print(f" {res.seconds:.1f} s", file=sys.stderr, flush=True)
    return res


# ------------------------------------------------------------------ report


def mib(kib: int) -> str:
    return f"{kib / KIB:.1f} MiB"


def peak_text(r: Result, limit_mb: float) -> str:
    return f"> {limit_mb:g} MiB (killed)" if r.aborted else mib(r.peak_kib)


def delta_text(r: Result, limit_mb: float) -> str:
    if r.aborted:
        return f"> +{limit_mb - r.before_kib / KIB:.1f} MiB"
    return f"{r.delta_kib / KIB:+.1f} MiB"


def ratio_text(r: Result) -> str:
    if r.aborted:
        if r.held:
            return f"> {r.delta_kib * KIB / r.held:.0f}x"
        return "-"
    if r.held:
        return f"{r.delta_kib * KIB / r.held:.2f}x of {r.held / MIB:.2f} MiB"
    if r.cycles:
        return f"{r.delta_kib * KIB / r.cycles:.0f} B/cycle"
    return "-"


def verdict(r: Result) -> str:
    if r.aborted:
        return f"FAIL (> limit; bound {r.bound_mib:g} MiB)"
    if r.error:
        return "ERROR"
    word = "PASS" if r.ok else "FAIL"
    return f"{word} ({r.delta_kib / KIB:.1f} {'<=' if r.ok else '>'} {r.bound_mib:g} MiB)"


def print_table(results: list[Result], limit_mb: float) -> None:
    print("| scenario | parameters | tree | RSS before | peak RSS | delta | delta/held "
          "| handler restarts | verdict |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r.scenario} | {r.params} | {r.tree} | {mib(r.before_kib)} "
              f"| {peak_text(r, limit_mb)} | {delta_text(r, limit_mb)} | {ratio_text(r)} "
              f"| {r.restarts} | {verdict(r)} |")
    print()
    for r in results:
        extra = [f"{r.seconds:.1f} s", *r.notes]
        if r.error:
            extra.insert(0, f"error: {r.error}")
        print(f"- {r.scenario} [{r.tree}]: " + "; ".join(extra))


def print_compare(results: list[Result], labels: tuple[str, str], limit_mb: float) -> None:
    cur, old = labels
    print()
    print(f"| scenario | {cur}: peak (delta) | {old}: peak (delta) "
          f"| delta {old}/{cur} | peak {old}/{cur} |")
    print("|---|---:|---:|---:|---:|")
    by = {(r.scenario, r.tree): r for r in results}
    for name in dict.fromkeys(r.scenario for r in results):
        a, b = by.get((name, cur)), by.get((name, old))
        if a is None or b is None:
            continue
        floor = 1024  # KiB: a delta under 1 MiB counts as 1 MiB in the ratio
        bound = ">" if b.aborted else ""
        d_ratio = f"{bound}{max(b.delta_kib, floor) / max(a.delta_kib, floor):.1f}x"
        p_ratio = f"{bound}{b.peak_kib / max(a.peak_kib, 1):.1f}x"
        print(f"| {name} | {peak_text(a, limit_mb)} ({delta_text(a, limit_mb)}) "
              f"| {peak_text(b, limit_mb)} ({delta_text(b, limit_mb)}) | {d_ratio} | {p_ratio} |")
    print(f"\n(delta ratios count a delta under 1 MiB as 1 MiB; '>' = {old} was killed at the "
          "limit, so its true figure is larger)")


def machine() -> str:
    mem = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            mem[key] = int(rest.split()[0])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores ({model}), RAM {mem.get('MemTotal', 0) / MIB:.1f} GiB, "
            f"{mem.get('MemAvailable', 0) / MIB:.1f} GiB available, load "
            f"{os.getloadavg()[0]:.2f}; {platform.platform()}; Python {platform.python_version()}")


def git_state(src: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10)
        n = len(dirty.stdout.splitlines())
        return f"git {head.stdout.strip()}" + (f", {n} changed files under src/" if n else "")
    except (OSError, subprocess.SubprocessError):
        return "git unavailable"


# ------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    assert __doc__ is not None
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--tgate-src", type=Path, default=REPO,
                    help="tree to test: runs DIR/src/tgate with DIR/adapters/python")
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="also run every scenario against this tree and print both")
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                    help="comma-separated subset of " + ", ".join(s.name for s in SCENARIOS))
    ap.add_argument("--crash-clients", type=int, default=30)
    ap.add_argument("--line-bytes", type=int, default=65536,
                    help="bytes of b'\\n' per client in line-crash and line-up")
    ap.add_argument("--down", type=float, default=2.0,
                    help="line-crash: seconds the handler stays down after the crash")
    ap.add_argument("--reload-clients", type=int, default=400)
    ap.add_argument("--hold-bytes", type=int, default=65535,
                    help="reload: unconsumed bytes per client (< --max-bufsize 65536)")
    ap.add_argument("--churn-cycles", type=int, default=50_000)
    ap.add_argument("--churners", type=int, default=4, help="churn: concurrent cycles")
    ap.add_argument("--bound-mb", type=float, default=None,
                    help="bound on the RSS delta for every scenario, MiB "
                    "(default: per scenario, shown in the table)")
    ap.add_argument("--limit-mb", type=float, default=2048,
                    help="kill tgate if its RSS passes this (MiB)")
    ap.add_argument("--timeout", type=float, default=60,
                    help="seconds per scenario run before it is abandoned")
    ap.add_argument("--verbose", action="store_true", help="echo tgate's stderr")
    args = ap.parse_args()
    names = [s.name for s in SCENARIOS]
    args.selected = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    for n in args.selected:
        if n not in names:
            ap.error(f"unknown scenario {n!r} (know: {', '.join(names)})")
    for tree in (args.tgate_src, args.compare):
        if tree is not None and not (tree / "src" / "tgate" / "__main__.py").is_file():
            ap.error(f"{tree} has no src/tgate/__main__.py")
    return args


async def amain(args: argparse.Namespace) -> int:
    trees = [Tree("current", args.tgate_src.resolve())]
    if args.compare is not None:
        trees.append(Tree("before", args.compare.resolve()))
    print(f"machine: {machine()}")
    for t in trees:
        print(f"tree {t.label}: {t.src} ({git_state(t.src)})")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    results: list[Result] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tgate-memory-") as tmp:
        workdir = Path(tmp)
        (workdir / "fixture.py").write_text(FIXTURE)
        print("tgate commands (handler = a fixture written to a temp dir):")
        for sc in SCENARIOS:
            if sc.name not in args.selected:
                continue
            handler = " ".join(["python", "$TMP/fixture.py", *sc.handler(args, Path("$TMP"))])
            print(f'  {sc.name}: python -m tgate --handler "{handler}" --port 0 '
                  f"--log-level info --shutdown-grace 1 {shlex.join(sc.tgate_args)}".rstrip())
        print(flush=True)
        for sc in SCENARIOS:
            if sc.name not in args.selected:
                continue
            for t in trees:
                results.append(await run_scenario(sc, t, args, workdir))
    print(f"\ntotal {time.monotonic() - t0:.0f} s\n")
    print_table(results, args.limit_mb)
    if len(trees) == 2:
        print_compare(results, (trees[0].label, trees[1].label), args.limit_mb)
    bad = [r for r in results if r.tree == trees[0].label and not r.ok]
    if bad:
        print(f"\n{len(bad)} scenario(s) on {trees[0].label} exceeded their bound or failed: "
              + ", ".join(r.scenario for r in bad))
        return 1
    print(f"\nevery scenario on {trees[0].label} within its bound")
    return 0


def main() -> None:
    args = parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(trio.run(amain, args))


if __name__ == "__main__":
    main()
