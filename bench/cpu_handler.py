"""A CPU-bound echo handler for tgate's worker benchmark (bench/workers.py).

Every complete line a client sends costs a fixed amount of pure Python work
(about 0.5 ms on the machine that calibrated it: a loop of integer
arithmetic, no I/O, no sleeping) and is then echoed back byte for byte, so
bench/loadgen.c can drive it like examples/echo.py.

    python3 bench/cpu_handler.py --calibrate        # print the loop count for 0.5 ms
    tgate --handler "python3 bench/cpu_handler.py --iterations 12345"
    tgate --handler "python3 bench/cpu_handler.py"  # calibrates itself at start

The amount of work is a loop count, not a time: fixed once (by --iterations,
or by calibrating at start), it stays the same however busy the machine is,
so one worker and two workers do exactly the same work per request.
``--work-ms`` changes the calibration target (default 0.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

try:
    from tgate_handler import Client, ServerLoop
except ImportError:  # running from a checkout: use the adapter next door
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "adapters", "python")
    )
    from tgate_handler import Client, ServerLoop


def work(iterations: int, seed: int) -> int:
    """Pure CPU work: an xorshift-style integer mix, ``iterations`` rounds."""
    x = seed | 1
    for _ in range(iterations):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
    return x


def calibrate(work_ms: float, trials: int = 25, spread_s: float = 1.0) -> int:
    """The loop count that takes ``work_ms`` on this machine at its fastest:
    the quickest of ``trials`` timed runs (CPU time), spread over ``spread_s``
    seconds because a VM's CPU speed can drift by 1.7x for seconds at a time
    (busy neighbours on the host)."""
    probe = 20000
    work(probe, 1)  # warm up the interpreter's specialisations
    best = float("inf")
    for i in range(trials):
        t0 = time.process_time()
        work(probe, i + 1)
        best = min(best, time.process_time() - t0)
        time.sleep(spread_s / trials)
    return max(1, round(probe * (work_ms / 1000) / best)) if best > 0 else probe


class CpuEcho(ServerLoop):
    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        self.sink = 0

    # every complete line in this read: work for each, then echo them all
    def process_client_buffer(self, client: Client, buf: bytes, pos: int, length: int) -> int:
        end = buf.rfind(b"\n", pos, pos + length) + 1
        if not end:
            return 0  # partial line: wait for the rest
        lines = buf.count(b"\n", pos, end)
        for i in range(lines):
            self.sink ^= work(self.iterations, buf[pos + i] + i)
        client.write(buf[pos:end])
        return end - pos

    def process_frame(self, client: Client, frame: bytes) -> None:  # --framing line etc.
        self.sink ^= work(self.iterations, len(frame))
        client.write(frame)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=0,
                   help="loop count per request (default: calibrate at start)")
    p.add_argument("--work-ms", type=float, default=0.5,
                   help="calibration target per request, in ms (0.5)")
    p.add_argument("--calibrate", action="store_true",
                   help="print the loop count for --work-ms and exit")
    args = p.parse_args()
    if args.calibrate:
        print(calibrate(args.work_ms))
        return
    iterations = args.iterations or calibrate(args.work_ms)
    CpuEcho(iterations).run()


if __name__ == "__main__":
    main()
