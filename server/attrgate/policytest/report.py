"""The three shapes of a test run: a tree for people, JSON for tools, JUnit XML for CI.

Every value shown comes from the test files (case names, the keys a case expects), from the
policies (names, entries, file:line) or from the decision (codes, stages, countries): no
attribute value that a test file did not hold, and nothing else personal.
"""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, TextIO

from attrgate.display import printable
from attrgate.policytest.coverage import Coverage
from attrgate.policytest.expect import failure_message
from attrgate.policytest.run import CaseResult, SuiteResult

_MARKS = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}


def summary(results: Sequence[SuiteResult]) -> dict[str, int]:
    cases = [c for s in results for c in s.cases]
    return {
        "cases": len(cases),
        "passed": sum(1 for c in cases if c.status == "pass"),
        "failed": sum(1 for c in cases if c.status == "fail"),
        "skipped": sum(1 for c in cases if c.status == "skip"),
    }


def count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


# -- tree ----------------------------------------------------------------------------------------


def write_tree(
    out: TextIO,
    results: Sequence[SuiteResult],
    coverage: Coverage,
    header: str,
    list_coverage: bool,
    seconds: float,
) -> None:
    print(header, file=out)
    for result in results:
        suite = result.suite
        print(f"\n{printable(suite.name)}  {printable(suite.file)}", file=out)
        for case in result.cases:
            _tree_case(out, case)
    counts = summary(results)
    print(
        f"\n{count(counts['cases'], 'case')}: {counts['passed']} passed, {counts['failed']} "
        f"failed, {counts['skipped']} skipped in {seconds:.2f} s",
        file=out,
    )
    done, total = coverage.counts
    if list_coverage:
        write_coverage(out, coverage)
    else:
        print(
            f"coverage: {coverage.shown(1):.1f} % ({done} of {total} entries exercised; "
            "--coverage lists them)",
            file=out,
        )


def _tree_case(out: TextIO, result: CaseResult) -> None:
    case = result.case
    line = f"  {_MARKS[result.status]}  {printable(case.name)}"
    if result.status == "skip":
        print(f"{line}  (skipped: {printable(case.skip or '')})", file=out)
        return
    if result.status == "pass":
        print(line, file=out)
        return
    assert result.actual is not None
    message = failure_message(result.expected, result.actual)
    print(f"{line}\n        {case.file}:{case.line}: {message} (- expected, + actual)", file=out)
    for text in result.diff:
        print(f"        {printable(text)}", file=out)


def write_coverage(out: TextIO, coverage: Coverage, only_missed: bool = False) -> None:
    done, total = coverage.counts
    if not only_missed:
        print(
            f"coverage: {coverage.shown(1):.1f} % ({done} of {total} entries exercised)", file=out
        )
    rows = [
        (
            "exercised" if coverage.exercised(e) else "MISSED",
            e.policy,
            e.entry,
            printable(e.name),
            f"{e.file}:{e.line}",
        )
        for e in coverage.entries
        if not (only_missed and coverage.exercised(e))
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print(f"  {'  '.join(cells)}  {row[4]}", file=out)


# -- JSON ----------------------------------------------------------------------------------------


def to_json(results: Sequence[SuiteResult], coverage: Coverage) -> dict[str, Any]:
    return {
        "summary": summary(results),
        "suites": [
            {
                "name": r.suite.name,
                "file": r.suite.file,
                "cases": [
                    {
                        "name": c.case.name,
                        "status": c.status,
                        "expected": c.expected,
                        "actual": c.actual,
                    }
                    for c in r.cases
                ],
            }
            for r in results
        ],
        "coverage": {
            "percent": coverage.shown(2),
            "entries": [
                {
                    "policy": e.policy,
                    "entry": e.entry,
                    "file": e.file,
                    "line": e.line,
                    "exercised": coverage.exercised(e),
                }
                for e in coverage.entries
            ],
        },
    }


# -- JUnit XML -----------------------------------------------------------------------------------

# What XML 1.0 cannot hold at all (control characters but tab and newlines, lone surrogates).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def to_junit(results: Sequence[SuiteResult], coverage: Coverage, seconds: float) -> bytes:
    """One <testsuite> per PolicyTest, one <testcase> per expanded case, the diff as the
    failure's text; the run's coverage as properties of every suite (JUnit has no place for
    properties of the whole run)."""
    counts = summary(results)
    root = ET.Element(
        "testsuites",
        name="attrgate test",
        tests=str(counts["cases"]),
        failures=str(counts["failed"]),
        errors="0",
        skipped=str(counts["skipped"]),
        time=f"{seconds:.3f}",
    )
    # UTC, without an offset: the JUnit schema's timestamp has none.
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    done, total = coverage.counts
    properties = [
        ("attrgate.coverage.percent", f"{coverage.shown(2):.2f}"),
        ("attrgate.coverage.exercised", str(done)),
        ("attrgate.coverage.entries", str(total)),
    ]
    properties += [
        ("attrgate.coverage.missed", f"{e.policy} {e.entry} {e.name} {e.file}:{e.line}")
        for e in coverage.entries
        if not coverage.exercised(e)
    ]
    for result in results:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_xml(result.suite.name),
            tests=str(len(result.cases)),
            failures=str(result.count("fail")),
            errors="0",
            skipped=str(result.count("skip")),
            time=f"{result.seconds:.3f}",
            timestamp=stamp,
            file=_xml(result.suite.file),
        )
        listed = ET.SubElement(suite, "properties")
        for name, value in properties:
            ET.SubElement(listed, "property", name=name, value=_xml(value))
        for case in result.cases:
            _junit_case(suite, case)
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def invalid_junit(errors: Sequence[object]) -> bytes:
    """The report of a run that found invalid files (exit 3): one errored case holding every
    FILE:LINE error, so CI shows why nothing ran instead of an earlier run's report."""
    attributes = {"tests": "1", "failures": "0", "errors": "1", "skipped": "0", "time": "0.000"}
    root = ET.Element("testsuites", {"name": "attrgate test", **attributes})
    suite = ET.SubElement(root, "testsuite", {"name": "attrgate test", **attributes})
    case = ET.SubElement(suite, "testcase", name="policy and test files", classname="attrgate")
    error = ET.SubElement(
        case, "error", message=f"{count(len(errors), 'invalid file error')}: nothing ran"
    )
    error.text = _xml("\n".join(str(e) for e in errors))
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def _junit_case(suite: ET.Element, result: CaseResult) -> None:
    case = result.case
    element = ET.SubElement(
        suite,
        "testcase",
        name=_xml(case.name),
        classname=_xml(case.suite),
        file=_xml(case.file),
        line=str(case.line),
        time=f"{result.seconds:.6f}",
    )
    if result.status == "skip":
        ET.SubElement(element, "skipped", message=_xml(case.skip or ""))
    elif result.status == "fail":
        assert result.actual is not None
        message = failure_message(result.expected, result.actual)
        failure = ET.SubElement(element, "failure", message=message, type="PolicyTestFailure")
        failure.text = _xml("\n".join(result.diff))
