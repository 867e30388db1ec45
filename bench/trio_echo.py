"""The in-process baseline: a naive trio echo server.

    python bench/trio_echo.py PORT      # 0 picks a free port

Prints ``listening on PORT`` on stderr when ready. Every byte a client sends
comes straight back, from the same process and event loop that holds the
socket: what tgate would cost if the handler ran inside the gateway.
"""

from __future__ import annotations

import sys

import trio


async def echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: trio.serve_tcp(
                echo, port, host="127.0.0.1", backlog=511, task_status=task_status
            )
        )
        real = listeners[0].socket.getsockname()[1]
        print(f"listening on {real}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    except KeyboardInterrupt:
        pass
