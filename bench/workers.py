"""tgate's worker-pool benchmark (issue 12): one command, one table of ratios.

    python bench/workers.py              # 5 s per run, 3 repeats (~4 min)
    python bench/workers.py --quick      # 2 s per run, 1 repeat (~1 min)
    python bench/workers.py --rows cpu-py,chat --json out.json

Each row runs against tgate with one worker and with more (`--workers 2` or
`--workers auto`), interleaved repeat by repeat:

    cpu-py        bench/cpu_handler.py: ~0.5 ms of pure Python work per request,
                  then echo; loadgen closed loop, 50 connections; 1 vs 2 workers
    cpu-node      bench/cpu_handler.js: the same in Node; 1 vs 2 workers
    echo-closed   examples/echo.py, loadgen closed loop, 50 connections; 1 vs auto
    echo-pipe     examples/echo.py, loadgen pipelined, 50 x 16 in flight; 1 vs auto
    chat          examples/chat.py, 200 connected clients; 16 of them send lines
                  in a closed loop (the next line once the last one reached all
                  199 others); messages delivered per second; 1 vs 2 workers

The CPU handlers' loop count is calibrated once, at start, for 0.5 ms
(`--work-ms`), and passed to every handler process, so every configuration
does the same work per request. Each cell runs --repeat times; the median run
by rate is reported, and a cell with any failed or erroring repeat (errors,
stalls, a lost or duplicated chat message) fails its goal. Goals: PASS, FAIL,
or SKIP when a cell was not run (e.g. this tgate has no --workers yet); exit
status 1 when a goal FAILs. It reuses bench/run.py's process handling and
loadgen runner; server logs go to bench/build/logs/workers-*.log, raw
results to bench/build/workers-last-run.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _load_run() -> ModuleType:
    """bench/run.py as a module (its helpers: Server, run_loadgen, verdicts)."""
    name = "tgate_bench_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = _load_run()
Result = run.Result
PY = run.PY
NODE = shutil.which("node") or "node"


@dataclass(frozen=True)
class Case:
    name: str
    handler: str          # key of handler_command()
    more: str             # the --workers value compared with 1: "2" or "auto"
    row: Any = None       # a bench/run.py Row for loadgen rows; None for chat
    goal: float | None = None  # PASS when more/1 >= goal (None: report only)

    @property
    def unit(self) -> str:
        return "msg/s" if self.row is None else self.row.unit

    def describe(self, senders: int = 0) -> str:
        if self.row is None:
            return (f"{CHAT_CLIENTS} clients on examples/chat.py, {senders or CHAT_SENDERS} of "
                    "them send "
                    f"{CHAT_LINE_LEN}-byte lines in a closed loop (next line once the last one "
                    f"reached all {CHAT_CLIENTS - 1} others); rate = messages delivered/s")
        return f"{self.handler}, {self.row.describe()}"


CASES = [
    Case("cpu-py", "cpu-py", "2", run.Row("closed-50", "closed", 50), 1.8),
    Case("cpu-node", "cpu-node", "2", run.Row("closed-50", "closed", 50), 1.8),
    Case("echo-closed", "echo", "auto", run.Row("closed-50", "closed", 50), 1.0),
    Case("echo-pipe", "echo", "auto", run.Row("pipelined-50", "pipelined", 50, 16), 1.0),
    Case("chat", "chat", "2"),
]
HANDLER_LABELS = {"cpu-py": "bench/cpu_handler.py", "cpu-node": "bench/cpu_handler.js",
                  "echo": "examples/echo.py", "chat": "examples/chat.py"}
CHAT_CLIENTS = 200
CHAT_SENDERS = 16
CHAT_LINE_LEN = 24  # bytes a sender sends per line, newline included
#: a chat line not delivered to everyone this long after it was sent is a stall
STALL_MS = 1000.0


# ---------------------------------------------------------------- servers


def has_workers() -> bool:
    """Whether this tgate has --workers (its --help lists it)."""
    out = subprocess.run([PY, "-m", "tgate", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=30)
    return "--workers" in out.stdout


def calibrate(kind: str, work_ms: float) -> int:
    cmd = ([PY, str(BENCH / "cpu_handler.py")] if kind == "cpu-py"
           else [NODE, str(BENCH / "cpu_handler.js")])
    out = subprocess.run([*cmd, "--calibrate", "--work-ms", f"{work_ms:g}"], capture_output=True,
                         text=True, check=True, timeout=60, cwd=REPO)
    return int(out.stdout.strip())


class WorkersServer(run.Server):
    """tgate with one handler command and a --workers value ('' = option left out)."""

    def __init__(self, name: str, handler_cmd: str, workers: str) -> None:
        super().__init__(name)
        self.log_path = run.LOGS / f"workers-{name}.log"
        self.handler_cmd = handler_cmd
        self.workers = workers

    def command(self, port: int | str = 0) -> list[str]:
        workers = ["--workers", self.workers] if self.workers else []
        return [PY, "-m", "tgate", "--port", "0", *workers, "--handler", self.handler_cmd]

    def cpu(self) -> tuple[float, float]:
        """run.Server.cpu(), also remembering each descendant's CPU seconds:
        bench/run.py calls it at the start and the end of the measured window."""
        if self.proc is not None:
            self.snaps = [*getattr(self, "snaps", [])[-1:],
                          {p: run.proc_cpu_s(p) for p in run.descendants(self.proc.pid)}]
        return super().cpu()

    def handler_split(self, seconds: float) -> list[float]:
        """% of one core of each process under tgate (the handlers; the
        guardian and other idle helpers, under 0.5%, left out) between the
        last two cpu() calls, busiest first."""
        snaps = getattr(self, "snaps", [])
        if len(snaps) < 2 or seconds <= 0:
            return []
        a, b = snaps[-2], snaps[-1]
        pct = [100 * (b[p] - a[p]) / seconds for p in b if p in a]
        return sorted((x for x in pct if x >= 0.5), reverse=True)


def handler_command(handler: str, iterations: dict[str, int]) -> str:
    q = shlex.quote
    if handler == "cpu-py":
        return f"{q(PY)} {q(str(BENCH / 'cpu_handler.py'))} --iterations {iterations['cpu-py']}"
    if handler == "cpu-node":
        return f"{q(NODE)} {q(str(BENCH / 'cpu_handler.js'))} --iterations {iterations['cpu-node']}"
    if handler in ("echo", "chat"):
        return f"{q(PY)} {q(str(REPO / 'examples' / (handler + '.py')))}"
    raise ValueError(handler)


def machine_busy(seconds: float) -> float:
    """% of one core the whole machine was busy over the next `seconds`."""
    m0 = run.machine_cpu()
    time.sleep(seconds)
    m1 = run.machine_cpu()
    return 100 * (os.cpu_count() or 1) * (m1[0] - m0[0]) / max(1.0, m1[2] - m0[2])


def wait_idle(timeout: float) -> float:
    """Wait (up to `timeout` s) until the machine is idle; return the last busy %."""
    deadline = time.monotonic() + timeout
    busy = machine_busy(0.5)
    while busy > run.NOISE_PCT and time.monotonic() < deadline:
        busy = machine_busy(0.5)
    return busy


def handler_us(r: Any) -> float:
    """CPU the handlers spent per request, µs (0 when unknown)."""
    return 1e4 * r.children_cpu_pct / r.rate if r.ok and r.rate else 0.0


def speed_drift(case: Case, runs: Runs) -> str:
    """For a CPU-bound row: a problem line when the handlers' CPU per request
    (a fixed loop count) varied by more than 20% between runs: the machine's
    CPU speed drifted (a VM's neighbours), and the ratio is less reliable."""
    if not case.handler.startswith("cpu"):
        return ""
    us = [handler_us(r) for w in ("1", case.more) for r in runs.get((case.name, w), [])]
    us = [x for x in us if x > 0]
    if len(us) < 2 or max(us) <= 1.2 * min(us):
        return ""
    return (f"{case.name}: the CPU speed drifted during the row: the same work took "
            f"{min(us):.0f}-{max(us):.0f} µs of handler CPU per request across its runs")


def workers_count(value: str) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def uneven_split(split: list[float], n: int) -> str:
    """A problem line when n busy handler processes did unequal shares of the
    work (the least busy under 2/3 of the busiest), or fewer than n worked."""
    if n < 2 or sum(split) < 20:
        return ""  # idle handlers (e.g. chat): nothing to compare
    top = split[:n]
    shares = " + ".join(f"{x:.0f}%" for x in top)
    if len(top) < n:
        return f"only {len(top)} of {n} handler processes used CPU ({shares} of a core)"
    if top[-1] < top[0] * 2 / 3:
        return f"uneven work across workers: {shares} of a core"
    return ""


# ---------------------------------------------------------------- chat load


class ChatLoad:
    """CHAT_CLIENTS connections to a chat server; CHAT_SENDERS of them send
    lines in a closed loop. A sender's line carries its token (b"S07q...");
    every receiver counts the tokens in its complete lines, so a sender knows
    when its line has reached all the others."""

    def __init__(self, port: int, clients: int, senders: int) -> None:
        self.port = port
        self.n = clients
        self.k = senders
        self.others = clients - 1
        self.socks: list[socket.socket] = []
        self.ep = select.epoll()
        self.rem: dict[int, bytes] = {}
        self.tokens = [b"S%02dq" % i for i in range(senders)]
        self.got = [0] * senders         # copies of sender i's lines received
        self.sent = [0] * senders        # lines sender i sent
        self.t_sent = [0.0] * senders    # when its line in flight was sent
        self.latencies: list[float] = []  # seconds, send -> last copy received
        self.record = False
        self.sending = False
        self.probe: bytes | None = None
        self.probe_got = 0

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(self.n):
            s = socket.create_connection(("127.0.0.1", self.port),
                                         timeout=max(0.1, deadline - time.monotonic()))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.socks.append(s)
            self.rem[s.fileno()] = b""
            self.ep.register(s.fileno(), select.EPOLLIN)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.ep.close()

    def pump(self, timeout: float) -> int:
        """One epoll round: read every ready socket, count tokens. Returns bytes read."""
        nread = 0
        tokens, got, rem, probe = self.tokens, self.got, self.rem, self.probe
        for fd, _ in self.ep.poll(timeout):
            try:
                chunk = os.read(fd, 262144)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                raise ConnectionError("the server closed a chat client")
            nread += len(chunk)
            data = rem[fd] + chunk if rem[fd] else chunk
            end = data.rfind(b"\n") + 1
            rem[fd] = data[end:]
            if not end:
                continue
            if end != len(data):
                data = data[:end]
            for i, tok in enumerate(tokens):
                c = data.count(tok)
                if c:
                    got[i] += c
            if probe is not None:
                self.probe_got += data.count(probe)
        if self.sending:
            self._send_ready()
        return nread

    def _send_ready(self) -> None:
        now = time.monotonic()
        for i in range(self.k):
            if self.got[i] >= self.sent[i] * self.others:
                if self.sent[i] and self.record:
                    self.latencies.append(now - self.t_sent[i])
                self._send(i, self.tokens[i] + b"%08d" % self.sent[i])
                self.sent[i] += 1
                self.t_sent[i] = now

    def _send(self, i: int, payload: bytes) -> None:
        line = payload.ljust(CHAT_LINE_LEN - 1, b".") + b"\n"
        if self.socks[i].send(line) != len(line):
            raise ConnectionError("a chat sender's socket buffer is full")

    def settle(self, quiet: float, timeout: float) -> bool:
        """Read until nothing arrived for `quiet` seconds (at most `timeout`)."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            if self.pump(0.05):
                last = time.monotonic()
            elif time.monotonic() - last >= quiet:
                return True
        return False

    def ramp(self, timeout: float) -> int:
        """Probe lines from client 0 until one reaches all the others (every
        client is subscribed). Returns how many others the last probe missed."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            self.probe = b"P%04dp" % attempt
            self.probe_got = 0
            self._send(0, self.probe)
            until = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < until and self.probe_got < self.others:
                self.pump(0.05)
            if self.probe_got >= self.others:
                self.settle(0.2, 2.0)  # duplicates would show up here
                missing = 0 if self.probe_got == self.others else -1
                self.probe = None
                return missing
            attempt += 1
        missing = self.others - self.probe_got
        self.probe = None
        return missing

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.05))

    def oldest_inflight(self) -> float:
        now = time.monotonic()
        return max((now - self.t_sent[i] for i in range(self.k)
                    if self.got[i] < self.sent[i] * self.others), default=0.0)


def run_chat(server: Any, case: Case, args: argparse.Namespace) -> Any:
    """One chat run against `server`, as a bench/run.py Result (rate: messages
    delivered per second; latency: a line's send to its last copy)."""
    res = Result(case.name, server.name, ok=False)
    log_offset = server.log_size()
    senders = getattr(args, "chat_senders", CHAT_SENDERS)
    load = ChatLoad(server.port, CHAT_CLIENTS, senders)
    data: dict[str, Any] = {"mode": "chat", "connections": CHAT_CLIENTS,
                            "senders": senders, "requests": 0, "errors": 0}
    try:
        load.connect(args.ramp_timeout)
        load.settle(0.5, args.ramp_timeout)  # the "joined" lines
        missing = load.ramp(min(args.ramp_timeout, 10.0))
        if missing:
            data["ramp_missing"] = max(missing, 0)
            res.note = (f"a probe line reached {load.probe_got} of {load.others} other "
                        "clients" + (" (duplicates)" if missing < 0 else ""))
            res.data = data
            return res
        load.sending = True
        load._send_ready()
        load.run_for(args.warmup)
        got0, t0 = sum(load.got), time.monotonic()
        cpu0, m0, r0 = server.cpu(), run.machine_cpu(), resource.getrusage(resource.RUSAGE_SELF)
        load.record = True
        load.run_for(args.duration)
        load.record = False
        got1, t1 = sum(load.got), time.monotonic()
        cpu1, m1, r1 = server.cpu(), run.machine_cpu(), resource.getrusage(resource.RUSAGE_SELF)
        stalled = load.oldest_inflight()
        load.sending = False
        # let the lines in flight arrive, then check every copy came exactly once
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and load.oldest_inflight() > 0:
            load.pump(0.05)
        load.settle(0.2, 2.0)
        expected = [s * load.others for s in load.sent]
        lost = sum(max(0, e - g) for e, g in zip(expected, load.got, strict=True))
        dup = sum(max(0, g - e) for e, g in zip(expected, load.got, strict=True))
        secs = t1 - t0
        lat = sorted(load.latencies)
        data.update({
            "requests": got1 - got0, "seconds": secs, "rps": (got1 - got0) / secs,
            "lines": len(lat), "lines_per_s": len(lat) / secs,
            "p50_us": 1e6 * lat[(len(lat) - 1) // 2] if lat else 0.0,
            "p99_us": 1e6 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0,
            "max_us": 1e6 * lat[-1] if lat else 0.0,
            "errors": lost + dup, "lost": lost, "duplicated": dup,
            "oldest_inflight_ms": 1000 * max(stalled, lat[-1] if lat else 0.0),
            "cpu_pct": 100 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / secs,
        })
        if lost or dup:
            res.note = f"{lost} message(s) lost, {dup} duplicated"
        res.data = data
        res.ok = data["requests"] > 0
        if not res.ok:
            res.note = res.note or "no message delivered"
        res.server_cpu_pct = 100 * (cpu1[0] - cpu0[0]) / secs
        res.children_cpu_pct = 100 * (cpu1[1] - cpu0[1]) / secs
        ncpu = os.cpu_count() or 1
        if m1[2] > m0[2]:
            res.machine_busy_pct = 100 * ncpu * (m1[0] - m0[0]) / (m1[2] - m0[2])
            res.irq_pct = 100 * ncpu * (m1[1] - m0[1]) / (m1[2] - m0[2])
        res.other_pct = max(0.0, res.machine_busy_pct - res.irq_pct - data["cpu_pct"]
                            - res.server_cpu_pct - res.children_cpu_pct)
    except (OSError, ConnectionError) as exc:
        res.note = f"chat client: {exc}"
        res.data = data
    finally:
        load.close()
        res.log = server.log_since(log_offset)
    return res


# ---------------------------------------------------------------- verdicts
#
# Pure functions of the recorded runs, keyed (case name, "1" or the case's
# `more`): a cell with any failed or erroring repeat fails its goal, a cell
# not run at all makes it SKIP.

Runs = dict[tuple[str, str], list[Any]]
Verdict = tuple[str, str, str]


def cell(runs: Runs, key: tuple[str, str]) -> tuple[Any, str]:
    """(median clean run, '') or (None, 'FAIL(...)') or (None, 'missing')."""
    results = runs.get(key, [])
    if not results:
        return None, "missing"
    bad = run.cell_verdict(results)
    if bad:
        return None, bad
    return run.median_run(results), ""


def goal_name(case: Case, number: str) -> str:
    if case.goal is None:
        return (f"{number}. {case.name}: every message delivered exactly once, no stall, "
                f"with 1 and {case.more} workers (rate reported, no goal)")
    return (f"{number}. {case.name} ({HANDLER_LABELS[case.handler]}, {case.row.name}): "
            f"--workers {case.more} >= {case.goal:g}x --workers 1")


def goals(runs: Runs, cases: list[Case] = CASES) -> list[Verdict]:
    out: list[Verdict] = []
    for n, case in enumerate(cases, 1):
        name = goal_name(case, str(n))
        keys = [(case.name, "1"), (case.name, case.more)]
        got = [cell(runs, k) for k in keys]
        failed = [f"--workers {k[1]} {why}" for k, (_, why) in zip(keys, got, strict=True)
                  if why not in ("", "missing")]
        missing = [f"--workers {k[1]}" for k, (_, why) in zip(keys, got, strict=True)
                   if why == "missing"]
        if failed:
            out.append((name, "FAIL", "every repeat must be clean: " + "; ".join(failed)))
            continue
        if missing:
            out.append((name, "SKIP", "not measured: " + ", ".join(missing)))
            continue
        one, more = got[0][0], got[1][0]
        r = more.rate / one.rate if one.rate else 0.0
        passed = case.goal is None or r >= case.goal
        digits = 3 if not passed and round(r, 2) >= (case.goal or 0) else 2
        detail = (f"{run.fmt_rate(more.rate)} vs {run.fmt_rate(one.rate)} {case.unit} "
                  f"= {r:.{digits}f}x")
        out.append((name, "PASS" if passed else "FAIL", detail))
    return out


exit_status = run.exit_status


# ---------------------------------------------------------------- reporting


def print_table(cases: list[Case], runs: Runs, workers_ok: bool) -> None:
    print("| row | metric | --workers 1 | more workers | ratio | goal |")
    print("|---|---|---:|---:|---:|---|")
    for case in cases:
        cells = {}
        for w in ("1", case.more):
            results = runs.get((case.name, w), [])
            cells[w] = (run.median_run(results) if results else None,
                        run.cell_verdict(results) if results else "")
        one, more = cells["1"][0], cells[case.more][0]
        goal = f">= {case.goal:g}x" if case.goal is not None else "report"
        for metric in ("rate", "p50", "p99"):
            texts = []
            vals = []
            for w in ("1", case.more):
                r, verdict = cells[w]
                if r is None:
                    texts.append("not run" if metric == "rate" and w != "1" and not workers_ok
                                 else "")
                    vals.append(0.0)
                    continue
                if not r.ok:
                    texts.append(f"⚠ {verdict}" if metric == "rate" else "")
                    vals.append(0.0)
                    continue
                v = r.rate if metric == "rate" else r.data.get(f"{metric}_us", 0.0)
                vals.append(v)
                t = run.fmt_rate(v) if metric == "rate" else run.fmt_us(v)
                if metric == "rate" and verdict:
                    t += f" ⚠ {verdict}"
                texts.append(t)
            rtxt = run.ratio(vals[1], vals[0]) if one is not None and more is not None else "-"
            if metric == "rate":
                label, name = case.unit, f"**{case.name}** ({case.more})"
            else:
                what = "fan-out" if case.row is None else "latency"
                label, name, goal = f"{metric} {what}", "", ""
            print(f"| {name} | {label} | {texts[0]} | {texts[1]} | {rtxt} | {goal} |")


def print_cpu_table(cases: list[Case], runs: Runs) -> None:
    print("| row | --workers 1 | more workers |")
    print("|---|---:|---:|")
    for case in cases:
        cells = []
        for w in ("1", case.more):
            results = runs.get((case.name, w), [])
            r = run.median_run(results) if results else None
            if r is None or not r.data:
                cells.append("")
                continue
            gen = "client" if case.row is None else "loadgen"
            split = r.data.get("handler_pcts") or []
            each = f" ({' + '.join(f'{x:.0f}' for x in split)})" if len(split) > 1 else ""
            lg = r.data.get("cpu_pct", 0.0)
            warn = " (load-bound!)" if lg > 90 else ""
            cells.append(f"{gen} {lg:.0f}%{warn}; tgate "
                         f"{r.server_cpu_pct:.0f}% + handlers {r.children_cpu_pct:.0f}%{each}; "
                         f"machine {r.machine_busy_pct:.0f}% (irq {r.irq_pct:.0f}%, "
                         f"other {r.other_pct:.0f}%)")
        print(f"| {case.name} ({case.more}) | " + " | ".join(cells) + " |")


def cost_lines(cases: list[Case], runs: Runs) -> list[str]:
    ncpu = os.cpu_count() or 1
    out = []
    for case in cases:
        parts = []
        best = {}
        for w in ("1", case.more):
            results = runs.get((case.name, w), [])
            r = run.median_run(results) if results else None
            if r is None or not r.ok or not r.rate:
                continue
            best[w] = r
            parts.append(f"--workers {w}: tgate {1e4 * r.server_cpu_pct / r.rate:.1f} / "
                         f"handlers {1e4 * r.children_cpu_pct / r.rate:.1f}")
        if case.handler.startswith("cpu") and len(best) == 2:
            one, more = best["1"], best[case.more]
            left = (100 * ncpu - more.server_cpu_pct - more.data.get("cpu_pct", 0.0)
                    - more.irq_pct)
            parts.append(f"with {case.more} workers the rest left the handlers at most "
                         f"{left:.0f}% of a core (one worker: at most 100%; it used "
                         f"{one.children_cpu_pct:.0f}%)")
        if parts:
            out.append(f"{case.name}: " + "; ".join(parts))
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="duration 2 s, repeat 1, warmup 0.5 s")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (5)")
    p.add_argument("--repeat", type=int, default=None, help="runs per cell; median kept (3)")
    p.add_argument("--warmup", type=float, default=None, help="warmup seconds per run (1)")
    p.add_argument("--ramp-timeout", type=float, default=30.0,
                   help="max seconds to open all connections and get a first reply each")
    p.add_argument("--work-ms", type=float, default=0.5,
                   help="CPU handlers' work per request, calibrated at start (0.5 ms)")
    p.add_argument("--chat-senders", type=int, default=CHAT_SENDERS,
                   help=f"chat clients that send, of {CHAT_CLIENTS} ({CHAT_SENDERS})")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for the machine to be idle "
                   f"(under {run.NOISE_PCT:g}%% of a core busy); default 0: do not wait")
    p.add_argument("--rows", default=",".join(c.name for c in CASES),
                   help="comma-separated subset of: " + ", ".join(c.name for c in CASES))
    p.add_argument("--json", metavar="PATH", help="also write raw results here")
    args = p.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.rows.split(",") if n and n not in by_name]
    if unknown:
        p.error(f"unknown row(s): {', '.join(unknown)}")
    cases = [c for c in CASES if c.name in args.rows.split(",")]
    if not 1 <= args.chat_senders < CHAT_CLIENTS:
        p.error(f"--chat-senders must be 1 to {CHAT_CLIENTS - 1}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, run._on_term)
    signal.signal(signal.SIGHUP, run._on_term)
    started_at = time.monotonic()
    run.build_loadgen()
    workers_ok = has_workers()
    iterations = {k: calibrate(k, args.work_ms) for k in ("cpu-py", "cpu-node")
                  if any(c.handler == k for c in cases)}

    print("# tgate workers benchmark (issue 12)")
    print()
    print("Command: `python bench/workers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
          + f"` (duration {args.duration:g} s, warmup {args.warmup:g} s, "
          f"repeat {args.repeat}, median run by rate)")
    print()
    print("## Machine")
    print()
    for line in run.machine_info():
        print(f"- {line}")
    idle_busy = machine_busy(1.0)
    print(f"- busy before the run (1 s, nothing of this benchmark running): {idle_busy:.0f}% "
          f"of one core{' ⚠ not idle' if idle_busy > run.NOISE_PCT else ''}")
    print()
    print("## Commands")
    print()
    if not workers_ok:
        print("- **this tgate has no --workers option** (`tgate --help` does not list it): "
              "the 1-worker column runs without the option, the other column is SKIPped")
    for k, n in iterations.items():
        print(f"- {HANDLER_LABELS[k]}: {n} loop iterations per request "
              f"(calibrated now for {args.work_ms:g} ms)")
    for case in cases:
        for w in ("1", case.more):
            srv = WorkersServer("x", handler_command(case.handler, iterations),
                                w if workers_ok else "")
            print(f"- {case.name}, --workers {w}: `{shlex.join(srv.command())}`")
        if case.row is not None:
            cmd = [str(run.LOADGEN.relative_to(REPO)), "--port", "PORT", *case.row.loadgen_args(),
                   "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}",
                   "--ramp-timeout", f"{args.ramp_timeout:g}"]
            print(f"  - load: {case.describe()}: `{shlex.join(cmd)}`")
        else:
            print(f"  - load: {case.describe(args.chat_senders)} (in this process; "
                  f"warmup {args.warmup:g} s, measured {args.duration:g} s)")
    print(flush=True)

    print("## Progress")
    print()
    runs: Runs = {}
    problems: list[str] = []
    if idle_busy > run.NOISE_PCT:
        problems.append(f"machine not idle before the run: {idle_busy:.0f}% of a core busy")
    commands: dict[str, list[str]] = {}
    live: list[Any] = []
    try:
        for case in cases:
            widths = ["1", case.more] if workers_ok else ["1"]
            servers = {}
            for w in widths:
                srv = WorkersServer(f"{case.name}-w{w}", handler_command(case.handler, iterations),
                                    w if workers_ok else "")
                live.append(srv)
                try:
                    srv.start()
                except RuntimeError as exc:  # e.g. tgate exits at start: the cell fails
                    problems.append(f"{srv.name} did not start: {exc}")
                    print(f"- {case.name} --workers {w}: did not start, see Problems",
                          flush=True)
                    runs[(case.name, w)] = [Result(case.name, srv.name, ok=False,
                                                   note="server did not start")
                                            for _ in range(args.repeat)]
                    continue
                servers[w] = srv
                commands[srv.name] = srv.argv
            for rep in range(args.repeat):
                order = widths if rep % 2 == 0 else widths[::-1]
                for w in order:
                    if w not in servers:
                        continue
                    srv = servers[w]
                    if not srv.alive():
                        problems.append(f"{srv.name} had died before #{rep + 1}; restarted. "
                                        f"Log tail:\n{srv.log_tail()}")
                        srv.stop()
                        try:
                            srv.start()
                        except RuntimeError as exc:
                            problems.append(f"{srv.name} did not restart: {exc}")
                            runs.setdefault((case.name, w), []).append(
                                Result(case.name, srv.name, ok=False, note="server died"))
                            continue
                    if args.wait_idle > 0:
                        wait_idle(args.wait_idle)
                    t = time.monotonic()
                    srv.snaps = []
                    res = (run_chat(srv, case, args) if case.row is None
                           else run.run_loadgen(srv, case.row, args))
                    runs.setdefault((case.name, w), []).append(res)
                    split = srv.handler_split(res.data.get("seconds", 0.0)) if res.ok else []
                    res.data["handler_pcts"] = split
                    d = res.data
                    status = (f"{res.rate:,.0f} {case.unit}, p50 {run.fmt_us(d.get('p50_us', 0))}, "
                              f"p99 {run.fmt_us(d.get('p99_us', 0))}" if res.ok else "FAILED")
                    if res.ok and case.handler.startswith("cpu"):
                        status += f", handler CPU {handler_us(res):.0f} µs/request"
                    extra = "; ".join(x for x in (run.cell_flags(res), res.note) if x)
                    print(f"- {case.name} --workers {w} #{rep + 1}: {status}"
                          f"{' (' + extra + ')' if extra else ''} [{time.monotonic() - t:.1f} s]",
                          flush=True)
                    where = f"{case.name} --workers {w} #{rep + 1}"
                    if res.other_pct > run.NOISE_PCT:
                        problems.append(f"{where}: noisy machine: {res.other_pct:.0f}% of a core "
                                        "busy outside the load generator, tgate and irq")
                    if not res.ok or run.cell_flags(res):
                        problems.append(f"{where}: {extra or 'failed'}")
                    bad = [ln for ln in res.log.splitlines()
                           if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln
                           or ln.startswith("[handler")]
                    if bad:
                        problems.append(f"{where}: tgate logged {len(bad)} warning/error "
                                        "line(s), first: " + " | ".join(bad[:3]))
                    uneven = uneven_split(split, workers_count(w))
                    if uneven:
                        problems.append(f"{where}: {uneven}")
                    if not srv.alive():
                        problems.append(f"{srv.name} died during #{rep + 1}. "
                                        f"Log tail:\n{srv.log_tail()}")
                    time.sleep(0.3)
            for srv in servers.values():
                srv.stop()
            drift = speed_drift(case, runs)
            if drift:
                problems.append(drift)
        print()
    except (KeyboardInterrupt, run.Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'SIGINT'}): stopping servers", file=sys.stderr)
        return 130
    finally:
        for srv in live:
            srv.stop()

    print("## Results")
    print()
    print(f"Median of {args.repeat} run(s) by rate; ratio = more workers / 1 worker (rate: "
          "higher is better; latency: lower is better). More workers = the number in the row "
          f"name (auto: tgate's choice; {os.cpu_count()} CPUs here). ⚠ FAIL(k/n ...) = k of "
          "the cell's n repeats failed or errored (errors, stalls, lost or duplicated "
          "messages), see Problems.")
    print()
    print_table(cases, runs, workers_ok)
    print()
    print("CPU during the measured window, % of one core (loadgen/client = the load "
          "generator's own; handlers = every process under tgate, in parentheses each busy "
          "one; machine out of "
          f"{100 * (os.cpu_count() or 1)}%):")
    print()
    print_cpu_table(cases, runs)
    print()
    print("CPU per request (per delivered message for chat), µs: tgate / all handlers; "
          "for the CPU-bound rows, the most the rest (tgate, the load generator, irq) left "
          "the handlers of the machine's CPUs: the ratio's ceiling.")
    print()
    for line in cost_lines(cases, runs):
        print(f"- {line}")
    print()
    if args.repeat > 1:
        print("Spread of rates over the repeats (min-max):")
        print()
        for case in cases:
            parts = []
            for w in ("1", case.more):
                rs = [r.rate for r in runs.get((case.name, w), []) if r.ok]
                if rs:
                    parts.append(f"--workers {w} {run.fmt_rate(min(rs))}-{run.fmt_rate(max(rs))}"
                                 f" (median {run.fmt_rate(statistics.median(rs))})")
            print(f"- {case.name}: " + ("; ".join(parts) or "no run"))
        print()
    print("## Goals")
    print()
    verdicts = goals(runs, cases)
    for name, verdict, detail in verdicts:
        print(f"- {verdict} {name}: {detail}")
    print()
    print("## Problems")
    print()
    for pr in problems or ["none: no errors, no stalls, no lost messages, no warnings in "
                           "tgate's logs, no server died"]:
        print(f"- {pr}")
    elapsed = time.monotonic() - started_at
    print()
    print(f"Total time: {elapsed:.0f} s")

    raw = {
        "args": vars(args), "machine": run.machine_info(), "workers_option": workers_ok,
        "iterations": iterations, "commands": commands,
        "runs": [{"case": k[0], "workers": k[1], "ok": r.ok, "note": r.note,
                  "server_cpu_pct": r.server_cpu_pct, "children_cpu_pct": r.children_cpu_pct,
                  "machine_busy_pct": r.machine_busy_pct, "irq_pct": r.irq_pct,
                  "other_pct": r.other_pct, **r.data}
                 for k, v in runs.items() for r in v],
        "problems": problems,
        "goals": [{"goal": n, "verdict": v, "detail": d} for n, v, d in verdicts],
        "elapsed_s": elapsed,
    }
    for path in filter(None, [str(run.BUILD / "workers-last-run.json"), args.json]):
        Path(path).write_text(json.dumps(raw, indent=1))
    status = exit_status(verdicts)
    if status:
        print(f"\nexit status {status}: a goal FAILed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
