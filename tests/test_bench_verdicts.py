"""bench/run.py's verdicts (issue 21): every repeat counts, a goal that lacks
a cell is SKIP (never PASS), and a FAIL makes the script exit non-zero.

The verdict logic is pure functions of the recorded runs; this imports them
from the script's file, without running any benchmark.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = REPO / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("tgate_bench_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def run(bench: ModuleType, row: str, server: str, rate: float, *, ok: bool = True,
        errors: int = 0, p50: float = 100.0) -> Any:
    mode = "churn" if row.startswith("churn") else "closed"
    data: dict[str, Any] = {
        "mode": mode, "rps": rate, "conn_per_s": rate, "requests": 1000 if ok else 0,
        "p50_us": p50, "p99_us": 2 * p50, "errors": errors,
    }
    return bench.Result(row, server, ok=ok, data=data if ok else {})


def every_cell(bench: ModuleType, repeats: int = 3) -> dict[tuple[str, str], list[Any]]:
    """Every row x server, every repeat clean, every goal met."""
    rates = {"tgate-py": 100_000.0, "tgate-node": 100_000.0, "tgate-py-line": 90_000.0,
             "trio": 80_000.0, "socat": 1_000.0}
    return {
        (row.name, srv): [run(bench, row.name, srv, rate) for _ in range(repeats)]
        for row in bench.ROWS for srv, rate in rates.items()
    }


def verdict(verdicts: list[tuple[str, str, str]], number: int) -> tuple[str, str]:
    for name, v, detail in verdicts:
        if name.startswith(f"{number}."):
            return v, detail
    raise AssertionError(f"no goal {number} in {verdicts}")


def test_all_clean_cells_pass_and_exit_zero(bench: ModuleType) -> None:
    verdicts = bench.goals(every_cell(bench))
    assert [v for _, v, _ in verdicts] == ["PASS"] * 5, verdicts
    assert bench.exit_status(verdicts) == 0


def test_two_of_three_failed_repeats_fail_the_goal(bench: ModuleType) -> None:
    runs = every_cell(bench)
    # the one good repeat alone would pass goal 1 by a wide margin
    runs[("closed-50", "tgate-py")] = [
        run(bench, "closed-50", "tgate-py", 0, ok=False),
        run(bench, "closed-50", "tgate-py", 200_000.0),
        run(bench, "closed-50", "tgate-py", 0, ok=False),
    ]
    verdicts = bench.goals(runs)
    v, detail = verdict(verdicts, 1)
    assert v == "FAIL"
    assert "closed-50/tgate-py FAIL(2/3 failed)" in detail
    assert bench.exit_status(verdicts) != 0


def test_errors_in_a_repeat_that_is_not_the_median_fail_the_goal(bench: ModuleType) -> None:
    runs = every_cell(bench)
    runs[("pipelined-50", "trio")] = [
        run(bench, "pipelined-50", "trio", 10.0, errors=3),  # the slowest: not the median
        run(bench, "pipelined-50", "trio", 80_000.0),
        run(bench, "pipelined-50", "trio", 81_000.0, errors=1),  # the fastest
    ]
    assert bench.median_run(runs[("pipelined-50", "trio")]).rate == 80_000.0
    assert bench.cell_verdict(runs[("pipelined-50", "trio")]) == "FAIL(2/3 errored)"
    v, detail = verdict(bench.goals(runs), 2)
    assert v == "FAIL" and "FAIL(2/3 errored)" in detail


def test_cell_verdict_counts_failed_and_errored_repeats(bench: ModuleType) -> None:
    good = run(bench, "closed-1", "trio", 1.0)
    failed = run(bench, "closed-1", "trio", 0, ok=False)
    errored = run(bench, "closed-1", "trio", 1.0, errors=1)
    assert bench.cell_verdict([good, good, good]) == ""
    assert bench.cell_verdict([failed, errored, good]) == "FAIL(1/3 failed, 1/3 errored)"
    assert bench.cell_verdict([failed]) == "FAIL(1/1 failed)"


def test_a_goal_lacking_a_cell_is_skip_not_pass(bench: ModuleType) -> None:
    runs = every_cell(bench)
    del runs[("churn-8", "socat")]
    for row in ("closed-1", "pipelined-500"):
        del runs[(row, "tgate-node")]
    verdicts = bench.goals(runs)
    assert verdict(verdicts, 4) == ("SKIP", "not measured: churn-8/socat")
    v, detail = verdict(verdicts, 5)  # the rows that were measured all pass
    assert v == "SKIP"
    assert "closed-1/tgate-node" in detail and "pipelined-500/tgate-node" in detail
    assert verdict(verdicts, 1)[0] == "PASS"
    assert bench.exit_status(verdicts) == 0  # SKIP is not a failure


def test_a_failed_cell_beats_a_missing_one(bench: ModuleType) -> None:
    runs = every_cell(bench)
    del runs[("churn-8", "socat")]
    runs[("churn-8", "trio")][1] = run(bench, "churn-8", "trio", 0, ok=False)
    v, detail = verdict(bench.goals(runs), 4)
    assert v == "FAIL"
    assert "churn-8/trio FAIL(1/3 failed)" in detail and "churn-8/socat" in detail


def test_numbers_below_the_goal_fail_and_exit_non_zero(bench: ModuleType) -> None:
    runs = every_cell(bench)
    runs[("closed-50", "tgate-py")] = [run(bench, "closed-50", "tgate-py", 50_000.0)] * 3
    verdicts = bench.goals(runs)
    assert verdict(verdicts, 1)[0] == "FAIL"
    assert bench.exit_status(verdicts) == 1
    assert bench.exit_status([("x", "PASS", ""), ("y", "SKIP", "")]) == 0
