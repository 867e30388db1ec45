"""Does the test suite notice when a headline feature breaks? (issue 21)

    python bench/mutate.py               # every mutation (~2-4 min on 2 cores)
    python bench/mutate.py --list        # the mutations and the tests each runs
    python bench/mutate.py --only read-pause,half-close
    python bench/mutate.py --keep        # keep the temporary copies, for a look

Each mutation is one deliberate break, (file, exact old text, new text),
of one headline feature. For each, src/, adapters/, tests/, examples/ and
pyproject.toml are copied to a fresh temporary directory, the break is
applied there (never in the checkout), and the tests chosen for that
feature run in the copy with PYTHONPATH=COPY/src:COPY/adapters/python, so
that the copy's code is what runs, in pytest and in every tgate process the
tests start (a pytest plugin checks tgate.__file__ and tgate_handler.__file__
inside the run, in-process and in a subprocess, and stops the run if they
are not the copy's). The suite must FAIL for every break:

    CAUGHT   the tests failed (or hung past --timeout)
    MISSED   the tests passed with the feature broken
    STALE    the old text is not in the file exactly once (the code moved
             on: update the anchor below)
    ERROR    pytest could not run the selection (exit status 2-5: a test
             id that no longer exists, a usage error, the plugin's check)

First, one baseline run of every selected test on an unbroken copy: a test
that fails there is deselected from the mutant runs (and reported), so that
it cannot pass for CAUGHT. Prints a table; exits 1 if any mutation is not
CAUGHT (or the baseline could not run), else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COPIED = ["src", "adapters", "tests", "examples", "pyproject.toml"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "node_modules",
                                ".mypy_cache", ".ruff_cache")
FD = "tests/test_front_door.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str          # the break, in words
    file: str          # relative to the repo
    old: str           # exact text, must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest selection (files or node ids)


MUTATIONS = [
    Mutation("crash-replay", "a new handler is not replayed the bytes in flight",
             "src/tgate/core.py", "c.buffer.rewind()", "pass",
             ("tests/test_gateway.py::test_crashed_handler_is_replaced_and_replayed",
              "tests/test_resilience.py::test_fifty_clients_survive_kills_and_reloads[py]")),
    Mutation("sighup-reload", "SIGHUP does nothing",
             "src/tgate/cli.py", "gateway.reload()", "pass",
             (f"{FD}::test_sighup_reloads_under_load_and_every_reply_arrives_once_in_order",)),
    Mutation("quarantine", "a poison client is never quarantined",
             "src/tgate/quarantine.py", "if c.strikes < self.limit:", "if True:",
             ("tests/test_resilience.py::test_poison_message_is_quarantined_others_keep_going",
              f"{FD}::test_flag_takes_effect[--quarantine-after]")),
    Mutation("hang-timer", "any handler output restarts the hang timer of every owed reply",
             "src/tgate/core.py", "        self._output_gen += 1\n",
             "        self._output_gen += 1\n"
             "        for _c in self.clients.values():\n"
             "            _c.sent_at = self.clock()\n",
             (f"{FD}::test_hang_timer_counts_from_the_oldest_unanswered_data",
              "tests/test_resilience.py::test_hung_handler_is_killed_and_replaced")),
    Mutation("overflow", "a full buffer the handler consumes nothing of is kept",
             "src/tgate/core.py", "elif held >= b.max_size:", "elif False:",
             ("tests/test_gateway.py::test_overflow_disconnects_and_tells_handler",
              f"{FD}::test_flag_takes_effect[--max-bufsize]")),
    Mutation("slow-client", "a client past --max-output is never disconnected",
             "src/tgate/core.py", "if len(c.out) > limit and", "if False and",
             ("tests/test_limits.py::test_handler_flooding_a_non_reader_disconnects_it_as_slow",
              f"{FD}::test_flag_takes_effect[--max-output]")),
    Mutation("read-pause", "no read pause at half of --max-output (end-to-end test only)",
             "src/tgate/core.py", "            and len(c.out) < self._out_high\n", "",
             (f"{FD}::test_reading_pauses_at_half_max_output_before_the_client_is_slow",)),
    Mutation("framing-split", "line framing misses a newline that ends a read",
             "src/tgate/framing.py", 'end = buf.find(b"\\n", self._scanned)',
             'end = buf.find(b"\\n", self._scanned + 1)',
             ("tests/test_framing_e2e.py::test_echo_split_at_every_byte_boundary[py-line]",
              f"{FD}::test_flag_takes_effect[--framing]")),
    Mutation("check-handler", "`tgate check-handler` is not a subcommand",
             "src/tgate/cli.py", 'if args_list[:1] == ["check-handler"]:', "if False:",
             (f"{FD}::test_check_handler_subcommand_passes_the_echo_example",)),
    Mutation("cli-flag", "--handler-timeout does not reach the gateway",
             "src/tgate/cli.py", "        handler_timeout=args.handler_timeout,\n", "",
             (f"{FD}::test_flag_takes_effect[--handler-timeout]",)),
    Mutation("half-close", "a client's EOF is not passed on",
             "src/tgate/clients.py", "core.received_eof(c)", "pass",
             ("tests/test_gateway.py::test_half_close_delivers_then_closes[py]",
              "tests/test_gateway.py::test_half_close_last_partial_message_reaches_handler")),
]

PLUGIN = '''"""bench/mutate.py: stop the run unless the copy's code is the code under test."""
import os, subprocess, sys
from pathlib import Path

import pytest


def pytest_configure(config):
    root = Path(os.environ["TGATE_MUTATE_ROOT"]).resolve()
    import tgate, tgate_handler
    here = [tgate.__file__, tgate_handler.__file__]
    code = "import tgate, tgate_handler; print(tgate.__file__); print(tgate_handler.__file__)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60).stdout.split()
    for path in here + child:
        if not Path(path).resolve().is_relative_to(root):
            raise pytest.UsageError(f"mutate: {path} is not in the copy {root}")
    Path(os.environ["TGATE_MUTATE_REPORT"]).write_text("\\n".join(here + child))
'''


def make_copy(parent: Path, name: str) -> Path:
    root = parent / name
    root.mkdir()
    for item in COPIED:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=IGNORE, symlinks=True)
        else:
            shutil.copy2(src, root / item)
    return root


def apply(root: Path, m: Mutation) -> str | None:
    """Apply the break; an error text if its anchor is not there exactly once."""
    path = root / m.file
    try:
        text = path.read_text()
    except OSError as exc:
        return f"{m.file}: {exc.strerror}"
    n = text.count(m.old)
    if n != 1:
        return f"{m.file}: old text found {n} times: {m.old.strip()!r}"
    path.write_text(text.replace(m.old, m.new))
    return None


def run_pytest(root: Path, plugin_dir: Path, tests: list[str], extra: list[str],
               timeout: float) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, output, seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root / "src"), str(root / "adapters" / "python"), str(plugin_dir)])
    env["TGATE_MUTATE_ROOT"] = str(root)
    env["TGATE_MUTATE_REPORT"] = str(root / "code-under-test.txt")
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "-p", "tgate_mutate_check", *extra, *tests]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out.decode(errors="replace"), time.monotonic() - t0


def failed_ids(output: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)


def tail(text: str, n: int = 25) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-n:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated mutation names")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per pytest run; a mutant run past it counts as CAUGHT")
    p.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = p.parse_args()

    chosen = MUTATIONS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTATIONS}
        if unknown:
            p.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}\n  {m.file}: {m.old.strip()!r} -> {m.new.strip()!r}")
            for t in m.tests:
                print(f"  runs {t}")
        return 0

    started = time.monotonic()
    parent = Path(tempfile.mkdtemp(prefix="tgate-mutate-"))
    plugin_dir = parent / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "tgate_mutate_check.py").write_text(PLUGIN)
    rows: list[tuple[str, str, str, str]] = []
    bad = 0
    try:
        # Baseline: the unbroken copy must pass what the mutants run.
        selection = list(dict.fromkeys(t for m in chosen for t in m.tests))
        base = make_copy(parent, "baseline")
        print(f"baseline: {len(selection)} selections on an unbroken copy ...", flush=True)
        code, out, secs = run_pytest(base, plugin_dir, selection, [], args.timeout * 2)
        deselect: list[str] = []
        if code == 0:
            report = (base / "code-under-test.txt").read_text().split()
            print(f"baseline: passed in {secs:.0f} s; code under test: {report[0]}", flush=True)
        elif code == 1:
            deselect = failed_ids(out)
            print(f"baseline: FAILED in {secs:.0f} s: {len(deselect)} test(s) fail without "
                  "any break; deselected from the mutant runs:", flush=True)
            for t in deselect:
                print(f"  {t}")
            bad += 1
        else:
            print(f"baseline: pytest could not run (status {code}):\n{tail(out)}", flush=True)
            return 1
        if args.verbose:
            print(tail(out, 60))

        for m in chosen:
            root = make_copy(parent, m.name)
            err = apply(root, m)
            tests = ", ".join(t.removeprefix("tests/") for t in m.tests)
            if err:
                rows.append((m.name, tests, "STALE", err))
                bad += 1
                print(f"{m.name}: STALE ({err})", flush=True)
                continue
            extra = ["-x"] + [a for t in deselect for a in ("--deselect", t)]
            code, out, secs = run_pytest(root, plugin_dir, list(m.tests), extra, args.timeout)
            if code == 1:
                first = failed_ids(out)[:1]
                verdict, note = "CAUGHT", ("failed: " + first[0].split("::")[-1]
                                           if first else "failed")
            elif code is None:
                verdict, note = "CAUGHT", f"hung: killed after {args.timeout:.0f} s"
            elif code == 0:
                verdict, note = "MISSED", "the tests passed with the feature broken"
            else:
                verdict, note = "ERROR", f"pytest status {code}"
            if verdict != "CAUGHT":
                bad += 1
            rows.append((m.name, tests, verdict, f"{note} [{secs:.0f} s]"))
            print(f"{m.name}: {verdict} [{secs:.0f} s]", flush=True)
            if args.verbose or verdict == "ERROR":
                print(tail(out, 60 if args.verbose else 15))
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
        else:
            print(f"copies kept in {parent}")

    print()
    print("| mutation | tests run | result | detail |")
    print("|---|---|---|---|")
    for name, tests, verdict, note in rows:
        print(f"| {name} | {tests} | {verdict} | {note} |")
    print()
    caught = sum(1 for r in rows if r[2] == "CAUGHT")
    print(f"{caught}/{len(rows)} caught in {time.monotonic() - started:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
