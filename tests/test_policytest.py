"""`attrgate test`: PolicyTest suites run through the server's own pipeline, their matrices,
skips and filters, coverage, the tree, JSON and JUnit reports, every exit code, and what a
hostile test folder cannot do.

Most tests call the command in-process (`attrgate.cli.main`, the same code the console script
runs); the shipped examples are run through the real `attrgate` executable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.cli import main
from attrgate.domain import Attribute, UpdateRequest
from attrgate.policy.compile import compile_policy_set
from attrgate.policy.engine import evaluate
from attrgate.policy.load import load_policy_set
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.policy.testmodel import INVALID_REASONS, PolicyTest
from attrgate.policy.trace import Trace
from attrgate.policytest.coverage import Coverage
from attrgate.policytest.expand import MAX_CASES, Case
from attrgate.policytest.run import run_suites
from attrgate.policytest.suites import load_workspace
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub, Reply, error
from support.environment import clean_env
from support.rpc import as_caller

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "policies"
_SCRIPT = Path(sys.executable).parent / "attrgate"
ATTRGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "attrgate"]

POLICY = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: ["svc-*"]
  userPools: ["us-east-1_*"]
  allow:
    - attribute: given_name
      maxLength: 8
    - attribute: "custom:tier"
      enum: [free, pro]
  deny:
    - attribute: "custom:role"
  clientMetadata:
    allowKeys: [source]
"""

SUITE_HEAD = """\
apiVersion: attrgate/v1
kind: PolicyTest
metadata: {name: profile}
spec:
  cases:
"""

PASSING = """\
    - name: names
      caller: svc-a
      userPool: us-east-1_A
      attributes: {given_name: Ada}
      expect: allow
"""


def gold_tier(name: str = "tiers") -> str:
    """A case that expects a tier the policy refuses to be allowed: it fails."""
    return (
        f"    - name: {name}\n      caller: svc-a\n      userPool: us-east-1_A\n"
        '      attributes: {"custom:tier": gold}\n      expect: allow\n'
    )


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def attrgate_test(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    def run(*args: str | Path) -> Ran:
        code = main(["test", *map(str, args)])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def folder(
    tmp_path: Path, cases: str = PASSING, policy: str = POLICY, head: str = SUITE_HEAD
) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "profile.yaml").write_text(policy)
    (tmp_path / "profile_test.yaml").write_text(head + cases)
    return tmp_path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


# -- the shipped examples ------------------------------------------------------------------------


def test_the_examples_pass_with_full_coverage_through_the_real_command(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [*ATTRGATE, "test", "policies/", "--min-coverage", "100", "--junit", str(report)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "coverage: 100.0 %" in result.stdout
    root = check_junit(report.read_bytes())
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {
        "profile-service",
        "verification-service",
        "profile-family-name-freeze",
        "sms-guard",
    }
    assert root.get("failures") == "0"
    assert int(root.get("tests", "0")) >= 40
    properties = {p.get("name"): p.get("value") for p in suites[0].iter("property")}
    assert properties["attrgate.coverage.percent"] == "100.00"
    assert "attrgate.coverage.missed" not in properties


def test_the_suites_beside_the_examples_are_no_policies() -> None:
    """`serve --policies policies` and `check` read what they always read: the suites and
    testdata/ fixtures are skipped, the revision is what `attrgate test` reports."""
    served = load_policy_set(EXAMPLES)
    assert served.ok, served.errors
    assert served.tests == []
    assert {p.file for p in served.policies} == {
        f"{EXAMPLES}/{name}.yaml" for name in ("profile-service", "verification-service")
    } | {f"{EXAMPLES}/sms-guard.yaml", f"{EXAMPLES}/cognito-quota.yaml"}
    tested = load_policy_set(EXAMPLES, tests=True)
    assert tested.revision == served.revision
    assert {t.document.metadata.name for t in tested.tests} == {  # type: ignore[attr-defined]
        "profile-service",
        "verification-service",
        "profile-family-name-freeze",
        "sms-guard",
    }
    assert all(isinstance(t.document, PolicyTest) for t in tested.tests)


def check_junit(data: bytes) -> ET.Element:
    """Parse JUnit XML and hold it to the structure of the commonly used JUnit schema (Jenkins'
    junit-10.xsd, which GitHub Actions reporters and GitLab read): testsuites > testsuite >
    properties?, testcase*; testcase > failure | skipped; the counting attributes integers that
    add up."""
    root = ET.fromstring(data)  # noqa: S314 - attrgate's own output
    assert root.tag == "testsuites"
    number = re.compile(r"\d+")
    seconds = re.compile(r"\d+(\.\d+)?")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in root:
        assert suite.tag == "testsuite"
        assert set(suite.attrib) <= {
            "name", "tests", "failures", "errors", "skipped", "time", "timestamp", "file",
            "hostname", "id", "package", "disabled",
        }  # fmt: skip
        assert suite.get("name")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp", ""))
        assert seconds.fullmatch(suite.get("time", ""))
        children = [c.tag for c in suite]
        assert children[: children.count("properties")] == ["properties"] * (
            children.count("properties")
        )
        assert set(children) <= {"properties", "testcase"}
        cases = suite.findall("testcase")
        counted = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
        for case in cases:
            assert set(case.attrib) <= {"name", "classname", "time", "file", "line"}
            assert case.get("name")
            assert case.get("classname") == suite.get("name")
            assert seconds.fullmatch(case.get("time", ""))
            assert number.fullmatch(case.get("line", ""))
            outcome = [c.tag for c in case]
            assert outcome in ([], ["failure"], ["skipped"])
            if outcome == ["failure"]:
                counted["failures"] += 1
                failure = case.find("failure")
                assert failure is not None
                assert failure.get("message")
                assert failure.text
            if outcome == ["skipped"]:
                counted["skipped"] += 1
        for key, value in counted.items():
            assert number.fullmatch(suite.get(key, ""))
            assert int(suite.get(key, "")) == value, (suite.get("name"), key)
            totals[key] += value
    for key, value in totals.items():
        assert int(root.get(key, "")) == value, key
    assert seconds.fullmatch(root.get("time", ""))
    return root


# -- matrix, skip, filter ------------------------------------------------------------------------


def test_a_matrix_expands_to_its_cross_product_named_after_its_values(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    cases = """\
    - name: tiers
      userPool: us-east-1_A
      matrix:
        caller: [svc-a, "svc-b c"]
        attributes: [{"custom:tier": free}, {"custom:tier": pro, given_name: Ada}]
        clientMetadata: [{source: app}]
      expect: allow
"""
    ran = attrgate_test(folder(tmp_path, cases), "--format", "json")
    assert ran.code == 0, ran.out + ran.err
    (suite,) = ran.json()["suites"]
    assert [c["name"] for c in suite["cases"]] == [
        "tiers (caller=svc-a, attributes={custom:tier=free}, clientMetadata={source=app})",
        "tiers (caller=svc-a, attributes={custom:tier=pro, given_name=Ada}, "
        "clientMetadata={source=app})",
        'tiers (caller="svc-b c", attributes={custom:tier=free}, clientMetadata={source=app})',
        'tiers (caller="svc-b c", attributes={custom:tier=pro, given_name=Ada}, '
        "clientMetadata={source=app})",
    ]
    assert ran.json()["summary"] == {"cases": 4, "passed": 4, "failed": 0, "skipped": 0}


def test_skipped_cases_and_suites_are_reported_not_run(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    cases = (
        PASSING
        + """\
    - name: broken on purpose
      skip: waiting for the tier rework
      caller: svc-a
      userPool: us-east-1_A
      attributes: {"custom:tier": gold}
      expect: allow
"""
    )
    suites = folder(tmp_path, cases)
    skipped_suite = SUITE_HEAD.replace("{name: profile}", "{name: later}").replace(
        "spec:\n", "spec:\n  skip: not yet\n"
    )
    (suites / "later_test.yaml").write_text(skipped_suite + PASSING)
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    ran = attrgate_test(suites, "--format", "json", "--junit", report)
    assert ran.code == 0, ran.err
    assert ran.json()["summary"] == {"cases": 3, "passed": 1, "failed": 0, "skipped": 2}
    statuses = {(s["name"], c["name"]): (c["status"], c["actual"]) for s in ran.json()["suites"]
                for c in s["cases"]}  # fmt: skip
    assert statuses[("profile", "broken on purpose")] == ("skip", None)
    assert statuses[("later", "names")] == ("skip", None)
    root = check_junit(report.read_bytes())
    skipped = [c for c in root.iter("testcase") if c.find("skipped") is not None]
    assert sorted(str(c.find("skipped").get("message")) for c in skipped) == [  # type: ignore[union-attr]
        "not yet",
        "waiting for the tier rework",
    ]
    tree = attrgate_test(suites)
    assert "  skip  broken on purpose  (skipped: waiting for the tier rework)" in tree.out


def test_filter_selects_suites_and_cases_by_glob(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    cases = PASSING + PASSING.replace("name: names", "name: more names")
    suites = folder(tmp_path, cases)
    other = SUITE_HEAD.replace("{name: profile}", "{name: other}") + PASSING
    (suites / "other_test.yaml").write_text(other)

    def selected(*globs: str) -> list[str]:
        ran = attrgate_test(suites, "--format", "json", *(f"--filter={g}" for g in globs))
        assert ran.code == 0, ran.err
        return [f"{s['name']}/{c['name']}" for s in ran.json()["suites"] for c in s["cases"]]

    everything = ["other/names", "profile/names", "profile/more names"]
    assert selected() == everything
    assert selected("profile") == ["profile/names", "profile/more names"]
    assert selected("*/more*") == ["profile/more names"]
    assert selected("oth*", "profile/names") == ["other/names", "profile/names"]
    ran = attrgate_test(suites, "--filter", "nothing*")
    assert ran.code == 2
    assert ran.err == "attrgate test: --filter nothing* selects no suite and no case\n"


# -- outcomes, expectations and the diff ---------------------------------------------------------


def test_a_failing_case_shows_a_readable_diff_and_exits_4(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    cases = (
        PASSING
        + """\
    - name: the role
      caller: svc-a
      userPool: us-east-1_A
      attributes: {"custom:role": Secr3tRole, given_name: Ada}
      expect: deny
      violations:
        - {attribute: "custom:role", reason: ATTRIBUTE_NOT_ALLOWED}
"""
        + gold_tier()
    )
    suites = folder(tmp_path, cases)
    ran = attrgate_test(suites)
    assert ran.code == 4
    test_file = suites / "profile_test.yaml"
    role_line, tier_line = line_of(test_file, "name: the role"), line_of(test_file, "name: tiers")
    role_denied = (
        '{attribute: custom:role, policy: profile, entry: "deny[0]", reason: ATTRIBUTE_DENIED}'
    )
    assert (
        f"""\
  FAIL  the role
        {test_file}:{role_line}: deny as expected, but violations not (- expected, + actual)
          outcome: deny
          violations:
        -   - {{attribute: custom:role, reason: ATTRIBUTE_NOT_ALLOWED}}
        +   - {role_denied}
  FAIL  tiers
        {test_file}:{tier_line}: expected allow, got deny (- expected, + actual)
        - outcome: allow
        + outcome: deny
        + deniedBy: policy
        + violations:
        +   - {{attribute: custom:tier, policy: profile, entry: "allow[1]", reason: ENUM}}
"""
        in ran.out
    )
    assert "3 cases: 1 passed, 2 failed, 0 skipped" in ran.out
    assert "Secr3tRole" not in ran.out + ran.err  # a value the diff had no reason to show


def test_every_expectation_is_compared(tmp_path: Path, attrgate_test: Callable[..., Ran]) -> None:
    """Each key of a case is held against the decision: one case per key that passes, and the
    same case with that key wrong fails."""
    pools = "  pools:\n    us-east-1_A: {file: testdata/pool.yaml}\n"
    guard = (
        "---\napiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: sms}\n"
        "spec:\n  userPools: ['*']\n  countries: {allow: [US]}\n"
    )
    policy = POLICY.replace(
        "allow:\n", "allow:\n    - {attribute: email}\n    - {attribute: phone_number}\n"
    )
    audit = (
        "---\napiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: freeze}\n"
        "spec:\n  mode: audit\n  callers: ['svc-*']\n  userPools: ['*']\n"
        "  deny: [{attribute: given_name}]\n"
    )
    (tmp_path / "testdata").mkdir()
    (tmp_path / "testdata" / "pool.yaml").write_text(
        "UserPool:\n  AutoVerifiedAttributes: [phone_number]\n"
        "  UserAttributeUpdateSettings: {AttributesRequireVerificationBeforeUpdate: [email]}\n"
    )
    good = {
        "wouldDeny": "wouldDeny: [{attribute: given_name, policy: freeze, entry: 'deny[0]'}]",
        "pendingVerification": "pendingVerification: [email]",
        "sms": "sms: {triggersSms: true, country: US, refused: false}",
        "deniedBy": "deniedBy: policy",
        "invalid": "invalid: [{field: 'user_attributes[0].name', reason: RESERVED_ATTRIBUTE}]",
    }
    bad = {
        "wouldDeny": "wouldDeny: []",
        "pendingVerification": "pendingVerification: []",
        "sms": "sms: {triggersSms: true, country: CA}",
        "deniedBy": "deniedBy: pool_schema",
        "invalid": "invalid: [{reason: TOO_LONG}]",
    }
    requests = {
        "wouldDeny": "attributes: {given_name: Ada}\n      expect: allow",
        "pendingVerification": "attributes: {email: a@example.com}\n      expect: allow",
        "sms": "attributes: {phone_number: '+14155550100'}\n      expect: allow",
        "deniedBy": "attributes: {'custom:role': x}\n      expect: deny",
        "invalid": "attributes: {sub: x}\n      expect: invalid",
    }
    for key, request in requests.items():
        for expectation, code in ((good[key], 0), (bad[key], 4)):
            case = (
                f"    - name: {key}\n      caller: svc-a\n      userPool: us-east-1_A\n"
                f"      {request}\n      {expectation}\n"
            )
            suites = folder(tmp_path, case, POLICY if key == "deniedBy" else policy + audit + guard,
                            SUITE_HEAD.replace("spec:\n", "spec:\n" + pools))  # fmt: skip
            ran = attrgate_test(suites)
            assert ran.code == code, (key, expectation, ran.out, ran.err)
            if code == 4:
                assert f"but {key} not" in ran.out


def test_findings_pair_up_whatever_their_order(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    """An expected finding naming fewer keys must not take the only actual one a more precise
    one fits; and every actual finding must be expected once a list is given."""
    request = (
        "    - name: both\n      caller: svc-a\n      userPool: us-east-1_A\n"
        "      attributes: {given_name: Adalberta, 'custom:tier': gold}\n      expect: deny\n"
    )
    loose_first = (
        "      violations: [{policy: profile}, {attribute: given_name, reason: MAX_LENGTH}]\n"
    )
    assert attrgate_test(folder(tmp_path, request + loose_first)).code == 0
    one_missing = "      violations: [{attribute: given_name}]\n"
    ran = attrgate_test(folder(tmp_path, request + one_missing))
    assert ran.code == 4
    assert (
        '+   - {attribute: custom:tier, policy: profile, entry: "allow[1]", reason: ENUM}'
        in ran.out
    )


# -- coverage ------------------------------------------------------------------------------------


def test_coverage_counts_every_entry_and_reports_the_missed_with_file_and_line(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    audit = (
        "---\napiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: freeze}\n"
        "spec:\n  mode: audit\n  callers: ['svc-*']\n  userPools: ['*']\n"
        "  allow: [{attribute: nickname}]\n"
        "  deny:\n    - {attribute: given_name}\n    - {attribute: 'custom:tier'}\n"
        "  clientMetadata: {allowKeys: [source]}\n"
    )
    cases = (
        PASSING
        + """\
    - name: a tier it refuses
      caller: svc-a
      userPool: us-east-1_A
      attributes: {"custom:tier": gold}
      clientMetadata: {source: app}
      expect: deny
    - name: skipped cases exercise nothing
      skip: later
      caller: svc-a
      userPool: us-east-1_A
      attributes: {"custom:role": x}
      expect: deny
"""
    )
    suites = folder(tmp_path, cases, POLICY + audit)
    ran = attrgate_test(suites, "--format", "json")
    assert ran.code == 0, ran.err
    policy_file = str(suites / "profile.yaml")
    entries = ran.json()["coverage"]["entries"]
    assert all(set(e) == {"policy", "entry", "file", "line", "exercised"} for e in entries)
    found = {(e["policy"], e["entry"]): (e["line"], e["exercised"]) for e in entries}
    path = suites / "profile.yaml"
    assert found == {
        # given_name: accepted; custom:tier: refused (it decided the denial); source: let through
        ("profile", "allow[0]"): (line_of(path, "attribute: given_name"), True),
        ("profile", "allow[1]"): (line_of(path, 'attribute: "custom:tier"'), True),
        ("profile", "deny[0]"): (line_of(path, 'attribute: "custom:role"'), False),
        ("profile", "clientMetadata.allowKeys[0]"): (line_of(path, "allowKeys"), True),
        # The audit policy's deny found given_name; its custom:tier deny was never asked (the
        # enforce policy denied the tier anyway); its allow entry and allowKeys can never
        # decide anything, so they are not counted.
        ("freeze", "deny[0]"): (line_of(path, "- {attribute: given_name}"), True),
        ("freeze", "deny[1]"): (line_of(path, "- {attribute: 'custom:tier'}"), False),
    }
    assert {e["file"] for e in entries} == {policy_file}
    assert ran.json()["coverage"]["percent"] == 66.66  # rounded down: never shows a minimum met

    listed = attrgate_test(suites, "--coverage")
    assert "coverage: 66.6 % (4 of 6 entries exercised)" in listed.out
    deny_line = line_of(path, 'attribute: "custom:role"')
    assert re.search(
        rf"  MISSED +profile +deny\[0\] +custom:role +{re.escape(policy_file)}:{deny_line}\n",
        listed.out,
    )
    low = attrgate_test(suites, "--min-coverage", "70")
    assert low.code == 4
    assert low.err.startswith(
        "attrgate test: coverage 66.6 % is below --min-coverage 70; not exercised:\n"
    )
    assert f"{policy_file}:{deny_line}" in low.err
    assert attrgate_test(suites, "--min-coverage", "66").code == 0


# -- JSON and JUnit shapes -----------------------------------------------------------------------


def test_json_has_the_published_shape(tmp_path: Path, attrgate_test: Callable[..., Ran]) -> None:
    ran = attrgate_test(folder(tmp_path, PASSING + gold_tier()), "--format", "json")
    assert ran.code == 4
    report = ran.json()
    assert set(report) == {"summary", "suites", "coverage"}
    assert report["summary"] == {"cases": 2, "passed": 1, "failed": 1, "skipped": 0}
    (suite,) = report["suites"]
    assert set(suite) == {"name", "file", "cases"}
    assert suite["file"] == str(tmp_path / "profile_test.yaml")
    assert all(set(c) == {"name", "status", "expected", "actual"} for c in suite["cases"])
    failed = suite["cases"][1]
    assert failed["status"] == "fail"
    assert failed["expected"] == {"outcome": "allow"}
    assert failed["actual"] == {
        "outcome": "deny",
        "deniedBy": "policy",
        "violations": [
            {"attribute": "custom:tier", "policy": "profile", "entry": "allow[1]", "reason": "ENUM"}
        ],
        "wouldDeny": [],
        "pendingVerification": [],
        "sms": {"triggersSms": False, "country": None, "refused": False},
    }
    assert set(report["coverage"]) == {"percent", "entries"}


def test_junit_on_stdout_names_the_failure_and_survives_hostile_names(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    cases = gold_tier('"bell \\a and escape \\e[31m red"')
    ran = attrgate_test(folder(tmp_path, cases), "--format", "junit")
    assert ran.code == 4
    root = check_junit(ran.out.encode())
    (case,) = root.iter("testcase")
    assert case.get("name") == "bell \\u0007 and escape \\u001b[31m red"
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "expected allow, got deny"
    assert failure.text is not None
    assert "- outcome: allow\n+ outcome: deny" in failure.text
    tree = attrgate_test(tmp_path)
    assert "\x1b" not in tree.out
    assert "\\u001b[31m" in tree.out


# -- exit codes 2 and 3 --------------------------------------------------------------------------


def test_usage_errors_exit_2(tmp_path: Path, attrgate_test: Callable[..., Ran]) -> None:
    suites = folder(tmp_path / "set")
    only_tests = tmp_path / "only"
    only_tests.mkdir()
    (only_tests / "a_test.yaml").write_text((suites / "profile_test.yaml").read_text())
    no_tests = tmp_path / "no-tests"
    no_tests.mkdir()
    (no_tests / "p.yaml").write_text(POLICY)
    inside = suites / "more"
    inside.mkdir()
    for args, message in (
        ((only_tests,), f"no policies in {only_tests}: give the policy set with --policies"),
        ((no_tests,), f"no PolicyTest documents in {no_tests}"),
        ((suites, inside), f"{inside} lies inside {suites} (or is it): give each file once"),
        ((suites, suites), f"{suites} lies inside {suites} (or is it): give each file once"),
    ):
        ran = attrgate_test(*args)
        assert (ran.code, ran.err) == (2, f"attrgate test: {message}\n"), args
    # --policies names the set, so a folder of suites alone is fine then.
    assert attrgate_test(only_tests, "--policies", suites / "profile.yaml").code == 0
    (tmp_path / "a-file").write_text("")
    ran = attrgate_test(suites, "--junit", tmp_path / "a-file" / "junit.xml")
    assert ran.code == 2
    assert "cannot write" in ran.err
    for flags in (("--min-coverage", "101"), ("--min-coverage", "all"), ("--format", "yaml")):
        with pytest.raises(SystemExit) as exited:
            main(["test", str(suites), *flags])
        assert exited.value.code == 2


def test_several_paths_are_one_set(tmp_path: Path, attrgate_test: Callable[..., Ran]) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "profile.yaml").write_text(POLICY)
    (second / "profile_test.yaml").write_text(SUITE_HEAD + PASSING)
    ran = attrgate_test(first, second)
    assert ran.code == 0, ran.err
    assert f"of {first}, {second}" in ran.out
    (second / "again.yaml").write_text(POLICY)
    ran = attrgate_test(first, second)
    assert ran.code == 3
    assert ran.err == (
        f"{second}/again.yaml:3: metadata.name: duplicate policy name 'profile' "
        f"(first defined at {first}/profile.yaml:3)\n"
    )


def invalid(tmp_path: Path, attrgate_test: Callable[..., Ran], cases: str) -> list[str]:
    ran = attrgate_test(folder(tmp_path, cases))
    assert ran.code == 3, ran.out + ran.err
    assert ran.out == ""
    return ran.err.splitlines()


def test_an_invalid_policy_or_test_file_exits_3_with_file_and_line(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    test_file = tmp_path / "profile_test.yaml"
    typo = PASSING.replace("expect: allow", "expect: allow\n      violation: []")
    assert invalid(tmp_path, attrgate_test, typo) == [
        f"{test_file}:{SUITE_HEAD.count(chr(10)) + 6}: spec.cases[0].violation: unknown key "
        "(did you mean violations?)"
    ]
    reason = PASSING.replace("expect: allow", "expect: deny\n      violations: [{reason: ENUMM}]")
    (error,) = invalid(tmp_path, attrgate_test, reason)
    assert error.startswith(
        f"{test_file}:11: spec.cases[0].violations[0].reason: unknown reason 'ENUMM'"
    )
    counted = reason.replace("ENUMM", "SMS_LIMIT_EXCEEDED")
    (error,) = invalid(tmp_path, attrgate_test, counted)
    assert error.endswith("SMS_LIMIT_EXCEEDED cannot happen in attrgate test: attrgate test "
                          "counts no SMS (that needs a store)")  # fmt: skip
    string = PASSING.replace("{given_name: Ada}", "{email_verified: true}")
    (error,) = invalid(tmp_path, attrgate_test, string)
    assert error.startswith(
        f"{test_file}:9: spec.cases[0].attributes.email_verified: expected a string"
    )
    policy_file = tmp_path / "profile.yaml"
    folder(tmp_path, PASSING, POLICY.replace("maxLength: 8", "maxLenght: 8"))
    ran = attrgate_test(tmp_path)
    assert (ran.code, ran.err) == (
        3,
        f"{policy_file}:9: spec.allow[0].maxLenght: unknown key (did you mean maxLength?)\n",
    )
    policy_file.write_text(POLICY)
    (tmp_path / "profile_test.yaml").write_text(
        SUITE_HEAD.replace("PolicyTest", "PolicyTst") + PASSING
    )
    ran = attrgate_test(tmp_path)
    assert ran.code == 3
    assert "kind: a *_test.yaml file holds PolicyTest documents only, not kind 'PolicyTst'" in (
        ran.err
    )


def test_a_test_naming_what_the_set_lacks_exits_3(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    """A policy the set does not define, or an entry no decision could name, is an error in the
    test file; an entry position the policy lacks (allow[7]) is a failing case: positions move
    as a policy is edited, and the diff shows the entry that decided."""
    cases = """\
    - name: unknown things
      caller: svc-a
      userPool: us-east-1_A
      attributes: {given_name: Ada}
      expect: deny
      violations:
        - {policy: profil}
        - {policy: profile, entry: "allow[7]"}
        - {entry: "alow[0]"}
        - {policy: profile, entry: "deny[0]"}
        - {entry: userPool.schema}
      wouldDeny: [{policy: nobody}]
"""
    test_file = tmp_path / "profile_test.yaml"
    (loader,) = invalid(tmp_path, attrgate_test, cases)
    assert loader.startswith(
        f"{test_file}:14: spec.cases[0].violations[2].entry: 'alow[0]' is no entry a decision "
        "names (allow[N], deny[N], clientMetadata.allowKeys"
    )
    cases = cases.replace("alow[0]", "allow[0]")
    assert invalid(tmp_path, attrgate_test, cases) == [
        f"{test_file}:12: spec.cases[0].violations[0].policy: no policy named 'profil' in the set "
        "(did you mean profile?)",
        f"{test_file}:17: spec.cases[0].wouldDeny[0].policy: no policy named 'nobody' in the set",
    ]
    positions = cases.replace("{policy: profil}", "{policy: profile}").replace(
        "wouldDeny: [{policy: nobody}]", "wouldDeny: []"
    )
    ran = attrgate_test(folder(tmp_path, positions))
    assert ran.code == 4


def test_pool_fixtures_that_cannot_be_used_exit_3(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    data = tmp_path / "testdata"
    data.mkdir()
    (data / "pool.json").write_text('{"UserPool": {"Id": "us-east-1_A"}}')
    os.mkfifo(data / "fifo.json")
    (data / "zero.json").symlink_to("/dev/zero")
    (data / "bomb.yaml").write_text('a: &a ["x", "x"]\nb: [*a, *a]\n')
    (data / "list.json").write_text("[1, 2]")
    (data / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text('{"UserPool": {}}')

    def pools(**files: str) -> str:
        listed = "".join(f"    {pool}: {{file: {name}}}\n" for pool, name in files.items())
        return SUITE_HEAD.replace("spec:\n", f"spec:\n  pools:\n{listed}")

    test_file = tmp_path / "profile_test.yaml"
    for name, message in (
        ("testdata/missing.json", f"{data}/missing.json: No such file or directory"),
        ("testdata/fifo.json", f"{data}/fifo.json: not a regular file"),
        # Symlinks are followed, within the folder given: /dev/zero is refused as outside it.
        ("testdata/zero.json", f"{data}/zero.json: the fixture lies outside {tmp_path}"),
        ("testdata/bomb.yaml", f"{data}/bomb.yaml:1: YAML anchors and aliases are not supported"),
        ("testdata/list.json", f"{data}/list.json: not a DescribeUserPool answer (a mapping "
                               "with UserPool)"),
        ("testdata/deep.json", f"{data}/deep.json: not JSON or YAML (RecursionError)"),
        (f"../{outside.name}",
         f"{tmp_path}/../{outside.name}: the fixture lies outside {tmp_path}"),
        (str(data / "pool.json"),
         f"{data}/pool.json: give the fixture's path relative to the test file"),
    ):  # fmt: skip
        ran = attrgate_test(folder(tmp_path, PASSING, head=pools(**{"us-east-1_A": name})))
        assert (ran.code, ran.err) == (
            3,
            f"{test_file}:6: spec.pools.us-east-1_A.file: {message}\n",
        )
    # A case on a pool the suite has no fixture for would skip the pool's checks unnoticed.
    cases = (
        PASSING
        + """\
    - name: elsewhere
      matrix: {userPool: [us-east-1_A, us-east-1_B]}
      caller: svc-a
      attributes: {given_name: Ada}
      expect: allow
"""
    )
    ran = attrgate_test(
        folder(tmp_path, cases, head=pools(**{"us-east-1_A": "testdata/pool.json"}))
    )
    assert ran.code == 3
    assert ran.err == (
        f"{test_file}:14: spec.cases[1].matrix.userPool[1]: no fixture for pool 'us-east-1_B': the "
        "suite declares pools (us-east-1_A), so each case's pool needs one (without it the pool's "
        "checks would be skipped)\n"
    )


def test_hostile_test_files_are_refused_cheaply(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    test_file = tmp_path / "profile_test.yaml"
    bomb = PASSING.replace("{given_name: Ada}", "&a {given_name: Ada}") + PASSING.replace(
        "names", "again"
    ).replace("{given_name: Ada}", "*a")
    (error,) = invalid(tmp_path, attrgate_test, bomb)
    assert error == f"{test_file}:9: YAML anchors and aliases are not supported"
    # 400 x 400 x 1 = 160,000 cases from a few kilobytes: refused before any is made.
    callers = ", ".join(f"svc-{i}" for i in range(400))
    attributes = ", ".join(f"{{given_name: n{i}}}" for i in range(400))
    huge = (
        f"    - name: huge\n      userPool: us-east-1_A\n      expect: allow\n"
        f"      matrix:\n        caller: [{callers}]\n        attributes: [{attributes}]\n"
    )
    (error,) = invalid(tmp_path, attrgate_test, PASSING + huge)
    assert error == (
        f"{test_file}:14: spec.cases[1].matrix: the matrix expands to 160,000 cases, more than "
        f"the {MAX_CASES:,} one run may hold: split it"
    )
    # Below the bound each, above it together: refused at the case that crosses it.
    half = huge.replace(callers, ", ".join(f"svc-{i}" for i in range(150)))
    more = half.replace("name: huge", "name: more")
    (error,) = invalid(tmp_path, attrgate_test, PASSING + half + more)
    assert error == (
        f"{test_file}:20: spec.cases[2].matrix: with this case's 60,000 the run holds more than "
        f"the {MAX_CASES:,} cases one run may hold (all suites together): test the PATHs in "
        "separate runs"
    )
    twice = (
        PASSING
        + PASSING
        + PASSING.replace("- name: names", "- name: m\n      matrix: {caller: [a, b, a]}").replace(
            "      caller: svc-a\n", ""
        )
    )
    errors = invalid(tmp_path, attrgate_test, twice)
    assert errors == [
        f"{test_file}:11: spec.cases[1].name: case name 'names' is used twice (first at line 6)",
        f"{test_file}:17: spec.cases[2].matrix.caller[2]: caller=a is listed twice: each "
        "expanded case needs a name of its own",
    ]
    # Two cases on one line (flow style) are two cases all the same.
    case = "{name: same, caller: svc-a, userPool: us-east-1_A, attributes: {a: b}, expect: deny}"
    (error,) = invalid(tmp_path, attrgate_test, f"    [{case}, {case}]\n")
    assert error.endswith("case name 'same' is used twice (first at line 6)"), error


def test_invalid_reasons_are_those_validation_gives() -> None:
    source = (REPO / "server" / "attrgate" / "validate.py").read_text()
    given = set(re.findall(r'FieldViolation\(\s*[^,]+,\s*"([A-Z_]+)"', source))
    given |= set(re.findall(r'_check_string.*\n?.*"([A-Z_]+)"', source))
    given |= {"REQUIRED", "TOO_LONG", "BAD_FORMAT"}  # _check_string's own
    assert given == set(INVALID_REASONS)


def test_coverage_traces_leave_out_which_policies_applied() -> None:
    """`Trace(record_policies=False)` (what coverage uses) records the same decisions, without
    the per-policy glob matches explain prints."""
    loaded = load_policy_set(EXAMPLES)
    policy_set = compile_policy_set(loaded.policies, loaded.revision)
    request = UpdateRequest(
        "us-east-1_A", "u", (Attribute("family_name", "L"), Attribute("custom:role", "x")), {}
    )
    full, lean = Trace(), Trace(record_policies=False)
    assert evaluate(policy_set, "profile-web", request, full) == evaluate(
        policy_set, "profile-web", request, lean
    )
    assert lean.policies == []
    assert len(full.policies) == 3
    assert lean.attributes == full.attributes


# -- the same decisions as a served attrgate -----------------------------------------------------


@pytest.mark.usefixtures("stub_credentials")
def test_the_shipped_cases_are_decided_as_a_served_attrgate_decides(tmp_path: Path) -> None:
    """Every case of the shipped suites, sent to CheckUpdateUserAttributes of a real server
    with the same policies, whose Cognito describes each pool with the suite's fixture (and
    fails for a pool without one, the server failing open): the same outcome, stage, findings
    and SMS assessment. (Pending verification is not in the Check RPC's answer.) A server per
    suite: a suite without a fixture for a pool another suite describes must not see its
    description cached."""
    workspace = load_workspace([str(EXAMPLES)], None, DEFAULT_MAX_BYTES)
    selected = [(s, s.cases) for s in workspace.suites]
    results = run_suites(workspace.policy_set, selected, Coverage(workspace.policies))
    fixtures = {
        t.document.metadata.name: {  # type: ignore[attr-defined]
            pool: _answer(Path(t.file).parent / fixture.file)
            for pool, fixture in t.document.spec.pools.items()  # type: ignore[attr-defined]
        }
        for t in load_policy_set(EXAMPLES, tests=True).tests
    }
    compared = 0
    for result in results:
        stub = CognitoStub()
        server = RunningServer(
            settings_for(
                policies=str(EXAMPLES),
                cognito_endpoint=stub.endpoint,
                state=str(tmp_path / f"{result.suite.name}.sqlite"),
                pool_metadata_fail_open=True,
                metadata_lookup_burst=1000,
            )
        )
        try:
            with server.channel() as channel:
                rpc = server.stub(channel)
                for case in result.cases:
                    answer = fixtures[result.suite.name].get(case.case.request.user_pool_id)
                    stub.describe = Reply(body=answer) if answer else error("Internal", status=500)
                    served = _served(rpc, case.case)
                    offline = {k: v for k, v in (case.actual or {}).items() if k in served}
                    assert served == offline, case.case.name
                    compared += 1
        finally:
            server.stop()
            stub.stop()
    assert compared == sum(len(r.cases) for r in results) > 40


def _answer(path: Path) -> dict[str, Any]:
    text = path.read_text()
    answer: dict[str, Any] = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return answer


def _served(rpc: pb_grpc.UserAttributesStub, case: Case) -> dict[str, Any]:
    request = pb.UpdateUserAttributesRequest(
        user_pool_id=case.request.user_pool_id,
        username=case.request.username,
        user_attributes=[
            pb.AttributeType(name=a.name, value=a.value) for a in case.request.attributes
        ],
        client_metadata=dict(case.request.client_metadata),
    )
    caller = as_caller(case.caller)
    if case.spec.expect == "invalid":
        with pytest.raises(grpc.RpcError) as refused:
            rpc.CheckUpdateUserAttributes(request, metadata=caller, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        next(d for d in status.details if d.Unpack(bad))
        return {
            "outcome": "invalid",
            "invalid": [{"field": v.field, "reason": v.reason} for v in bad.field_violations],
        }
    decision = rpc.CheckUpdateUserAttributes(request, metadata=caller, timeout=10)

    def findings(items: Any) -> list[dict[str, str]]:
        out = []
        for v in items:
            found = {
                "attribute": v.attribute,
                "policy": v.policy,
                "entry": v.entry,
                "reason": v.reason,
            }
            if v.client_metadata_key:
                found["clientMetadataKey"] = v.client_metadata_key
            out.append(found)
        return out

    sms = decision.sms if decision.HasField("sms") else None
    return {
        "outcome": "allow" if decision.allowed else "deny",
        "deniedBy": decision.denied_by or None,
        "violations": findings(decision.violations),
        "wouldDeny": findings(decision.would_deny),
        "sms": {
            "triggersSms": bool(sms and sms.triggers_sms),
            "country": sms.country if sms is not None and sms.country else None,
            "refused": decision.denied_by == "sms_country",
        },
    }


def test_junit_goes_into_a_folder_made_for_it_and_never_leaves_an_earlier_report(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    """`--junit reports/policy-tests.xml` in a fresh CI checkout (no reports/ yet) used to exit
    2 without running; and a run that found invalid files left the previous run's report in
    place, for CI to publish as this run's."""
    report = tmp_path / "reports" / "policy-tests.xml"
    suites = folder(tmp_path / "set")
    ran = attrgate_test(suites, "--junit", report)
    assert ran.code == 0, ran.err
    assert ET.parse(report).getroot().get("tests") == "1"  # noqa: S314 - attrgate's own output
    (suites / "profile.yaml").write_text("apiVersion: attrgate/v1\nkind: AttributePolicy\n")
    ran = attrgate_test(suites, "--junit", report)
    assert ran.code == 3
    root = ET.parse(report).getroot()  # noqa: S314 - attrgate's own output
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    error = root.find("testsuite/testcase/error")
    assert error is not None
    assert error.text is not None
    assert f"{suites / 'profile.yaml'}:1: metadata: missing required key" in error.text


def test_pending_verification_without_a_pool_fixture_is_refused(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    """Without the pool's DescribeUserPool answer nothing is ever pending: such an expectation
    could only fail, with a diff that does not say why (or pass, proving nothing)."""
    (error,) = invalid(tmp_path, attrgate_test, PASSING + "      pendingVerification: [email]\n")
    assert error == (
        f"{tmp_path / 'profile_test.yaml'}:11: spec.cases[0].pendingVerification: "
        "pendingVerification needs the pool's DescribeUserPool answer: give it in spec.pools "
        "(without one, nothing is ever pending)"
    )


def test_an_unexpected_allow_shows_what_audit_policies_would_deny(
    tmp_path: Path, attrgate_test: Callable[..., Ran]
) -> None:
    """A case that expected a denial the policies no longer make: the diff shows the audit
    findings on the allowed request too (often the hint: the deny was moved to audit)."""
    audit = (
        "---\napiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: freeze}\n"
        "spec:\n  mode: audit\n  callers: ['svc-*']\n  userPools: ['*']\n"
        "  deny: [{attribute: given_name}]\n"
    )
    cases = PASSING.replace("expect: allow", "expect: deny")
    ran = attrgate_test(folder(tmp_path, cases, POLICY + audit))
    assert ran.code == 4
    assert (
        "        - outcome: deny\n"
        "        + outcome: allow\n"
        "        + wouldDeny:\n"
        '        +   - {attribute: given_name, policy: freeze, entry: "deny[0]", '
        "reason: ATTRIBUTE_DENIED}\n"
    ) in ran.out, ran.out


def test_names_keep_what_prints_and_escape_what_would_mislead() -> None:
    """An emoji stays an emoji (it used to become \\ud83d\\ude00); a right-to-left override or a
    control character is escaped, once."""
    from attrgate.policytest.expand import render_value

    assert render_value({"given_name": "A😀"}) == "{given_name=A😀}"
    assert render_value("a\u202eb\u0001") == '"a\\u202eb\\u0001"'
