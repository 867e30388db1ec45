"""Command line: ``tgate --handler CMD [options]`` and ``tgate check-handler CMD``."""

from __future__ import annotations

import argparse
import logging
import resource
import shlex
import signal
import sys

import trio

from . import __version__
from .buffer import DEFAULT_BUFSIZE, MAX_BUFSIZE
from .core import DEFAULT_MAX_OUTPUT, DEFAULT_QUARANTINE_AFTER, Settings
from .framing import FRAMINGS
from .server import DEFAULT_LISTEN_COUNT, DEFAULT_MAX_CLIENTS, Gateway, ListenError, Options
from .supervisor import HandlerStartError

log = logging.getLogger("tgate")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    p.add_argument("--port", type=int, default=7000, help="TCP port (0: pick a free one)")
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
    p.add_argument("--quarantine-after", type=int, default=DEFAULT_QUARANTINE_AFTER,
                   help="disconnect a client whose bytes were in flight at this many "
                   "consecutive handler crashes (0: never)")
    p.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS,
                   help="at this many clients, new connections wait in the listen backlog "
                   "until one leaves (0: no limit but the open-file limit)")
    p.add_argument("--max-clients-per-ip", type=int, default=0,
                   help="close new connections from a peer address that already has this "
                   "many (0: no limit)")
    p.add_argument("--idle-timeout", type=_nonneg_float, default=0.0,
                   help="disconnect clients that sent nothing for this many seconds "
                   "(reason idle; 0: never)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="log verbosity")
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
            print(f"tgate listening on {shown}:{port}", file=sys.stderr, flush=True)

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP: reloading the handler")
                        gateway.reload()
                    else:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        gateway.stop()

            nursery.start_soon(watch_signals)
            # serve() returns after an orderly shutdown; then stop watching.
            await gateway.stopped.wait()
            nursery.cancel_scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["check-handler"]:
        from .check import main as check_main

        return check_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="tgate: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        handler = shlex.split(args.handler)
    except ValueError as exc:
        print(f"tgate: error: cannot parse --handler: {exc}", file=sys.stderr)
        return 2
    if not handler:
        print("tgate: error: --handler is empty", file=sys.stderr)
        return 2
    try:
        settings = Settings(
            bufsize=args.bufsize,
            max_bufsize=args.max_bufsize,
            update_time=args.update_time,
            max_output=args.max_output,
            quarantine_after=args.quarantine_after,
            framing=args.framing,
        )
    except ValueError as exc:
        print(f"tgate: error: {exc}", file=sys.stderr)
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
    )
    _raise_nofile_limit()
    gateway = Gateway(options, settings)
    errors: list[BaseException] = []
    try:
        trio.run(_run, gateway, args.host)
    except* (HandlerStartError, ListenError) as group:
        errors.extend(_leaves(group))
    for err in errors:
        print(f"tgate: error: {err}", file=sys.stderr)
    return 1 if errors else 0
