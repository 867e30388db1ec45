"""``tgate check-handler "CMD"``: drive a handler through protocol v1 as a fake gateway.

The checker plays tgate's side of docs/protocol.md from a script: it starts the
handler command (split like a shell would, no shell), sends ``hello``,
``connect``, ``data``, ``tick`` and ``disconnect`` lines (``frame`` and ``eof``
with ``--framing``), and checks every line the handler writes back. The handler
is a black box (an echo, a chat, a line server...), so the checks are the
protocol's own rules plus invariants that hold for any handler fit to sit
behind TCP (the same bytes give the same output however they are split).

It fails fast: a first check, ``speaks-protocol``, gives a program that is not
a handler at all (``cat`` echoing our messages, a crash at start, silence,
junk, a handler that does not serve the mode) one verdict with its stderr,
and the scenarios are then reported as not run. Every scenario runs fresh
handler processes, one at a time, each under ``--timeout``; a scenario stops
its runs at the first that times out. Whatever happens, the handler's process
group is closed like tgate does it (stdin EOF, grace, SIGTERM, grace, SIGKILL)
and reaped.

What the checker has to assume, being unable to read the handler's mind:

- A handler reads its stdin in order (so an answer to a later message proves
  an earlier ``disconnect`` was read).
- A handler's output depends only on the bytes its clients send, not on time,
  chance or the client ids. A handler that writes to other clients than the
  sender (a chat) is recognised with a bystander client, and then the
  per-client streams of many interleaved clients are not compared.

The modules, in the order a run uses them:

- ``command``: the command line, `main`;
- ``runner``: the whole check (probe, scenarios, ``valid-lines``);
- ``probe``: the first check, ``speaks-protocol``;
- ``scenarios_raw`` / ``scenarios_framed``: the scenarios of each mode;
- ``checker``: runs (one handler process each) and verdicts;
- ``session``: the gateway's side of the protocol, validating every reply;
- ``driver``: the process, its pipes, timeouts and stderr;
- ``report``: the table and the closing ``N passed, M failed`` line;
- ``common``: the probe bytes, limits and text helpers.

Usage: ``tgate check-handler "python3 my_handler.py" [--timeout S] [--framing MODE]
[--scenario NAME]... [--verbose]``, or ``python -m tgate.check "python3 my_handler.py"``.
"""

from .command import main
from .common import BINARY, FRAMES, PROBE
from .report import Row, render
from .runner import check

__all__ = ["BINARY", "FRAMES", "PROBE", "Row", "check", "main", "render"]
