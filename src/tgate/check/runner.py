"""The whole check: the first check (`probe`), then each chosen scenario, then
the ``valid-lines`` row over every line of every run."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from .checker import Checker, Scenario, Verdict
from .probe import PROBE_NAME, probe
from .probe import expected as probe_expected
from .report import Row
from .scenarios_framed import FRAMED_SCENARIOS
from .scenarios_raw import SCENARIOS

VALID_LINES = "valid-lines"
VALID_EXPECTED = "JSON object/array, known ops, typed fields, data <= U+00FF"


def scenarios_for(framing: str) -> list[Scenario]:
    return SCENARIOS if framing == "raw" else FRAMED_SCENARIOS


async def run_scenario(ck: Checker, scenario: Scenario) -> Row:
    ck.begin(scenario.name)
    try:
        verdict = await scenario.func(ck)
    except Exception as exc:  # a checker bug must not hide the other scenarios
        verdict = Verdict(
            "checker error",
            [f"internal checker error: {exc!r}\n{traceback.format_exc()}"],
            [],
        )
    return Row(scenario.name, scenario.expected, verdict)


async def check(
    argv: list[str], timeout: float, names: Sequence[str], framing: str = "raw"
) -> list[Row]:
    ck = Checker(argv, timeout, framing)
    first = await run_scenario(ck, Scenario(PROBE_NAME, probe_expected(framing), probe))
    chosen = [s for s in scenarios_for(framing) if not names or s.name in names]
    if not first.ok:
        # Not a handler: one verdict, and nothing more to learn from the scenarios.
        skip = Verdict(f"not run: the handler failed {PROBE_NAME}", [], [])
        return [
            first,
            *(Row(s.name, s.expected, skip, skipped=True) for s in chosen),
            Row(VALID_LINES, VALID_EXPECTED, skip, skipped=True),
        ]
    rows = [first, *[await run_scenario(ck, s) for s in chosen]]
    # Every line of every run is checked, whichever scenarios were chosen.
    errors = [e for r in ck.runs for e in r.line_errors]
    count = sum(r.session.line_error_count for r in ck.runs if r.session is not None)
    if count > len(errors):
        errors.append(f"... and {count - len(errors)} more invalid lines not kept")
    total = sum(r.session.line_count for r in ck.runs if r.session is not None)
    seen = f"{total} lines in {len(ck.runs)} runs, all valid"
    if count:
        seen = f"{count} invalid lines or array elements in {total} lines"
    rows.append(Row(VALID_LINES, VALID_EXPECTED, Verdict(seen, errors, [])))
    return rows
