"""How fast do clients get answers again after the handler is SIGKILLed? (issue 4)

    python bench/recovery.py                  # 20 kills, 10.5 s apart (~4 min)
    python bench/recovery.py --interval 1     # kills 1 s apart: shows the backoff growing
    python bench/recovery.py --kills 5 --handler "node examples/echo.js"

Starts ``tgate --port 0 --handler "python3 examples/echo.py"`` and one client
that sends a 32-byte numbered line, waits for its echo, and sends the next
~1 ms after the previous one was sent (closed loop). Then, --kills times:
find the handler (the child of the tgate process, via
/proc/PID/task/*/children, cross-checked with tgate's "handler started (pid
N)" log line), SIGKILL it, and measure

    recovery = time from the kill to the next reply the client receives
               from the NEW handler (the first reply received after tgate
               logged "handler started" for the replacement: a reply the old
               handler wrote just before dying and that arrives after the kill
               does not count).

Also shown per kill: when tgate noticed the death (its "restarting in"
line), the restart delay it announced (exponential backoff: a handler that
lived less than 10 s counts as a consecutive crash, and the delay doubles from
0.1 s up to 5 s; the default --interval of 10.5 s makes every kill a first
crash), and when the new handler started. Finally prints median and max and
checks that no reply was lost, duplicated or altered and that the client was
never disconnected. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
REQ_LEN = 32


def request(seq: int) -> bytes:
    return f"r{seq:012d} ".encode().ljust(REQ_LEN - 1, b".") + b"\n"


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    return out


class Log:
    """tgate's stderr, each line timestamped (time.monotonic) as it arrives."""

    def __init__(self, stream, echo: bool) -> None:
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.echo = echo
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            t = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            if self.echo:
                print(f"  | {line}", file=sys.stderr, flush=True)
            with self.cond:
                self.lines.append((t, line))
                self.cond.notify_all()

    def wait_for(
        self, pattern: str, after: float, timeout: float
    ) -> tuple[float, re.Match[str]] | None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if t >= after:
                        m = rx.search(line)
                        if m:
                            return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@dataclass
class Client:
    port: int
    period: float
    replies: list[tuple[int, float, float]] = field(default_factory=list)  # seq, sent, received
    problems: list[str] = field(default_factory=list)
    disconnected: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port))
        except OSError as exc:
            self.problems.append(f"cannot connect: {exc}")
            self.disconnected = True
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(60.0)
        self.sock = sock
        seq = 0
        try:
            while not self.stop.is_set():
                req = request(seq)
                sent = time.monotonic()
                sock.sendall(req)
                got = b""
                while len(got) < REQ_LEN:
                    chunk = sock.recv(REQ_LEN - len(got))
                    if not chunk:
                        self.disconnected = True
                        self.problems.append(f"disconnected by tgate while waiting for #{seq}")
                        return
                    got += chunk
                received = time.monotonic()
                if got != req:
                    if seq > 0 and got == request(seq - 1):
                        self.problems.append(f"reply #{seq - 1} duplicated")
                    else:
                        self.problems.append(f"wrong reply for #{seq}: {got!r}")
                    return
                with self.cond:
                    self.replies.append((seq, sent, received))
                    self.cond.notify_all()
                seq += 1
                pause = sent + self.period - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            # nothing more may arrive: every reply came exactly once
            sock.settimeout(0.5)
            try:
                extra = sock.recv(4096)
                if extra:
                    self.problems.append(f"{len(extra)} unexpected bytes after the last reply "
                                         f"(duplicates?): {extra[:64]!r}")
                else:
                    self.disconnected = True
                    self.problems.append("disconnected by tgate at the end")
            except TimeoutError:
                pass
        except OSError as exc:
            self.disconnected = True
            self.problems.append(f"socket error: {exc!r}")
        finally:
            sock.close()

    def first_reply_after(self, t: float, timeout: float) -> tuple[int, float, float] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                i = bisect.bisect_right(self.replies, t, key=lambda r: r[2])
                if i < len(self.replies):
                    return self.replies[i]
                left = deadline - time.monotonic()
                if left <= 0 or self.disconnected or self.problems:
                    return None
                self.cond.wait(min(left, 0.1))


def fmt(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:8.1f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--interval", type=float, default=10.5,
                   help="seconds between a recovery and the next kill (tgate counts a "
                   "handler that lived < 10 s as a consecutive crash and backs off longer)")
    p.add_argument("--period", type=float, default=0.001, help="client request period (s)")
    p.add_argument("--handler", default=f"{shlex.quote(PY)} examples/echo.py")
    p.add_argument("--timeout", type=float, default=30.0, help="max seconds per recovery")
    p.add_argument("--verbose", action="store_true", help="echo tgate's log")
    args = p.parse_args()

    cmd = [PY, "-m", "tgate", "--port", "0", "--handler", args.handler]
    print("# tgate handler-crash recovery")
    print()
    print(f"- command: `{shlex.join(['python', 'bench/recovery.py', *sys.argv[1:]])}`")
    print(f"- tgate: `{shlex.join(cmd)}` (cwd {REPO})")
    print(f"- client: one connection, a 32-byte line every {args.period * 1000:g} ms, "
          f"closed loop; {args.kills} SIGKILLs {args.interval:g} s apart")
    with contextlib.suppress(OSError):
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                     if ln.startswith("model name"))
        print(f"- machine: {os.cpu_count()} x {model}, Linux {os.uname().release}, "
              f"Python {sys.version.split()[0]}")
    print(flush=True)

    started = time.monotonic()
    tgate = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    log = Log(tgate.stderr, args.verbose)
    client: Client | None = None
    rows: list[dict[str, float | int | None]] = []
    failures: list[str] = []
    try:
        ready = log.wait_for(r"listening on \S+:(\d+)", 0.0, 30.0)
        if ready is None:
            print("tgate did not start:", *[ln for _, ln in log.lines], sep="\n", file=sys.stderr)
            return 1
        port = int(ready[1][1])
        client = Client(port, args.period)
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        if client.first_reply_after(time.monotonic(), 10.0) is None:
            failures.append("no reply before the first kill")
        time.sleep(1.0)

        print("| kill | handler pid | noticed | backoff | new handler | first reply | "
              "crash # |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for i in range(1, args.kills + 1):
            # tgate's children: the handler, and the guardian (tgate's own
            # helper that outlives a SIGKILLed tgate): trust the log's pid.
            kids = children(tgate.pid)
            started_line = [ln for _, ln in log.lines if "handler started (pid" in ln]
            logged = int(re.search(r"pid (\d+)", started_line[-1])[1]) if started_line else None
            if logged is None or logged not in kids:
                failures.append(f"kill {i}: tgate's children {kids}, log says handler {logged}")
                break
            pid = logged
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            noticed = log.wait_for(rf"handler \(pid {pid}\).*restarting in ([\d.]+) s "
                                   r"\(crash (\d+) in a row\)", t_kill, args.timeout)
            new = log.wait_for(r"handler started \(pid (\d+)\)", t_kill, args.timeout)
            reply = client.first_reply_after(new[0], args.timeout) if new else None
            row = {
                "kill": i, "pid": pid,
                "noticed": noticed[0] - t_kill if noticed else None,
                "backoff": float(noticed[1][1]) if noticed else None,
                "crash": int(noticed[1][2]) if noticed else None,
                "started": new[0] - t_kill if new else None,
                "reply": reply[2] - t_kill if reply else None,
            }
            rows.append(row)
            print(f"| {i} | {pid} | {fmt(row['noticed'])} | {fmt(row['backoff'])} | "
                  f"{fmt(row['started'])} | {fmt(row['reply'])} | {row['crash'] or '-'} |",
                  flush=True)
            if reply is None:
                failures.append(f"kill {i}: no reply from a new handler within {args.timeout} s")
                break
            if i < args.kills:
                time.sleep(args.interval)
        client.stop.set()
        thread.join(timeout=5)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failures.append("interrupted")
    finally:
        if client is not None:
            client.stop.set()
        if tgate.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tgate.pid, signal.SIGTERM)
            try:
                tgate.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(tgate.pid, signal.SIGKILL)
                tgate.wait()

    print()
    rec = [r["reply"] for r in rows if r["reply"] is not None]
    over = [r["reply"] - r["backoff"] for r in rows
            if r["reply"] is not None and r["backoff"] is not None]
    if rec:
        print(f"- kill -> first reply from the new handler: median "
              f"{statistics.median(rec) * 1000:.1f} ms, max {max(rec) * 1000:.1f} ms "
              f"({len(rec)} kills)")
    if over:
        print(f"- the same minus tgate's announced restart delay (detection + spawn + "
              f"interpreter start + replay): median {statistics.median(over) * 1000:.1f} ms, "
              f"max {max(over) * 1000:.1f} ms")
    assert client is not None or failures
    if client is not None:
        n = len(client.replies)
        seqs = [r[0] for r in client.replies]
        in_order = seqs == list(range(n))
        print(f"- client: {n} requests answered in {time.monotonic() - started:.0f} s; "
              f"every reply once, in order and byte-exact: "
              f"{'yes' if in_order and not client.problems else 'NO'}; "
              f"disconnected: {'YES' if client.disconnected else 'never'}")
        failures += client.problems
        if not in_order:
            failures.append("replies out of order or missing")
    bad_log = [ln for _, ln in log.lines
               if ("WARNING" in ln or "quarantined" in ln or "hung" in ln)]
    if bad_log:
        failures.append("tgate logged: " + " | ".join(bad_log[:5]))
    if tgate.returncode not in (0, None):
        failures.append(f"tgate exited with status {tgate.returncode}")
    print(f"- checks: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
