"""The command line: ``tgate check-handler [--framing MODE] [--timeout S]
[--scenario NAME]... [--verbose] CMD``."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys

import trio

from tgate.framing import FRAMINGS

from .probe import PROBE_NAME
from .report import render
from .runner import VALID_LINES, check, scenarios_for
from .scenarios_framed import FRAMED_SCENARIOS
from .scenarios_raw import SCENARIOS


def _parser() -> argparse.ArgumentParser:
    names = list(dict.fromkeys(s.name for s in [*SCENARIOS, *FRAMED_SCENARIOS]))
    parser = argparse.ArgumentParser(
        prog="tgate check-handler",
        description=(
            "Check that a handler command speaks tgate protocol v1, by driving fresh "
            "handler processes through scripted scenarios as a fake gateway. A first "
            f"check ({PROBE_NAME}) stops at once a program that is not a handler (it "
            "echoes its input, exits at start, stays silent): the scenarios are then "
            "not run."
        ),
    )
    parser.add_argument("command", help='handler command, one string: "python3 handler.py"')
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds allowed for each handler run, the first answer included (default 5); "
        "after a run times out, the rest of its scenario is not run",
    )
    parser.add_argument(
        "--framing",
        choices=FRAMINGS,
        default="raw",
        help="drive the handler as tgate --framing MODE does (default raw): frame and eof "
        "messages instead of data, no consumed",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=names,
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(names)} (one-data and "
        f"split are raw only, frames framed only); {PROBE_NAME} always runs first and the "
        f"{VALID_LINES} row always covers the lines of every run",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show whole table cells, every problem and more of the handler's stderr",
    )
    return parser


def main(argv: list[str]) -> int:
    """CLI entry: ``tgate check-handler "CMD" [--timeout S] [--framing MODE]
    [--scenario NAME]... [--verbose]``. Returns the exit status: 0 all passed,
    1 a failure, 2 the command cannot be run."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        command = shlex.split(args.command)
    except ValueError as exc:
        parser.error(f"cannot split the handler command: {exc}")
    if not command:
        parser.error("the handler command is empty")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    available = [s.name for s in scenarios_for(args.framing)]
    for name in args.scenario:
        if name not in available:
            parser.error(
                f"scenario {name!r} is not run with --framing {args.framing} "
                f"(choose from {', '.join(available)})"
            )
    if shutil.which(command[0]) is None:
        print(
            f"tgate check-handler: cannot run {command[0]!r}: not found or not executable",
            file=sys.stderr,
        )
        return 2
    rows = trio.run(check, command, float(args.timeout), list(args.scenario), args.framing)
    print(render(rows, args.framing, args.verbose), flush=True)
    return 0 if all(r.ok for r in rows) else 1
