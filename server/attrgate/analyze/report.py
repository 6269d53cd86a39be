"""`attrgate analyze PATH`: load, analyse, confirm every counterexample, print.

Exit codes: 0 analysed (findings are warnings), 1 with --strict when anything was found, 2 a
usage error (a --pool-file that cannot be read), 3 the policy set is invalid (as `check`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from attrgate.analyze.analysis import Analysis
from attrgate.analyze.counterexample import Confirmer
from attrgate.analyze.findings import Finding
from attrgate.analyze.pools import pool_findings
from attrgate.analyze.world import World, policy_views
from attrgate.domain import PoolDescription
from attrgate.offline import FixtureError, read_pool_fixture
from attrgate.policy.compile import load_and_compile

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_INTERNAL = 5  # a counterexample did not decide as its finding claims: a bug in analyze


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    # Counterexamples the pipeline did not confirm: a bug in the analysis, never printed.
    unconfirmed: list[Finding] = field(default_factory=list)
    policies: int = 0
    revision: str = ""
    undecided: list[str] = field(default_factory=list)  # checks too large to decide


def analyze(path: str, max_bytes: int, pool_files: Sequence[str] = ()) -> Report | list[str]:
    """The confirmed findings for the policy set at `path`, or its errors (as `check` prints
    them). Raises FixtureError for a pool file that cannot be read."""
    pools: dict[str, PoolDescription] = {}
    files: dict[str, str] = {}
    for pool_file in pool_files:
        description = read_pool_fixture(pool_file)
        if description.pool_id in files:
            first = files[description.pool_id]
            raise FixtureError(f"{pool_file}: describes {description.pool_id}, as {first} does")
        pools[description.pool_id] = description
        files[description.pool_id] = pool_file
    loaded, policy_set = load_and_compile(path, max_bytes)
    if policy_set is None:
        return [str(error) for error in loaded.errors]
    views = policy_views(loaded.policies)
    analysis = Analysis(World(views, pools))
    analysis.run()
    pool_findings(analysis, files)
    report = Report(policies=len(views), revision=loaded.revision, undecided=analysis.undecided)
    confirmer = Confirmer(policy_set, pools)
    try:
        for finding in analysis.findings:
            example, claim = finding.counterexample, finding.claim
            if example is None or claim is None or confirmer.confirms(example, claim):
                report.findings.append(finding)
            else:
                report.unconfirmed.append(finding)
    finally:
        confirmer.close()
    report.findings.sort(key=lambda f: (f.file, f.line, f.code))
    return report


def run(args: argparse.Namespace) -> int:
    try:
        found = analyze(args.path, args.policy_max_bytes, args.pool_file)
    except FixtureError as exc:
        print(f"attrgate analyze: --pool-file {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(found, list):
        for error in found:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    for check in found.undecided:
        print(f"attrgate analyze: left undecided (too large): {check}", file=sys.stderr)
    for finding in found.unconfirmed:
        print(
            f"attrgate analyze: internal error: the counterexample of {finding.code} at "
            f"{finding.file}:{finding.line} does not decide as claimed; finding left out",
            file=sys.stderr,
        )
    if args.output == "json":
        json.dump({"findings": [f.as_json() for f in found.findings]}, sys.stdout, indent=2)
        print()
    else:
        print_text(found, sys.stdout)
    if found.unconfirmed:
        return EXIT_INTERNAL  # CI must notice an analysis it cannot trust
    return EXIT_FOUND if args.strict and found.findings else EXIT_OK


def print_text(report: Report, out: TextIO) -> None:
    for finding in report.findings:
        print(
            f"{finding.file}:{finding.line}: {finding.code} {finding.severity} {finding.message}",
            file=out,
        )
        if finding.counterexample is not None:
            example = json.dumps(finding.counterexample.as_json(), ensure_ascii=False)
            print(f"  counterexample: {example}", file=out)
    count = len(report.findings)
    policies = f"{report.policies} attribute {'policy' if report.policies == 1 else 'policies'}"
    if count:
        by = Counter(f.severity.value for f in report.findings)
        kinds = ", ".join(f"{by[s]} {s}" for s in ("warning", "info") if by[s])
        print(
            f"{count} {'finding' if count == 1 else 'findings'} ({kinds}) in {policies}, "
            f"revision {report.revision}",
            file=out,
        )
    else:
        print(f"ok: no findings in {policies}, revision {report.revision}", file=out)
