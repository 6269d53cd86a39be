"""What `attrgate test` runs: the policy set under test, compiled as `serve` compiles it, and the
PolicyTest suites, their fixtures read and every reference in them checked, their cases
expanded.

A suite refers to something unknown, and the run stops with exit 3 and FILE:LINE as `check`
prints, when an expected finding names a policy (AttributePolicy or SmsGuard) the set does not
define; when a pool fixture cannot be read, is not a DescribeUserPool answer, or lies outside
the folder given on the command line; and when the suite declares pools and a case's userPool is
not one of them (its pool checks would be skipped unnoticed). Unknown kinds, keys, reasons,
stages and malformed entry names are the loader's errors already. An entry's position
(`allow[3]`) is not checked here: positions move as a policy is edited, and a wrong one is a
failing case whose diff shows the entry that decided.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from attrgate.domain import PoolDescription
from attrgate.offline import FixtureError, read_pool_fixture
from attrgate.policy.compile import PolicySet, compile_policy_set
from attrgate.policy.load import (
    NO_POLICIES,
    LoadedPolicy,
    LoadResult,
    PolicyError,
    load_policy_set,
)
from attrgate.policy.patterns import pattern_scope
from attrgate.policy.testmodel import PolicyTest, TestCase
from attrgate.policy.yamlsource import Path
from attrgate.policytest.expand import MAX_CASES, Case, TooManyCases, Where, expand_case


class UsageError(Exception):
    """The command line asks for something that cannot be run (exit 2)."""


class InvalidFiles(Exception):
    """The policy set or a test file is invalid (exit 3): every error, with file and line."""

    def __init__(self, errors: Sequence[PolicyError]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = list(dict.fromkeys(errors))  # a file read twice reports once


@dataclass
class Suite:
    name: str
    file: str
    line: int
    skip: str | None
    cases: list[Case]
    pools: dict[str, PoolDescription] = field(default_factory=dict)


@dataclass
class Workspace:
    policy_set: PolicySet
    policies: list[LoadedPolicy]  # the documents of the set, for coverage
    suites: list[Suite]
    source: str  # where the policies came from, for the report


def load_workspace(paths: Sequence[str], policies: str | None, max_bytes: int) -> Workspace:
    """The set under test and its suites. Without `policies`, the PATHs are the set too: one
    PATH is read exactly as `serve --policies PATH` reads it; several are one set together
    (names unique across them, none inside another). Raises UsageError or InvalidFiles."""
    if policies is None:
        _refuse_nested(paths)
    with pattern_scope():  # patterns compile once, for loading and compiling alike
        read = [(path, load_policy_set(path, max_bytes, tests=True)) for path in paths]
        errors = [
            error
            for _, result in read
            for error in result.errors
            # With --policies, the PATHs hold suites only: no policies in them is no error.
            if policies is None or error.message != NO_POLICIES
        ]
        if policies is not None:
            policy_read = load_policy_set(policies, max_bytes)
            errors.extend(policy_read.errors)
            loaded, revision = policy_read.policies, policy_read.revision
            source = policies
        else:
            loaded, revision = _merged(read, errors)
            source = ", ".join(paths)
        tests = _unique_tests(read, errors)
        if errors:
            raise InvalidFiles(errors)
        if not loaded:
            raise UsageError(f"no policies in {source}: give the policy set with --policies")
        if not tests:
            raise UsageError(f"no PolicyTest documents in {', '.join(paths)}")
        policy_set = compile_policy_set(loaded, revision)
    suites = _suites(tests, _policy_names(loaded), errors)
    if errors:
        raise InvalidFiles(errors)
    return Workspace(policy_set, loaded, suites, source)


def _refuse_nested(paths: Sequence[str]) -> None:
    real = [os.path.realpath(p) for p in paths]
    for i, outer in enumerate(real):
        for j, inner in enumerate(real):
            if i != j and (outer == inner or inner.startswith(outer.rstrip(os.sep) + os.sep)):
                raise UsageError(
                    f"{paths[j]} lies inside {paths[i]} (or is it): give each file once"
                )


def _merged(
    read: Sequence[tuple[str, LoadResult]], errors: list[PolicyError]
) -> tuple[list[LoadedPolicy], str]:
    """Several PATHs as one set: their policies together, names unique across them. Its
    revision: one PATH's is what `serve` would report; several hash theirs together."""
    if len(read) == 1:
        return read[0][1].policies, read[0][1].revision
    loaded = _unique([r.policies for _, r in read], "policy", errors)
    digest = hashlib.sha256("\0".join(r.revision for _, r in read).encode())
    return loaded, "sha256:" + digest.hexdigest()[:16]


def _unique_tests(
    read: Sequence[tuple[str, LoadResult]], errors: list[PolicyError]
) -> list[tuple[str, LoadedPolicy]]:
    roots = {id(t): path for path, result in read for t in result.tests}
    tests = _unique([r.tests for _, r in read], "test", errors)
    return [(roots[id(t)], t) for t in tests]


def _unique(
    groups: Sequence[Sequence[LoadedPolicy]], what: str, errors: list[PolicyError]
) -> list[LoadedPolicy]:
    """Documents of several PATHs together; a name defined in two of them is an error (within
    one, the loader said so already)."""
    first: dict[str, LoadedPolicy] = {}
    kept = []
    for group in groups:
        for item in group:
            name = item.document.metadata.name  # type: ignore[attr-defined]
            seen = first.get(name)
            if seen is None:
                first[name] = item
                kept.append(item)
                continue
            path: Path = ("metadata", "name")
            where = f"{seen.file}:{seen.source.line_of(path) if seen.source else seen.line}"
            errors.append(
                PolicyError(
                    item.file,
                    item.source.line_of(path) if item.source else item.line,
                    "metadata.name",
                    f"duplicate {what} name {name!r} (first defined at {where})",
                )
            )
    return kept


def _policy_names(loaded: Sequence[LoadedPolicy]) -> frozenset[str]:
    return frozenset(item.document.metadata.name for item in loaded)  # type: ignore[attr-defined]


def _suites(
    tests: Sequence[tuple[str, LoadedPolicy]], known: frozenset[str], errors: list[PolicyError]
) -> list[Suite]:
    suites = []
    budget = MAX_CASES
    for root, item in tests:
        assert isinstance(item.document, PolicyTest)
        spec = item.document.spec
        where = Where(item.file, item.source, item.line)
        suite = Suite(item.document.metadata.name, item.file, item.line, spec.skip, [])
        for pool_id, fixture in spec.pools.items():
            found = _fixture(item.file, root, pool_id, fixture.file)
            if isinstance(found, str):
                errors.append(where.error(("spec", "pools", pool_id, "file"), found))
            else:
                suite.pools[pool_id] = found
        named: dict[str, int] = {}  # --filter, JUnit and reports tell cases by name
        for index, case in enumerate(spec.cases):
            at: Path = ("spec", "cases", index)
            errors.extend(_references(case, known, list(spec.pools), where, at))
            try:
                cases, problems = expand_case(suite.name, case, spec.skip, where, at, budget)
            except TooManyCases as exc:
                raise InvalidFiles([*errors, exc.error]) from None
            errors.extend(problems)
            budget -= len(cases)
            for expanded in cases:
                # Seen before, in this case's matrix or another case (on another line or not).
                first = named.get(expanded.name)
                if first is not None:
                    message = f"case name {expanded.name!r} is used twice (first at line {first})"
                    errors.append(where.error((*at, "name"), message))
                else:
                    named[expanded.name] = expanded.line
            suite.cases.extend(cases)
        suites.append(suite)
    return suites


def _fixture(test_file: str, root: str, pool_id: str, name: str) -> PoolDescription | str:
    """The pool a fixture file describes, or why it cannot be read. Fixtures are read relative
    to the test file, and only from inside the folder given on the command line."""
    if os.path.isabs(name):
        return f"{name}: give the fixture's path relative to the test file"
    path = os.path.join(os.path.dirname(test_file), name)
    real_root = os.path.realpath(root)
    base = real_root if os.path.isdir(real_root) else os.path.dirname(real_root)
    if os.path.commonpath((base, os.path.realpath(path))) != base:
        return f"{path}: the fixture lies outside {root}"
    try:
        return read_pool_fixture(path, pool_id)
    except FixtureError as exc:
        return str(exc)


def _references(
    case: TestCase, known: frozenset[str], pools: list[str], where: Where, at: Path
) -> list[PolicyError]:
    found: list[PolicyError] = []
    for key, items in (("violations", case.violations), ("wouldDeny", case.would_deny)):
        for index, finding in enumerate(items or ()):
            if finding.policy and finding.policy not in known:
                close = difflib.get_close_matches(finding.policy, known, 3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                message = f"no policy named {finding.policy!r} in the set{hint}"
                found.append(where.error((*at, key, index, "policy"), message))
    if not pools:
        if case.pending_verification is not None:
            # Without a pool's answer nothing is ever pending: the expectation could not fail.
            message = (
                "pendingVerification needs the pool's DescribeUserPool answer: give it in "
                "spec.pools (without one, nothing is ever pending)"
            )
            found.append(where.error((*at, "pendingVerification"), message))
        return found
    listed: list[tuple[Path, str]] = []
    if case.user_pool is not None:
        listed.append(((*at, "userPool"), case.user_pool))
    if case.matrix is not None and case.matrix.user_pool is not None:
        listed.extend(
            ((*at, "matrix", "userPool", i), p) for i, p in enumerate(case.matrix.user_pool)
        )
    for path, pool in listed:
        if pool not in pools:
            message = (
                f"no fixture for pool {pool!r}: the suite declares pools ({', '.join(pools)}), "
                "so each case's pool needs one (without it the pool's checks would be skipped)"
            )
            found.append(where.error(path, message))
    return found
