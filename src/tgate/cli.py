"""Command line: ``tgate --handler CMD [options]`` and ``tgate check-handler CMD``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import shlex
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import trio

from . import __version__, logs
from .buffer import DEFAULT_BUFSIZE, MAX_BUFSIZE
from .core import (
    DEFAULT_MAX_CHANNELS_PER_CLIENT,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_QUARANTINE_AFTER,
    Settings,
)
from .framing import FRAMINGS
from .server import DEFAULT_LISTEN_COUNT, DEFAULT_MAX_CLIENTS, Gateway, ListenError, Options
from .supervisor import HandlerStartError

log = logging.getLogger("tgate")


def _say(line: str) -> None:
    """One line to stderr, through the log queue: never raises, never blocks."""
    logs.emit_line(line.encode(errors="backslashreplace"))


def _int_in(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value

    return check


def _float_from(low: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value

    return check


_port = _int_in(0, 65535, "0-65535")


def _address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, not {text}")
    return host, _port(port)
#: More workers than this is a typo, not a deployment.
MAX_WORKERS = 1024


def _workers(text: str) -> int:
    """A count of workers, or 'auto': one per CPU this process may use."""
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return _int_in(1, MAX_WORKERS, f"1-{MAX_WORKERS} or auto")(text)


_positive_int = _int_in(1, None, "an integer > 0")
_nonneg_int = _int_in(0, None, "an integer >= 0")
_positive_float = _float_from(0.0, False, "a number > 0")
_nonneg_float = _float_from(0.0, True, "a number >= 0")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and a hint, not the whole usage (issue 17)."""
        _say(f"{self.prog}: error: {message}")
        _say(f"Try '{self.prog} --help'.")
        logs.shutdown()
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tgate",
        description=(
            "Accept TCP clients and forward their bytes, as JSON lines over stdin/stdout, to "
            "one long-lived handler process (any language; see docs/protocol.md). "
            "Also: 'tgate check-handler CMD' checks a handler against the protocol."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tgate {__version__}")
    p.add_argument(
        "--handler", required=True, metavar="CMD",
        help="handler command, split as a shell would but run without a shell "
        "(write 'sh -c \"...\"' for one)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=7000, help="TCP port (0: pick a free one)")
    p.add_argument("--listen-count", type=_positive_int, default=DEFAULT_LISTEN_COUNT,
                   help="listen backlog (ServerLoop's listenCount; its default of 10 makes Linux "
                   "reset connections in a burst of connects, so tgate uses Redis's 511)")
    p.add_argument("--update-time", type=_positive_float, default=1.0,
                   help="seconds between ticks sent to the handler (ServerLoop's update())")
    p.add_argument("--bufsize", type=_positive_int, default=DEFAULT_BUFSIZE,
                   help="initial per-client buffer; doubles when a read fills it")
    p.add_argument("--max-bufsize", type=_positive_int, default=MAX_BUFSIZE,
                   help="most unconsumed bytes held per client; a full buffer the handler "
                   "consumes nothing of disconnects the client (overflow)")
    p.add_argument("--framing", choices=FRAMINGS, default="raw",
                   help="raw: the handler sees bytes and says how many it consumed "
                   "(ServerLoop); line, crlf, packet2, packet4, netstring: tgate splits "
                   "frames and frames what the handler writes (docs/protocol.md)")
    p.add_argument("--max-output", type=_positive_int, default=DEFAULT_MAX_OUTPUT,
                   help="bytes of output queued per client: reading it pauses above half of "
                   "this, and it is disconnected (slow) past it")
    p.add_argument("--handler-timeout", type=_nonneg_float, default=10.0,
                   help="restart a handler that owes replies and is silent this many seconds "
                   "(0: never)")
    p.add_argument("--shutdown-grace", type=_nonneg_float, default=5.0,
                   help="seconds the handler gets to answer what it owes at shutdown or reload")
    p.add_argument("--on-crash", choices=("keep", "disconnect"), default="keep",
                   help="when the handler crashes: keep the clients and replay them to the new "
                   "handler, or disconnect them")
    p.add_argument("--quarantine-after", type=_nonneg_int, default=DEFAULT_QUARANTINE_AFTER,
                   help="disconnect a client whose bytes were in flight at this many "
                   "consecutive handler crashes (0: never)")
    p.add_argument("--max-clients", type=_nonneg_int, default=DEFAULT_MAX_CLIENTS,
                   help="at this many clients, new connections wait in the listen backlog "
                   "until one leaves (0: no limit but the open-file limit)")
    p.add_argument("--max-clients-per-ip", type=_nonneg_int, default=0,
                   help="close new connections from a peer address that already has this "
                   "many (0: no limit)")
    p.add_argument("--metrics", type=_address, default=None, metavar="HOST:PORT",
                   help="serve /metrics (Prometheus) and /status (JSON) on this address "
                   "(port 0: pick a free one)")
    p.add_argument("--drain-timeout", type=_nonneg_float, default=0.0,
                   help="on SIGINT/SIGTERM stop accepting at once, but keep serving connected "
                   "clients up to this many seconds before closing them (0: no drain)")
    p.add_argument("--idle-timeout", type=_nonneg_float, default=0.0,
                   help="disconnect clients that sent nothing for this many seconds "
                   "(reason idle; 0: never)")
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="handler processes running the same command; each client is served by "
                   "one of them for life (auto: one per CPU)")
    p.add_argument("--max-channels-per-client", type=_positive_int,
                   default=DEFAULT_MAX_CHANNELS_PER_CLIENT,
                   help="a subscribe past this many channels for one client is refused")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="log verbosity")
    p.add_argument("--log-format", default="text", choices=logs.FORMATS,
                   help="stderr lines: text, or json (one JSON object per line)")
    p.add_argument("--access-log", default="on", choices=("on", "off"),
                   help="one INFO line per connection when it ends (peer, id, duration, "
                   "bytes in/out, reason)")
    return p


def _raise_nofile_limit() -> None:
    """Let the gateway hold as many sockets as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


async def _run(gateway: Gateway, host_for_banner: str) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            address = await nursery.start(gateway.serve)
            host, port = address[0], address[1]
            shown = f"[{host}]" if ":" in host else host
            logs.banner(f"tgate listening on {shown}:{port}")
            if gateway.metrics_address is not None:
                mhost, mport = gateway.metrics_address[0], gateway.metrics_address[1]
                mshown = f"[{mhost}]" if ":" in mhost else mhost
                logs.banner(f"tgate metrics on http://{mshown}:{mport}/metrics")

            async def watch_signals() -> None:
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        if stopping:
                            log.info("SIGHUP ignored: shutting down")
                        else:
                            log.info("SIGHUP: reloading the handler")
                            gateway.reload()
                    elif not stopping:
                        stopping = True
                        log.info("%s: shutting down (send it again to stop at once)", name)
                        gateway.stop()
                    else:
                        log.warning("%s again: stopping at once", name)
                        gateway.abort()

            nursery.start_soon(watch_signals)
            # serve() returns after an orderly shutdown; then stop watching.
            await gateway.stopped.wait()
            nursery.cancel_scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        logs.shutdown()  # bounded: a stuck stderr cannot hang the exit


def _main(argv: list[str] | None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["check-handler"]:
        from .check import main as check_main

        return check_main(args_list[1:])
    if args_list[:1] == ["status"]:
        from .status import main as status_main

        return status_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    logs.set_access_log(args.access_log == "on")
    logs.setup(getattr(logging, args.log_level.upper()), args.log_format)
    try:
        handler = shlex.split(args.handler)
    except ValueError as exc:
        _say(f"tgate: error: cannot parse --handler: {exc}")
        return 2
    if not handler:
        _say("tgate: error: --handler is empty")
        return 2
    try:
        settings = Settings(
            bufsize=args.bufsize,
            max_bufsize=args.max_bufsize,
            update_time=args.update_time,
            max_output=args.max_output,
            quarantine_after=args.quarantine_after,
            framing=args.framing,
            workers=args.workers,
            max_channels_per_client=args.max_channels_per_client,
        )
    except ValueError as exc:
        _say(f"tgate: error: {exc}")
        return 2
    options = Options(
        handler=handler,
        host=args.host,
        port=args.port,
        listen_count=args.listen_count,
        handler_timeout=args.handler_timeout,
        shutdown_grace=args.shutdown_grace,
        on_crash=args.on_crash,
        max_clients=args.max_clients,
        max_clients_per_ip=args.max_clients_per_ip,
        idle_timeout=args.idle_timeout,
        metrics=args.metrics,
        drain_timeout=args.drain_timeout,
    )
    _raise_nofile_limit()
    gateway = Gateway(options, settings)
    errors: list[BaseException] = []
    try:
        trio.run(_run, gateway, args.host)
    except* (HandlerStartError, ListenError) as group:
        errors.extend(_leaves(group))
    for err in errors:
        _say(f"tgate: error: {err}")
    return 1 if errors else 0
