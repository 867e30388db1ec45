"""tgate's benchmark: one command, every measurement, one table.

    python bench/run.py                 # full run: 10 s per row, 3 repeats (~20 min)
    python bench/run.py --quick         # 2 s per row, 1 repeat (~3 min)
    python bench/run.py --rows closed-50,churn-8 --servers tgate-py,trio
    python bench/run.py --json out.json # also save every run's raw numbers

It builds the C load generator (bench/loadgen.c -> bench/build/loadgen) if
needed, starts each server in its own process group:

    tgate-py    tgate --port 0 --handler "python3 examples/echo.py"
    tgate-node  tgate --port 0 --handler "node examples/echo.js"
    tgate-py-line  the same as tgate-py with --framing line (issue 5: line vs raw)
    trio        python3 bench/trio_echo.py 0      (in-process baseline)
    socat       socat TCP-LISTEN:PORT,fork,reuseaddr,backlog=511
                      EXEC:"python3 bench/echo_stdio.py"   (process per connection)

and runs every row against every server (interleaved: row by row, repeat by
repeat, so drift hits all servers alike):

    closed-1       1 connection, one 32-byte request in flight
    closed-50      50 connections, closed loop
    closed-500     500 connections, closed loop
    pipelined-50   50 connections, 16 requests in flight each
    pipelined-500  500 connections, 16 requests in flight each
    churn-8        8 churners: connect, one request, reply, close, repeat

Each row runs --repeat times; the run with the median req/s (conn/s for
churn) is reported with its p50 and p99 latency, each also as a ratio to the
trio baseline. Then the goals of issue 7 are checked (PASS/FAIL/SKIP): any
failed or erroring repeat fails every goal that needs its cell, a goal whose
cell was not run is SKIP, and the exit status is 1 when a goal FAILs. Servers are
stopped (process group SIGTERM, then SIGKILL, then any straggling
descendant) on exit, on Ctrl-C and on errors. Server logs go to
bench/build/logs/; raw results to bench/build/last-run.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
LOGS = BUILD / "logs"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
PY = sys.executable


@dataclass(frozen=True)
class Row:
    name: str
    mode: str
    connections: int
    depth: int = 1

    def loadgen_args(self) -> list[str]:
        args = ["--mode", self.mode, "--connections", str(self.connections)]
        if self.mode == "pipelined":
            args += ["--depth", str(self.depth)]
        return args

    @property
    def unit(self) -> str:
        return "conn/s" if self.mode == "churn" else "req/s"

    def describe(self) -> str:
        if self.mode == "closed":
            return f"{self.connections} connection(s), closed loop (1 request in flight each)"
        if self.mode == "pipelined":
            return f"{self.connections} connections, {self.depth} requests in flight each"
        return (f"{self.connections} concurrent churners: connect, 1 request, reply, close; "
                "latency = connect to reply")


ROWS = [
    Row("closed-1", "closed", 1),
    Row("closed-50", "closed", 50),
    Row("closed-500", "closed", 500),
    Row("pipelined-50", "pipelined", 50, 16),
    Row("pipelined-500", "pipelined", 500, 16),
    Row("churn-8", "churn", 8),
]
SERVER_NAMES = ["tgate-py", "tgate-node", "tgate-py-line", "trio", "socat"]
SERVER_LABELS = {
    "tgate-py": "tgate + echo.py",
    "tgate-node": "tgate + echo.js",
    "tgate-py-line": "tgate --framing line + echo.py",
    "trio": "trio echo (baseline)",
    "socat": "socat fork + python",
}
BASELINE = "trio"
#: CPU (% of one core) busy outside loadgen and the server above which a run is flagged noisy
NOISE_PCT = 25.0


# ---------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out.extend(int(x) for x in f.read().split())
    return out


def descendants(pid: int) -> list[int]:
    seen: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces: split after the closing paren
    return data[data.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return int(st[19]) if st else None


def proc_cpu_s(pid: int) -> float:
    """utime+stime+cutime+cstime of one process, in seconds (0 if gone)."""
    st = _stat(pid)
    if not st:
        return 0.0
    ticks = sum(int(x) for x in st[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """One server process (group) under test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.argv: list[str] = []
        self.log_path = LOGS / f"{name}.log"
        self.log_file: Any = None
        self.restarts = 0

    # the commands, as shown in the report
    def command(self, port: int | str = 0) -> list[str]:
        tgate = [PY, "-m", "tgate"]
        if self.name == "tgate-py":
            return [*tgate, "--port", "0", "--handler",
                    f"{shlex.quote(PY)} {shlex.quote(str(REPO / 'examples/echo.py'))}"]
        if self.name == "tgate-py-line":
            return [*tgate, "--port", "0", "--framing", "line", "--handler",
                    f"{shlex.quote(PY)} {shlex.quote(str(REPO / 'examples/echo.py'))}"]
        if self.name == "tgate-node":
            node = shutil.which("node") or "node"
            return [*tgate, "--port", "0", "--handler",
                    f"{shlex.quote(node)} {shlex.quote(str(REPO / 'examples/echo.js'))}"]
        if self.name == "trio":
            return [PY, str(BENCH / "trio_echo.py"), "0"]
        if self.name == "socat":
            return ["socat", f"TCP-LISTEN:{port},fork,reuseaddr,backlog=511",
                    f"EXEC:{PY} {BENCH / 'echo_stdio.py'}"]
        raise ValueError(self.name)

    def start(self, timeout: float = 30.0) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        port = free_port() if self.name == "socat" else 0
        self.argv = self.command(port)
        self.log_file = open(self.log_path, "ab")
        self.log_file.write(f"=== {datetime.datetime.now().isoformat()} {shlex.join(self.argv)}\n"
                            .encode())
        self.log_file.flush()
        start = self.log_file.tell()
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=self.log_file, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        if self.name == "socat":
            self.port = port
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=1
                ):
                    return
                time.sleep(0.05)
        else:
            pattern = re.compile(rb"listening on (?:127\.0\.0\.1:)?(\d+)")
            with open(self.log_path, "rb") as f:
                f.seek(start)
                buf = b""
                while time.monotonic() < deadline:
                    buf += f.read()
                    m = pattern.search(buf)
                    if m:
                        self.port = int(m.group(1))
                        return
                    self._check_alive()
                    time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name}: not ready after {timeout:.0f} s; see {self.log_path}")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}; "
                               f"see {self.log_path}:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def cpu(self) -> tuple[float, float]:
        """(CPU seconds of the server process itself, of everything it started)."""
        if self.proc is None:
            return 0.0, 0.0
        own_stat = _stat(self.proc.pid)
        if not own_stat:
            return 0.0, 0.0
        tck = os.sysconf("SC_CLK_TCK")
        own = (int(own_stat[11]) + int(own_stat[12])) / tck
        reaped = (int(own_stat[13]) + int(own_stat[14])) / tck
        rest = reaped + sum(proc_cpu_s(p) for p in descendants(self.proc.pid))
        return own, rest

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait until a socat server has no connection children left."""
        if self.name != "socat" or self.proc is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _children(self.proc.pid):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        tree = [(p, start_time(p)) for p in descendants(proc.pid)]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        # tgate's handler lives in its own process group: anything of the tree
        # still alive (same pid, same start time) is killed too
        time.sleep(0.1)
        for pid, started in tree:
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


def machine_cpu() -> tuple[float, float, float]:
    """(busy, irq+softirq, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    irq = sum(fields[5:7])
    return float(total - idle), float(irq), float(total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- running


def build_loadgen() -> None:
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    cmd = ["cc", "-O2", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    print("building:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


@dataclass
class Result:
    row: str
    server: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    server_cpu_pct: float = 0.0      # the server process itself, % of one core
    children_cpu_pct: float = 0.0    # handler / forked children, % of one core
    machine_busy_pct: float = 0.0    # the whole machine, % of one core
    irq_pct: float = 0.0             # of which interrupt/softirq time (loopback TCP)
    other_pct: float = 0.0           # busy minus irq, loadgen and server tree
    log: str = ""

    @property
    def rate(self) -> float:
        if not self.ok:
            return 0.0
        key = "conn_per_s" if self.data.get("mode") == "churn" else "rps"
        return float(self.data.get(key, 0.0))


def run_loadgen(server: Server, row: Row, args: argparse.Namespace) -> Result:
    cmd = [str(LOADGEN), "--port", str(server.port), *row.loadgen_args(),
           "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--ramp-timeout", str(args.ramp_timeout)]
    limit = args.ramp_timeout + args.warmup + args.duration + 30
    log_offset = server.log_size()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    out, err = b"", b""
    cpu0 = cpu1 = None
    t0 = t1 = 0.0
    deadline = time.monotonic() + limit
    timed_out = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == "out":
                    out += chunk
                    continue
                err += chunk
                if cpu0 is None and b"loadgen: measuring" in err:
                    cpu0, m0, t0 = server.cpu(), machine_cpu(), time.monotonic()
                if cpu1 is None and b"loadgen: measured" in err:
                    cpu1, m1, t1 = server.cpu(), machine_cpu(), time.monotonic()
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        sel.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    res = Result(row.name, server.name, ok=False)
    res.log = server.log_since(log_offset)
    if timed_out:
        res.note = f"loadgen timed out after {limit:.0f} s (killed)"
        return res
    line = out.decode(errors="replace").strip().splitlines()
    try:
        res.data = json.loads(line[-1]) if line else {}
    except json.JSONDecodeError:
        res.data = {}
    if not res.data:
        res.note = (f"loadgen exit {proc.returncode}, no result: "
                    f"{err.decode(errors='replace').strip()[-300:]}")
        return res
    res.ok = res.data.get("requests", 0) > 0
    if not res.ok:
        res.note = "no request completed"
    if cpu0 is not None and cpu1 is not None and t1 > t0:
        res.server_cpu_pct = 100 * (cpu1[0] - cpu0[0]) / (t1 - t0)
        res.children_cpu_pct = 100 * (cpu1[1] - cpu0[1]) / (t1 - t0)
        ncpu = os.cpu_count() or 1
        if m1[2] > m0[2]:
            res.machine_busy_pct = 100 * ncpu * (m1[0] - m0[0]) / (m1[2] - m0[2])
            res.irq_pct = 100 * ncpu * (m1[1] - m0[1]) / (m1[2] - m0[2])
        res.other_pct = max(0.0, res.machine_busy_pct - res.irq_pct
                            - res.data.get("cpu_pct", 0.0)
                            - res.server_cpu_pct - res.children_cpu_pct)
    return res


def median_run(runs: list[Result]) -> Result:
    ok = [r for r in runs if r.ok]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r.rate)
    return ok[(len(ok) - 1) // 2]


# ---------------------------------------------------------------- reporting


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_info() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import trio
        trio_v = trio.__version__
    except ImportError:
        trio_v = "not installed"
    try:
        import tgate
        tgate_v = tgate.__version__
    except ImportError:
        tgate_v = "not installed"
    commit = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "adapters",
                "examples"])
    ndirty = len(dirty.splitlines()) if dirty and dirty != "?" else 0
    socat_v = sh(["socat", "-V"]).splitlines()
    socat_v = next((ln for ln in socat_v if "socat version" in ln), "?")
    return [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"nproc: {os.cpu_count()} (usable here: {len(os.sched_getaffinity(0))})",
        f"cpu: {model}",
        f"kernel: {platform.system()} {platform.release()}",
        f"python: {platform.python_version()} ({PY}), trio {trio_v}, tgate {tgate_v}",
        f"node: {sh(['node', '--version'])}",
        f"socat: {socat_v.strip()}",
        f"git: {commit}" + (f" + {ndirty} uncommitted file(s) in src/adapters/examples"
                            if ndirty else " (clean src/adapters/examples)"),
    ]


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def fmt_us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:,.1f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def ratio(a: float, b: float) -> str:
    if not b or not a:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def cell_flags(r: Result) -> str:
    d = r.data
    flags = []
    if d.get("errors"):
        flags.append(f"{d['errors']} err")
    if d.get("idle_conns"):
        flags.append(f"{d['idle_conns']} idle conns")
    if d.get("ramp_missing"):
        flags.append(f"{d['ramp_missing']} never answered in ramp")
    if d.get("oldest_inflight_ms", 0) > 1000:
        flags.append(f"a request unanswered for {d['oldest_inflight_ms'] / 1000:.1f} s")
    return ", ".join(flags)


def print_table(rows: list[Row], servers: list[str], best: dict[tuple[str, str], Result],
                runs: dict[tuple[str, str], list[Result]] | None = None) -> None:
    print("| row | metric | " + " | ".join(SERVER_LABELS[s] for s in servers) + " |")
    print("|---|---|" + "---:|" * len(servers))
    for row in rows:
        base = best.get((row.name, BASELINE))
        for metric in ("rate", "p50", "p99"):
            cells = []
            for s in servers:
                r = best.get((row.name, s))
                if r is None:
                    cells.append("")
                    continue
                verdict = cell_verdict((runs or {}).get((row.name, s), [r]))
                if not r.ok:
                    cells.append(verdict if metric == "rate" else "")
                    continue
                if metric == "rate":
                    v, b = r.rate, (base.rate if base and base.ok else 0)
                    text = fmt_rate(v)
                else:
                    key = f"{metric}_us"
                    v = r.data[key]
                    b = base.data[key] if base and base.ok else 0
                    text = fmt_us(v)
                if s != BASELINE and b:
                    text += f" ({ratio(v, b)})"
                if metric == "rate" and verdict:
                    text += f" ⚠ {verdict}"
                cells.append(text)
            label = row.unit if metric == "rate" else f"{metric} latency"
            name = f"**{row.name}**" if metric == "rate" else ""
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")


def print_cpu_table(rows: list[Row], servers: list[str],
                    best: dict[tuple[str, str], Result]) -> None:
    print("| row | " + " | ".join(SERVER_LABELS[s] for s in servers) + " |")
    print("|---|" + "---:|" * len(servers))
    for row in rows:
        cells = []
        for s in servers:
            r = best.get((row.name, s))
            if r is None or not r.data:
                cells.append("")
                continue
            lg = r.data.get("cpu_pct", 0.0)
            if s.startswith("tgate"):
                srv = f"tgate {r.server_cpu_pct:.0f}% + handler {r.children_cpu_pct:.0f}%"
            elif s == "socat":
                srv = f"socat {r.server_cpu_pct:.0f}% + children {r.children_cpu_pct:.0f}%"
            else:
                srv = f"server {r.server_cpu_pct:.0f}%"
            warn = " (loadgen-bound!)" if lg > 90 else ""
            cells.append(f"loadgen {lg:.0f}%{warn}; {srv}; machine {r.machine_busy_pct:.0f}%"
                         f" (irq {r.irq_pct:.0f}%, other {r.other_pct:.0f}%)")
        print(f"| {row.name} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------- verdicts
#
# Pure functions of the recorded runs (tests/test_bench_verdicts.py checks
# them): every repeat counts. A cell is clean only when every one of its
# repeats completed without errors or stalls; a goal FAILs when any cell it
# needs is not clean, SKIPs when a cell it needs was not run at all, and
# only otherwise compares the numbers (of the median run).

Runs = dict[tuple[str, str], list[Result]]
Verdict = tuple[str, str, str]  # (goal, PASS|FAIL|SKIP, detail)


def repeat_problem(r: Result) -> str:
    """'failed' (no result), 'errored' (errors or stalls), or '' for a clean run."""
    if not r.ok:
        return "failed"
    if cell_flags(r):
        return "errored"
    return ""


def cell_verdict(results: list[Result]) -> str:
    """'' when every repeat is clean, else e.g. 'FAIL(2/3 errored)' or
    'FAIL(1/3 failed, 1/3 errored)'."""
    n = len(results)
    counts: dict[str, int] = {}
    for r in results:
        why = repeat_problem(r)
        if why:
            counts[why] = counts.get(why, 0) + 1
    if not counts:
        return ""
    parts = [f"{counts[k]}/{n} {k}" for k in ("failed", "errored") if k in counts]
    return "FAIL(" + ", ".join(parts) + ")"


def goals(runs: Runs) -> list[Verdict]:
    """The goals of issue 7, judged on every recorded repeat. Goal 5 needs
    every row of ROWS for both tgate columns."""

    def cell(row: str, server: str) -> tuple[Result | None, str]:
        """(the median clean run, '' ) for a clean cell; (None, 'FAIL(...)')
        for a cell with a bad repeat; (None, 'missing') for one not run."""
        results = runs.get((row, server), [])
        if not results:
            return None, "missing"
        bad = cell_verdict(results)
        if bad:
            return None, bad
        return median_run(results), ""

    def judge(name: str, needed: list[tuple[str, str]], fn: Any) -> Verdict:
        got = [cell(*k) for k in needed]
        failed = [f"{row}/{srv} {why}" for (row, srv), (_, why) in zip(needed, got, strict=True)
                  if why not in ("", "missing")]
        missing = [f"{row}/{srv}" for (row, srv), (_, why) in zip(needed, got, strict=True)
                   if why == "missing"]
        if failed:
            detail = "every repeat must be clean: " + "; ".join(failed)
            if missing:
                detail += f" (not measured: {', '.join(missing)})"
            return name, "FAIL", detail
        if missing:
            return name, "SKIP", f"not measured: {', '.join(missing)}"
        passed, detail = fn(*[r for r, _ in got])
        return name, "PASS" if passed else "FAIL", detail

    out = [
        judge("1. closed loop 50 clients: tgate+Python >= 1.0x trio",
              [("closed-50", "tgate-py"), ("closed-50", "trio")],
              lambda p, t: (p.rate >= t.rate, f"{p.rate:,.0f} vs {t.rate:,.0f} req/s = "
                            f"{p.rate / t.rate:.2f}x")),
        judge("2. pipelined 50: tgate+Python >= 1.0x trio",
              [("pipelined-50", "tgate-py"), ("pipelined-50", "trio")],
              lambda p, t: (p.rate >= t.rate, f"{p.rate:,.0f} vs {t.rate:,.0f} req/s = "
                            f"{p.rate / t.rate:.2f}x")),
        judge("3. 1 client p50 latency: tgate+Python <= 2x trio",
              [("closed-1", "tgate-py"), ("closed-1", "trio")],
              lambda p, t: (p.data["p50_us"] <= 2 * t.data["p50_us"],
                            f"{p.data['p50_us']:.0f} vs {t.data['p50_us']:.0f} µs = "
                            f"{p.data['p50_us'] / t.data['p50_us']:.2f}x")),
        judge("4. churn: tgate+Python >= 0.8x trio and >= 10x socat",
              [("churn-8", "tgate-py"), ("churn-8", "trio"), ("churn-8", "socat")],
              lambda p, t, s: (p.rate >= 0.8 * t.rate and p.rate >= 10 * s.rate,
                               f"{p.rate:,.0f} conn/s = {p.rate / t.rate:.2f}x trio, "
                               f"{p.rate / s.rate:.1f}x socat")),
    ]

    # 5: Node within 10% of Python on every row (the row's req/s or conn/s)
    needed5 = [(row.name, srv) for row in ROWS for srv in ("tgate-py", "tgate-node")]

    def node_vs_python(*rs: Result) -> tuple[bool, str]:
        parts, ok = [], True
        for i, row in enumerate(ROWS):
            p, n = rs[2 * i], rs[2 * i + 1]
            r = n.rate / p.rate
            ok &= abs(r - 1) <= 0.10
            parts.append(f"{row.name} {r:.2f}x")
        return ok, "node/python: " + ", ".join(parts)

    out.append(judge("5. Node within 10% of Python on every row", needed5, node_vs_python))
    return out


def exit_status(verdicts: list[Verdict]) -> int:
    """The script's exit status: 1 when any goal FAILs (SKIP and PASS: 0)."""
    return 1 if any(v == "FAIL" for _, v, _ in verdicts) else 0


# ---------------------------------------------------------------- main


class Interrupted(Exception):
    pass


def _on_term(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="duration 2 s, repeat 1, warmup 1 s")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (10)")
    p.add_argument("--repeat", type=int, default=None, help="runs per cell; median kept (3)")
    p.add_argument("--warmup", type=float, default=None, help="warmup seconds per run (2)")
    p.add_argument("--ramp-timeout", type=float, default=60.0,
                   help="max seconds to open all connections and get a first reply each")
    p.add_argument("--rows", default=",".join(r.name for r in ROWS),
                   help="comma-separated subset of: " + ", ".join(r.name for r in ROWS))
    p.add_argument("--servers", default=",".join(SERVER_NAMES),
                   help="comma-separated subset of: " + ", ".join(SERVER_NAMES))
    p.add_argument("--json", metavar="PATH", help="also write raw results here")
    args = p.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)

    by_name = {r.name: r for r in ROWS}
    try:
        rows = [by_name[n] for n in args.rows.split(",") if n]
        servers = [s for s in SERVER_NAMES if s in args.servers.split(",")]
        unknown = set(args.servers.split(",")) - set(SERVER_NAMES) - {""}
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
    except KeyError as exc:
        p.error(f"unknown row or server: {exc}")
    if "socat" in servers and not shutil.which("socat"):
        p.error("socat is not installed (apt-get install -y socat), or leave it out "
                "with --servers")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    started_at = time.monotonic()
    build_loadgen()

    print("# tgate benchmark")
    print()
    print("Command: `python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
          + f"` (duration {args.duration:g} s, warmup {args.warmup:g} s, "
          f"repeat {args.repeat}, median run by rate)")
    print()
    print("## Machine")
    print()
    for line in machine_info():
        print(f"- {line}")
    print(flush=True)

    live: dict[str, Server] = {}
    runs: dict[tuple[str, str], list[Result]] = {}
    problems: list[str] = []
    try:
        for name in servers:
            srv = Server(name)
            live[name] = srv  # registered first: stopped even if start() is interrupted
            srv.start()
        print("## Commands")
        print()
        print("Servers (each in its own process group; logs in bench/build/logs/):")
        print()
        for name in servers:
            print(f"- {name}: `{shlex.join(live[name].argv)}`")
        print()
        print("Rows (`PORT` is the server's):")
        print()
        for row in rows:
            cmd = [str(LOADGEN.relative_to(REPO)), "--port", "PORT", *row.loadgen_args(),
                   "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}",
                   "--ramp-timeout", f"{args.ramp_timeout:g}"]
            print(f"- {row.name}: {row.describe()}: `{shlex.join(cmd)}`")
        print(flush=True)

        print("## Progress")
        print()
        total = len(rows) * args.repeat * len(servers)
        done = 0
        for row in rows:
            for rep in range(args.repeat):
                order = servers[rep % len(servers):] + servers[:rep % len(servers)]
                for name in order:
                    srv = live[name]
                    if not srv.alive():
                        problems.append(f"{name} had died before {row.name} #{rep + 1} "
                                        f"(status {srv.proc.returncode if srv.proc else '?'});"
                                        f" restarted. Log tail:\n{srv.log_tail()}")
                        srv.stop()
                        srv.start()
                        srv.restarts += 1
                    t = time.monotonic()
                    res = run_loadgen(srv, row, args)
                    done += 1
                    runs.setdefault((row.name, name), []).append(res)
                    d = res.data
                    status = (f"{res.rate:,.0f} {row.unit}, p50 {fmt_us(d.get('p50_us', 0))}, "
                              f"p99 {fmt_us(d.get('p99_us', 0))}" if res.ok else "FAILED")
                    extra = "; ".join(x for x in (cell_flags(res), res.note) if x)
                    print(f"- [{done}/{total}] {row.name} #{rep + 1} {name}: {status}"
                          f"{' (' + extra + ')' if extra else ''} "
                          f"[{time.monotonic() - t:.1f} s]", flush=True)
                    if res.other_pct > NOISE_PCT:
                        problems.append(f"{row.name} #{rep + 1} {name}: noisy machine: "
                                        f"{res.other_pct:.0f}% of a core busy outside "
                                        "loadgen, the server and irq")
                    if not res.ok or cell_flags(res):
                        problems.append(f"{row.name} #{rep + 1} {name}: "
                                        f"{extra or 'failed'}")
                    if name.startswith("tgate"):
                        bad = [ln for ln in res.log.splitlines()
                               if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln
                               or ln.startswith("[handler")]
                        if bad:
                            problems.append(f"{row.name} #{rep + 1} {name}: tgate logged "
                                            f"{len(bad)} warning/error line(s), first: "
                                            + " | ".join(bad[:3]))
                    if not srv.alive():
                        problems.append(f"{name} died during {row.name} #{rep + 1} (status "
                                        f"{srv.proc.returncode if srv.proc else '?'}). "
                                        f"Log tail:\n{srv.log_tail()}")
                    if not srv.settle():
                        problems.append(f"{name}: children still alive 60 s after "
                                        f"{row.name} #{rep + 1}")
                    time.sleep(0.3)
        print()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'SIGINT'}): stopping servers", file=sys.stderr)
        for srv in live.values():
            srv.stop()
        return 130
    finally:
        for srv in live.values():
            srv.stop()

    best = {k: median_run(v) for k, v in runs.items()}
    print("## Results")
    print()
    print(f"Median of {args.repeat} run(s) by rate. Ratios are to the trio baseline in the "
          "same run (rate: higher is better; latency: lower is better). ⚠ FAIL(k/n ...) = "
          "k of the cell's n repeats failed (no result) or errored (errors or stalled "
          "connections), see Problems; such a cell fails every goal that needs it.")
    print()
    print_table(rows, servers, best, runs)
    print()
    ncpu = os.cpu_count() or 1
    print("CPU during the measured window, % of one core (loadgen = the generator's own "
          "getrusage; server figures from /proc/PID/stat; machine = /proc/stat busy, out "
          f"of {100 * ncpu}%; irq = its interrupt and softirq time, e.g. loopback TCP; "
          "other = the rest minus loadgen and server: other processes on the machine, "
          "hypervisor steal, kernel threads):")
    print()
    print_cpu_table(rows, servers, best)
    print()
    if args.repeat > 1:
        print("Spread of rates over the repeats (min-max):")
        print()
        for row in rows:
            parts = []
            for s in servers:
                rs = [r.rate for r in runs.get((row.name, s), []) if r.ok]
                if rs:
                    parts.append(f"{s} {fmt_rate(min(rs))}-{fmt_rate(max(rs))}"
                                 f" (median {fmt_rate(statistics.median(rs))})")
            print(f"- {row.name}: " + "; ".join(parts))
        print()
    print("## Goals")
    print()
    verdicts = goals(runs)
    for name, verdict, detail in verdicts:
        print(f"- {verdict} {name}: {detail}")
    print()
    print("## Problems")
    print()
    if problems:
        for pr in problems:
            print(f"- {pr}")
    else:
        print("- none: no errors, no stalled connections, no warnings in tgate's logs, "
              "no server died")
    elapsed = time.monotonic() - started_at
    print()
    print(f"Total time: {elapsed:.0f} s")

    raw = {
        "args": vars(args),
        "machine": machine_info(),
        "commands": {n: s.argv for n, s in live.items()},
        "runs": [
            {"row": r.row, "server": r.server, "ok": r.ok, "note": r.note,
             "server_cpu_pct": r.server_cpu_pct, "children_cpu_pct": r.children_cpu_pct,
             "machine_busy_pct": r.machine_busy_pct, "irq_pct": r.irq_pct,
             "other_pct": r.other_pct,
             **r.data}
            for v in runs.values() for r in v
        ],
        "problems": problems,
        "goals": [{"goal": n, "verdict": v, "detail": d} for n, v, d in verdicts],
        "elapsed_s": elapsed,
    }
    for path in filter(None, [str(BUILD / "last-run.json"), args.json]):
        Path(path).write_text(json.dumps(raw, indent=1))
    status = exit_status(verdicts)
    if status:
        print(f"\nexit status {status}: a goal FAILed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
