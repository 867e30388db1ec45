"""Micro-benchmark of the sans-IO core: the Python work tgate does per
message, without sockets, pipes or the trio scheduler.

    python bench/core_micro.py [--framing line]

Prints microseconds of CPU per echoed 32-byte message for the two halves of
the hot path (client bytes -> data message; handler line -> client output).
"""

from __future__ import annotations

import argparse
import time

import orjson

from tgate.core import Core, Settings

CLIENTS = 50
ROUNDS = 4000
MSG = b"x" * 31 + b"\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framing", default="raw")
    args = ap.parse_args()
    core = Core(Settings(framing=args.framing))
    core.handler_started()
    clients = [core.connect(("127.0.0.1", 10000 + i), ("127.0.0.1", 7000)) for i in range(CLIENTS)]
    core.take_outbox()
    text = MSG.decode("latin-1")
    if args.framing == "raw":
        reply = b"\n".join(
            orjson.dumps([{"op": "write", "id": c.id, "data": text},
                          {"op": "consumed", "id": c.id, "n": len(MSG)}])
            for c in clients
        ) + b"\n"
    else:
        reply = b"\n".join(
            orjson.dumps({"op": "write", "id": c.id, "data": text[:-1]}) for c in clients
        ) + b"\n"
    t_in = t_out = 0.0
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for c in clients:
            core.received(c, MSG)
        core.take_outbox()
        t1 = time.process_time()
        core.handler_output(reply)
        for c in core.touched:
            c.out.clear()
        core.touched.clear()
        t2 = time.process_time()
        t_in += t1 - t0
        t_out += t2 - t1
    n = CLIENTS * ROUNDS
    print(f"framing={args.framing} messages={n}")
    print(f"client -> handler: {t_in / n * 1e6:6.2f} us/message")
    print(f"handler -> client: {t_out / n * 1e6:6.2f} us/message")
    print(f"total:             {(t_in + t_out) / n * 1e6:6.2f} us/message")


if __name__ == "__main__":
    main()
