"""`attrgate test PATH...`: run the PolicyTest suites against a policy set.

Exit codes: 0 every selected case passed (and coverage is at least --min-coverage); 2 a usage
error (bad flags, nothing to test, a --filter that selects nothing, a report that cannot be
written); 3 the policy set or a test file is invalid, or a test refers to something unknown
(FILE:LINE: key: message on stderr, as `attrgate check` prints); 4 a case failed, or coverage is
below --min-coverage.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import sys
import time
from collections.abc import Sequence

from attrgate.policy.loading import gc_paused
from attrgate.policytest.coverage import Coverage
from attrgate.policytest.expand import Case
from attrgate.policytest.report import (
    count,
    invalid_junit,
    to_json,
    to_junit,
    write_coverage,
    write_tree,
)
from attrgate.policytest.run import run_suites
from attrgate.policytest.suites import InvalidFiles, Suite, UsageError, load_workspace

EXIT_PASSED = 0
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_FAILED = 4


def _write(path: str, report: bytes) -> bool:
    """Write the JUnit report, its folder made if missing (`--junit reports/x.xml` in a fresh
    CI checkout); False (said on stderr) when it cannot be written."""
    try:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as file:
            file.write(report)
    except OSError as exc:
        print(f"attrgate test: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def run_command(args: argparse.Namespace) -> int:
    # Cases, their requests and results are many small objects that live to the end: the cyclic
    # GC's passes over them would only add time (10,000 cases: about a quarter more).
    with gc_paused():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    if args.junit:
        # Never leave an earlier run's report behind for CI to publish as this run's.
        with contextlib.suppress(OSError):  # the write says what is wrong
            os.unlink(args.junit)
    try:
        workspace = load_workspace(args.paths, args.policies, args.policy_max_bytes)
        selected = _select(workspace.suites, args.filter)
    except UsageError as exc:
        print(f"attrgate test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidFiles as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        if args.junit and not _write(args.junit, invalid_junit(exc.errors)):
            return EXIT_USAGE
        return EXIT_INVALID
    coverage = Coverage(workspace.policies)
    results = run_suites(workspace.policy_set, selected, coverage)
    seconds = time.perf_counter() - began
    cases = sum(len(cases) for _, cases in selected)
    header = (
        f"attrgate test: {count(len(selected), 'suite')}, {count(cases, 'case')} against "
        f"revision {workspace.policy_set.revision} of {workspace.source}"
    )
    junit = to_junit(results, coverage, seconds) if args.junit or args.format == "junit" else b""
    if args.junit and not _write(args.junit, junit):
        return EXIT_USAGE
    out = sys.stdout
    if args.format == "json":
        # One line: the C encoder (an indent makes json use its Python one, 10x slower).
        out.write(json.dumps(to_json(results, coverage)) + "\n")
    elif args.format == "junit":
        out.flush()
        binary = getattr(out, "buffer", None)  # the bytes as declared (UTF-8), whatever the locale
        if binary is not None:
            binary.write(junit)
            binary.flush()
        else:
            out.write(junit.decode())
    else:
        write_tree(out, results, coverage, header, args.coverage, seconds)
    failed = any(c.status == "fail" for r in results for c in r.cases)
    low = args.min_coverage is not None and coverage.percent < args.min_coverage
    if low:
        # On stderr: stdout may be JSON or XML.
        print(
            f"attrgate test: coverage {coverage.shown(1):.1f} % is below --min-coverage "
            f"{args.min_coverage:g}; not exercised:",
            file=sys.stderr,
        )
        write_coverage(sys.stderr, coverage, only_missed=True)
    return EXIT_FAILED if failed or low else EXIT_PASSED


def _select(suites: Sequence[Suite], globs: Sequence[str]) -> list[tuple[Suite, Sequence[Case]]]:
    """The suites and cases --filter selects: a glob matches a suite's name (all its cases) or
    SUITE/CASE (one expanded case). No filter: everything."""
    if not globs:
        return [(s, s.cases) for s in suites]
    selected: list[tuple[Suite, Sequence[Case]]] = []
    for suite in suites:
        if any(fnmatch.fnmatchcase(suite.name, g) for g in globs):
            selected.append((suite, suite.cases))
            continue
        cases = [
            c
            for c in suite.cases
            if any(fnmatch.fnmatchcase(f"{suite.name}/{c.name}", g) for g in globs)
        ]
        if cases:
            selected.append((suite, cases))
    if not selected:
        raise UsageError(f"--filter {' '.join(globs)} selects no suite and no case")
    return selected
