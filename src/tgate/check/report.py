"""The report: a table with one row per scenario, each failure's details, and
the closing ``N passed, M failed`` line (``, K skipped`` when the first check
failed and the scenarios were not run).

Compact by default: the ``seen`` cell is cut to fit a terminal, at most
`MAX_PROBLEMS` problems are listed per failure, and a failing run's stderr is
shown once (the last `STDERR_SHOWN` lines, each cut to `STDERR_WIDTH`
characters; a later failure with the same stderr refers to it). ``--verbose``
shows whole cells, every problem and the stderr kept (its last 200 lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .checker import Verdict

SEEN_WIDTH = 72
MAX_PROBLEMS = 8
STDERR_SHOWN = 15
STDERR_WIDTH = 240


@dataclass
class Row:
    name: str
    expected: str
    verdict: Verdict
    skipped: bool = False  # not run, because the handler failed the first check

    @property
    def ok(self) -> bool:
        """Not a failure (a skipped row has no problems)."""
        return not self.verdict.problems

    @property
    def result(self) -> str:
        if self.skipped:
            return "SKIP"
        return "PASS" if self.ok else "FAIL"


def cell(text: str, width: int | None) -> str:
    """One line of text, cut to `width` characters (None: whole)."""
    text = " ".join(text.split())
    return text if width is None else _cut(text, width)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _stderr(row: Row, shown: dict[tuple[str, ...], str], verbose: bool) -> list[str]:
    tail = row.verdict.stderr
    if not tail:
        return []
    key = tuple(tail)
    if key in shown:
        return [f"  handler stderr: the same as for {shown[key]} above"]
    shown[key] = row.name
    if verbose:
        keep, cut = [text.rstrip() for text in tail], False
    else:
        keep = [_cut(text.rstrip(), STDERR_WIDTH) for text in tail[-STDERR_SHOWN:]]
        cut = len(tail) > len(keep) or any(len(text.rstrip()) > STDERR_WIDTH for text in tail)
    hint = "; --verbose shows more" if cut else ""
    return [
        f"  handler stderr (last {len(keep)} line{'s' if len(keep) > 1 else ''}{hint}):",
        *(f"    | {text}" for text in keep),
    ]


def render(rows: Sequence[Row], framing: str = "raw", verbose: bool = False) -> str:
    width = None if verbose else SEEN_WIDTH
    table = [
        (
            r.name,
            r.expected,
            cell(r.verdict.problems[0] if r.verdict.problems else r.verdict.seen, width),
            r.result,
        )
        for r in rows
    ]
    header = ("scenario", "expected", "seen", "result")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [
        " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    shown: dict[tuple[str, ...], str] = {}
    for r in rows:
        if r.result != "FAIL":
            continue
        problems = r.verdict.problems
        limit = len(problems) if verbose else MAX_PROBLEMS
        lines.append("")
        lines.append(f"FAIL {r.name}: expected {r.expected}")
        lines += [f"  - {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  - ... and {len(problems) - limit} more (--verbose lists them all)")
        lines += _stderr(r, shown, verbose)
    passed = sum(r.result == "PASS" for r in rows)
    failed = sum(r.result == "FAIL" for r in rows)
    skipped = sum(r.skipped for r in rows)
    lines.append("")
    if framing != "raw":
        lines.append(f"(handler driven as tgate --framing {framing} drives it)")
    closing = f"{passed} passed, {failed} failed"
    if skipped:
        closing += f", {skipped} skipped"
    lines.append(closing)
    return "\n".join(lines)
