"""The performance benchmark's verdicts and the limit it prints with a miss, on figures made up
here: every subset of rows judged without a KeyError, no division by a zero count, a limit that
never claims a negative remainder, and a missed row's limit in the rendered report."""

from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from perf.run import (
    ROWS,
    Figures,
    Measurement,
    judge,
    limit_text,
    render,
    workers_limit,
)


def measured(name: str, cpu_ms: float | None, rps: float = 1000.0, **extra: object) -> Measurement:
    base = Measurement(
        name=name,
        expected="OK",
        seconds=6.0,
        codes={"OK": int(rps * 6)},
        reasons={},
        messages={},
        rps=rps,
        expected_rps=rps,
        p50_ms=10.0,
        p99_ms=20.0,
        by_code_ms={"OK": (10.0, 20.0)},
        cpu_ms_per_call=cpu_ms,
        server_cpu_share=1.0,
        worker_cpu=[1.0],
        load_cpu_share=0.5,
        stub_cpu_share=0.1,
        machine_busy=0.8,
        rss_mib=[100.0],
        connections=[64],
        trailer_bytes=None,
    )
    return replace(base, **extra)  # type: ignore[arg-type]


def every_measurement() -> dict[str, Measurement]:
    return {
        "boto3": measured("boto3", 1.5),
        "bare_forward": measured("floor", 0.9),
        "allowed": measured("allowed", 1.6, rps=600),
        "bare_allowed": measured("bare", 0.4),
        "bare_denied": measured("bare abort", 0.5, expected="PERMISSION_DENIED"),
        "denied": measured("denied", 0.7, expected="PERMISSION_DENIED"),
        "latency100": measured("256", 2.0, rps=480, server_cpu_share=0.98),
        "latency1s": measured("2048", 2.3, rps=420, server_cpu_share=0.96),
        "bare_latency1s": measured("bare 2048", 0.5, rps=1700),
        "workers2_denied": measured("two", 0.9, rps=1300, worker_cpu=[0.1, 3.0, 3.0]),
    }


def figures(m: dict[str, Measurement]) -> Figures:
    return Figures(
        m,
        started={"1 worker": 1.6, "2 workers": 1.9},
        start_cpu={"1 worker": 1.2, "2 workers": 2.5},
        memory={"1 worker": 165.0},
        memory_context={
            **{"attrgate idle": 109.0, "attrgate before 2048": 112.0},
            **{"attrgate after 2048": 165.0, "bare idle": 62.0, "bare peak": 119.0},
        },
        shares=[0.5, 0.5],
        workers_available=True,
    )


@pytest.mark.parametrize(
    "rows",
    [set(c) for n in range(1, len(ROWS) + 1) for c in itertools.combinations(ROWS, n)],
    ids=lambda rows: ",".join(sorted(rows)),
)
def test_every_subset_of_rows_is_judged(rows: set[str]) -> None:
    table = judge(figures(every_measurement()), rows)
    assert table
    for row in table:
        assert row.met in (True, False, None)


def test_a_missed_row_prints_its_limit() -> None:
    table = judge(figures(every_measurement()), set(ROWS))
    by_name = {row.scenario: row for row in table}
    allowed = by_name["server CPU per allowed request"]
    assert allowed.met is False  # 1.6 ms against 1.5 ms
    report = render({"rows": [row.__dict__ for row in table], "measurements": {}})
    assert f"server CPU per allowed request, limit: {allowed.limit}" in report
    # floor 0.9 + decision 0.2 = 1.1 ms; 0.5 ms left.
    assert "costs 0.60x" in allowed.limit
    assert "0.73x" in allowed.limit
    assert "remaining 0.50 ms" in allowed.limit
    memory = by_name["peak RSS per worker (VmHWM)"]
    assert "from 112 to 165 MiB" in memory.limit
    assert "62 to 119 MiB" in memory.limit
    throughput = by_name["2048 in flight, 1000 ms upstream"]
    assert "(0.70: more connections" in throughput.limit  # 1.6 / 2.3
    # A met row prints no limit line.
    met = [row for row in table if row.met is True]
    for row in met:
        assert f"{row.scenario}, limit:" not in report


def test_no_negative_remainder_is_claimed() -> None:
    m = every_measurement()
    m["allowed"] = measured("allowed", 1.0)  # below floor + decision (1.1 ms)
    text = limit_text("server CPU per allowed request", m)
    assert "nothing measurable left" in text
    assert "-0." not in text


def test_workers_limit_with_no_expected_answer_does_not_divide_by_zero() -> None:
    one = measured("denied", 0.7, expected="PERMISSION_DENIED", expected_rps=0.0)
    text = workers_limit(one)
    assert "calls/s" in text
    assert workers_limit(measured("nothing", None, rps=0.0)) == ""
