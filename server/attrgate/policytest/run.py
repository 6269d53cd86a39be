"""Running the cases: each decided by the server's own pipeline (validate, engine, pool schema
and pending verification against the suite's fixtures, SMS country rules and trigger), exactly
as CheckUpdateUserAttributes decides it, with the engine's trace feeding coverage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from attrgate.offline import decide, offline_pipeline
from attrgate.policy.compile import PolicySet
from attrgate.policy.trace import Trace
from attrgate.policytest.coverage import Coverage
from attrgate.policytest.expand import Case
from attrgate.policytest.expect import Result, actual_of, agrees, diff, expected_of
from attrgate.policytest.suites import Suite

Status = Literal["pass", "fail", "skip"]


@dataclass(slots=True)
class CaseResult:
    case: Case
    status: Status
    expected: Result
    actual: Result | None  # None when skipped
    seconds: float

    @property
    def diff(self) -> list[str]:
        return diff(self.expected, self.actual) if self.actual is not None else []


@dataclass(slots=True)
class SuiteResult:
    suite: Suite
    cases: list[CaseResult]
    seconds: float

    def count(self, status: Status) -> int:
        return sum(1 for c in self.cases if c.status == status)


def run_suites(
    policy_set: PolicySet,
    suites: Sequence[tuple[Suite, Sequence[Case]]],
    coverage: Coverage,
) -> list[SuiteResult]:
    """Run the selected cases of each suite, in order."""
    results: list[SuiteResult] = []
    # The task returns nothing: asyncio formats a task's result for its repr, and 10,000
    # results cost seconds to format.
    asyncio.run(_run(policy_set, suites, coverage, results))
    return results


async def _run(
    policy_set: PolicySet,
    suites: Sequence[tuple[Suite, Sequence[Case]]],
    coverage: Coverage,
    results: list[SuiteResult],
) -> None:
    expectations: dict[int, Result] = {}  # by TestCase: a matrix's cases share theirs
    clock = time.perf_counter
    for suite, cases in suites:
        pipeline = offline_pipeline(policy_set, suite.pools)
        began = clock()
        done = []
        for case in cases:
            expected = expectations.get(id(case.spec))
            if expected is None:
                expected = expectations[id(case.spec)] = expected_of(case.spec)
            if case.skip is not None:
                done.append(CaseResult(case, "skip", expected, None, 0.0))
                continue
            start = clock()
            trace = Trace(record_policies=False)  # coverage needs only what decided
            actual = actual_of(await decide(pipeline, case.caller, case.request, trace))
            coverage.record(trace)
            status: Status = "pass" if agrees(expected, actual) else "fail"
            done.append(CaseResult(case, status, expected, actual, clock() - start))
        results.append(SuiteResult(suite, done, clock() - began))
