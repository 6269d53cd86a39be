"""`attrgate analyze`: every finding where a seeded policy set says it must be and nowhere else
(the near misses), counterexamples that are valid requests with values the entry accepts, the
shipped examples clean, the output formats and exit codes. (The example of
docs/policy-testing.md prints what it shows: tests/test_docs_examples.py.)"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from itertools import product
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attrgate.analyze.findings import Code, Finding
from attrgate.analyze.report import Report, analyze
from attrgate.analyze.values import (
    accepts_nothing,
    finite_values,
    length_bounds,
    value_for,
    within,
)
from attrgate.cli import main
from attrgate.domain import Attribute, UpdateRequest, Verdict
from attrgate.policy.compile import compile_policy_set
from attrgate.policy.constraints import CompiledAllow
from attrgate.policy.engine import evaluate
from attrgate.policy.globs import compile_glob
from attrgate.policy.load import load_policy_set
from attrgate.policy.model import AllowEntry, AttributePolicy
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.validate import validate_request
from support.analyze_sets import (
    NAMES,
    POOL_SCHEMA,
    POOLS,
    REPO,
    SHADOWS,
    analyze_command,
    describe_answer,
    expected,
)

POOL_ID = "us-east-1_Fixture1"
# Findings about one allow entry: their counterexample writes a value that entry accepts.
ABOUT_AN_ALLOW = {
    Code.ALLOW_ALWAYS_DENIED,
    Code.ALLOW_SHADOWED,
    Code.POOL_UNKNOWN_ATTRIBUTE,
    Code.POOL_IMMUTABLE_ATTRIBUTE,
    Code.POOL_VALUE_REFUSED,
}


def _strings(alphabet: str, longest: int) -> Iterator[str]:
    for length in range(longest + 1):
        for chars in product(alphabet, repeat=length):
            yield "".join(chars)


def write(tmp_path: Path, text: str, name: str = "set") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "policies.yaml").write_text(text)
    return folder


def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(describe_answer(POOL_ID, POOL_SCHEMA)))
    return path


def run(folder: Path, *pool_files: Path) -> Report:
    report = analyze(str(folder), DEFAULT_MAX_BYTES, [str(p) for p in pool_files])
    assert isinstance(report, Report), report
    assert not report.unconfirmed, "a counterexample did not decide as its finding claims"
    assert not report.undecided
    return report


def found(report: Report) -> set[tuple[str, int]]:
    return {(f.code.value, f.line) for f in report.findings}


@pytest.mark.parametrize("text", [NAMES, SHADOWS], ids=["names", "shadows"])
def test_each_seeded_finding_is_found_where_seeded_and_no_near_miss_is(
    tmp_path: Path, text: str
) -> None:
    report = run(write(tmp_path, text))
    assert found(report) == expected(text)
    assert {Path(f.file).name for f in report.findings} == {"policies.yaml"}


def test_pool_findings_need_the_pool_and_are_found_where_seeded(tmp_path: Path) -> None:
    folder = write(tmp_path, POOLS)
    assert found(run(folder)) == set()  # nothing to say without the pool's schema
    report = run(folder, pool_file(tmp_path))
    assert found(report) == expected(POOLS)
    assert all(f.counterexample and f.counterexample.user_pool == POOL_ID for f in report.findings)


def test_every_code_is_seeded_somewhere() -> None:
    seeded = {code for text in (NAMES, SHADOWS, POOLS) for code, _ in expected(text)}
    assert seeded == {code.value for code in Code}


def test_counterexamples_are_valid_requests_with_values_the_entry_accepts(
    tmp_path: Path,
) -> None:
    for text in (NAMES, SHADOWS, POOLS):
        folder = write(tmp_path, text, name=f"set{hash(text) & 0xFFFF}")
        report = run(folder, pool_file(tmp_path))
        allows = _allows_by_line(folder)
        for finding in report.findings:
            example = finding.counterexample
            if example is None:
                continue
            assert validate_request(example.request()) == ()
            assert example.caller.isascii()
            assert example.caller.isprintable()
            assert re.fullmatch(r"[a-z]{2}-[a-z]+-1_[A-Za-z0-9]+", example.user_pool), example
            if finding.code in ABOUT_AN_ALLOW:
                ((_name, value),) = example.attributes
                assert allows[finding.line].check(value) == [], (finding, value)


def _allows_by_line(folder: Path) -> dict[int, CompiledAllow]:
    loaded = load_policy_set(folder)
    out: dict[int, CompiledAllow] = {}
    for item in loaded.policies:
        assert isinstance(item.document, AttributePolicy)
        assert item.source is not None
        for index, entry in enumerate(item.document.spec.allow):
            out[item.source.lines[("spec", "allow", index)]] = CompiledAllow(entry, index)
    return out


def test_the_shipped_examples_are_clean() -> None:
    assert run(REPO / "policies").findings == []


def test_findings_without_a_behaviour_to_show_have_no_counterexample(tmp_path: Path) -> None:
    report = run(write(tmp_path, NAMES))
    without = {f.code for f in report.findings if f.counterexample is None}
    assert without == {
        Code.ALLOW_UNREACHABLE_NAME,
        Code.DENY_UNREACHABLE_NAME,
        Code.POLICY_UNREACHABLE,  # typo-pools: never applies (night-audit has one)
        Code.POOL_GLOB_UNREACHABLE,
    }


def _finding(report: Report, code: Code) -> Finding:
    return next(f for f in report.findings if f.code == code)


def test_a_deny_covering_only_with_two_policies_together_is_found(tmp_path: Path) -> None:
    # regional's callers are batch-a* and batch-b*: lock-a and lock-b each deny custom:region
    # for one of them, so it is denied wherever regional applies, though by no single policy.
    report = run(write(tmp_path, NAMES))
    region = [f for f in report.findings if "custom:region" in f.message]
    assert [f.code for f in region] == [Code.ALLOW_ALWAYS_DENIED]
    assert "lock-a deny[0]" in region[0].message
    assert "lock-b deny[0]" in region[0].message


# --- the command -------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`attrgate analyze ARGS` in this process (the same code, without a start-up each)."""
    try:
        code = main(["analyze", *args])
    except SystemExit as exit:  # argparse's usage errors
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_has_exactly_the_published_shape(tmp_path: Path) -> None:
    folder = write(tmp_path, POOLS)
    result = analyze_command(
        str(folder), "--pool-file", str(pool_file(tmp_path)), "--output", "json"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == ["findings"]
    assert len(document["findings"]) == len(expected(POOLS))
    for finding in document["findings"]:
        assert list(finding) == [
            "code",
            "severity",
            "file",
            "line",
            "message",
            "counterexample",
        ]
        assert finding["severity"] in ("warning", "info")
        assert list(finding["counterexample"]) == [
            "caller",
            "userPool",
            "attributes",
            "clientMetadata",
        ]


def test_json_leaves_out_the_counterexample_of_findings_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, str(write(tmp_path, NAMES)), "--output", "json")
    assert code == 0
    plain = [f for f in json.loads(out)["findings"] if "counterexample" not in f]
    assert {f["code"] for f in plain} == {
        "DENY_UNREACHABLE_NAME",
        "ALLOW_UNREACHABLE_NAME",
        "POLICY_UNREACHABLE",
        "POOL_GLOB_UNREACHABLE",
    }


def test_text_output_reads_like_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path, SHADOWS)
    code, out, err = cli(capsys, str(folder))
    assert code == 0, err
    lines = out.splitlines()
    finding = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<code>[A-Z_]+) (warning|info) .+$")
    first = finding.match(lines[0])
    assert first is not None, lines[0]
    assert first["file"] == str(folder / "policies.yaml")
    assert lines[1].startswith("  counterexample: {")
    assert json.loads(lines[1].removeprefix("  counterexample: "))["caller"] == "svc-api"
    summary = f"{len(expected(SHADOWS))} findings (2 warning, 3 info) in 5 attribute policies"
    assert lines[-1].startswith(summary)


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = analyze_command("policies", "--strict")
    assert (clean.returncode, clean.stdout.split(":")[0]) == (0, "ok"), clean.stderr
    seeded = str(write(tmp_path, SHADOWS))
    assert cli(capsys, seeded)[0] == 0  # warnings
    assert cli(capsys, seeded, "--strict")[0] == 1
    broken = write(tmp_path, "apiVersion: attrgate/v1\nkind: AttributePolicy\n", "broken")
    code, _, err = cli(capsys, str(broken))
    assert code == 3
    assert re.match(rf"{re.escape(str(broken))}/policies.yaml:\d+: ", err)
    code, _, err = cli(capsys, seeded, "--pool-file", str(tmp_path / "nope.json"))
    assert code == 2
    assert "nope.json" in err
    no_id = tmp_path / "no-id.json"
    no_id.write_text('{"UserPool": {"Name": "x"}}')
    assert cli(capsys, seeded, "--pool-file", str(no_id))[0] == 2
    # Two answers for one pool: which one would the findings be about?
    one, other = tmp_path / "one.json", tmp_path / "other.json"
    for path in (one, other):
        path.write_text('{"UserPool": {"Id": "us-east-1_AbCdEf123"}}')
    code, _, err = cli(capsys, seeded, "--pool-file", str(one), "--pool-file", str(other))
    assert code == 2
    assert err.endswith(f"{other}: describes us-east-1_AbCdEf123, as {one} does\n"), err
    assert cli(capsys, seeded, "--output", "xml")[0] == 2


# --- what the findings claim, against the engine on random policy sets -----------------------

CALLERS = ["a", "b", "c", "ab", "ba"]
POOLS_SEEN = ["us-east-1_a", "us-east-1_b", "us-east-1_c", "us-east-1_ab"]
NAMES_SEEN = [w for w in _strings("abAc", 2) if w]
VALUES = ["", "x", "xy", "xyz"]
entry_glob = st.text("abA*", min_size=1, max_size=3)
allow_entries = st.fixed_dictionaries(
    {"attribute": entry_glob},
    optional={
        "maxLength": st.integers(1, 3),
        "minLength": st.integers(1, 3),
        "allowEmpty": st.booleans(),
        "enum": st.lists(st.sampled_from(VALUES[1:]), min_size=1, max_size=2, unique=True),
    },
)


@st.composite
def policy_sets(draw: st.DrawFn) -> str:
    """A few policies over small alphabets, one entry per line."""
    documents = []
    for index in range(draw(st.integers(2, 4))):
        callers = draw(st.lists(st.sampled_from(["*", "a*", "b*", "ab*", "a"]), min_size=1))
        pools = st.sampled_from(["us-east-1_*", "us-east-1_a*", "us-east-1_b*"])
        allows = [json.dumps(e) for e in draw(st.lists(allow_entries, max_size=3))]
        denies = [json.dumps({"attribute": g}) for g in draw(st.lists(entry_glob, max_size=2))]
        lines = [
            "apiVersion: attrgate/v1",
            "kind: AttributePolicy",
            f"metadata: {{name: p{index}}}",
            "spec:",
            f"  mode: {draw(st.sampled_from(['enforce', 'enforce', 'audit']))}",
            f"  callers: {json.dumps(callers)}",
            f"  userPools: {json.dumps(draw(st.lists(pools, min_size=1)))}",
            "  allow:" if allows else "  allow: []",
            *(f"    - {e}" for e in allows),
            "  deny:" if denies else "  deny: []",
            *(f"    - {e}" for e in denies),
        ]
        documents.append("\n".join(lines))
    return "\n---\n".join(documents) + "\n"


def _decisions(text: str, tmp: Path) -> dict[tuple[str, str, str, str], Verdict]:
    """The engine's verdict on every single-attribute request of the universe."""
    folder = tmp / f"set{len(list(tmp.iterdir()))}"
    folder.mkdir()
    (folder / "p.yaml").write_text(text)
    loaded = load_policy_set(folder)
    assert loaded.ok, loaded.errors
    policy_set = compile_policy_set(loaded.policies, loaded.revision)
    return {
        (c, p, n, v): evaluate(policy_set, c, UpdateRequest(p, "ada", (Attribute(n, v),)))
        for c in CALLERS
        for p in POOLS_SEEN
        for n in NAMES_SEEN
        for v in VALUES
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets())
def test_what_findings_claim_holds_in_the_engine(text: str) -> None:
    """Over a universe of callers, pools, names and values: an always-denied entry is denied
    wherever its policy applies; removing a shadowed entry or an irrelevant policy changes no
    outcome; an audit policy equal to the enforcing ones, or beside none, never reports."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = tmp / "analyzed"
        folder.mkdir()
        (folder / "p.yaml").write_text(text)
        report = run(folder)
        before = _decisions(text, tmp)
        allowed = {k: v.allowed for k, v in before.items()}
        for finding in report.findings:
            if finding.code is Code.ALLOW_ALWAYS_DENIED:
                glob = json.loads(text.splitlines()[finding.line - 1][6:])["attribute"]
                policy = finding.message.split()[0]
                for key, verdict in before.items():
                    if policy in verdict.matched_policies and compile_glob(glob)(key[2]):
                        assert any(
                            x.attribute == key[2] and x.reason == "ATTRIBUTE_DENIED"
                            for x in verdict.violations
                        ), (finding, key)
            elif finding.code is Code.ALLOW_SHADOWED or (
                finding.code is Code.POLICY_UNREACHABLE and "changes no decision" in finding.message
            ):
                after = _decisions(_without(text, finding), tmp)
                assert {k: v.allowed for k, v in after.items()} == allowed, finding
            elif finding.code is Code.AUDIT_EQUALS_ENFORCE or "never reports" in finding.message:
                audit = finding.message.split()[2]
                assert not any(
                    x.policy == audit for verdict in before.values() for x in verdict.would_deny
                ), finding


def _without(text: str, finding: Finding) -> str:
    """The set without the entry (or the policy) a finding says changes nothing."""
    if finding.code is Code.ALLOW_SHADOWED:
        lines = text.splitlines()
        rest = "\n".join(lines[: finding.line - 1] + lines[finding.line :]) + "\n"
        return re.sub(r"  allow:\n(?!    - )", "  allow: []\n", rest)
    name = finding.message.split()[1]
    return (
        "\n---\n".join(d for d in text.split("\n---\n") if f"metadata: {{name: {name}}}" not in d)
        + "\n"
    )


# --- value constraints: what `within` and the others claim holds for every value tried -------

VALUE_UNIVERSE = sorted(
    {"".join(p) for n in range(5) for p in product("a1@.+", repeat=n)}
    | {"true", "false", "42", "-7", "+14155550100", "ada@example.com", "https://example.com/"}
)
constraints = st.fixed_dictionaries(
    {"attribute": st.just("custom:x")},
    optional={
        "maxLength": st.integers(0, 5),
        "minLength": st.integers(0, 5),
        "enum": st.lists(st.sampled_from(["", "a", "true", "42", "a@b.cc", "aa"]), min_size=1),
        "format": st.sampled_from(["email", "e164", "boolean", "integer", "url"]),
        "pattern": st.sampled_from(["^a+$", "[a1]*", "^a{1,2}$", "1+"]),
        "allowEmpty": st.booleans(),
    },
)


@settings(max_examples=400, deadline=None)
@given(constraints, constraints)
def test_value_claims_hold_for_every_value_tried(inner: dict, outer: dict) -> None:
    a = CompiledAllow(AllowEntry.model_validate(inner), 0)
    b = CompiledAllow(AllowEntry.model_validate(outer), 1)
    accepted = [v for v in VALUE_UNIVERSE if not a.check(v)]
    if within(a, b):
        assert all(not b.check(v) for v in accepted), (inner, outer)
    if accepts_nothing(a):
        assert accepted == []
    low, high = length_bounds(a)
    assert all(low <= len(v) and (high is None or len(v) <= high) for v in accepted if v)
    finite = finite_values(a)
    if finite is not None:
        assert {v for v in accepted if v} <= set(finite)
        assert all(not a.check(v) for v in finite)
    sample = value_for(a, "custom:x")
    assert sample is None or a.check(sample) == []


HEAD = (
    "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {{name: {name}}}\n"
    "spec:\n  callers: ['svc-*']\n  userPools: ['us-east-1_*']\n  allow:\n"
)
SHADOW_ORDERS = {
    # A shorter literal prefix is tried first: custom:* decides before custom:n*.
    "prefix length": (
        HEAD.format(name="p")
        + "    - {attribute: 'custom:n*'}\n    - {attribute: 'custom:*'}\n"
        + "    - {attribute: 'custom:nick*', maxLength: 5}\n    - {attribute: given_name}\n",
        {"allow[0]", "allow[2]"},
    ),
    # An earlier policy decides first, even one that changes nothing.
    "load order": (
        HEAD.format(name="first")
        + "    - {attribute: 'custom:*'}\n---\n"
        + HEAD.format(name="second")
        + "    - {attribute: 'custom:*'}\n    - {attribute: 'custom:*', maxLength: 5}\n"
        + "    - {attribute: given_name}\n",
        {"allow[0]", "allow[1]"},
    ),
    # The value shown may be decided by a third entry: the flagged one still does not decide.
    "value": (
        HEAD.format(name="p")
        + "    - {attribute: 'custom:*', enum: [x, y]}\n    - {attribute: 'custom:*'}\n"
        + "    - {attribute: 'custom:*', maxLength: 5}\n",
        {"allow[2]"},
    ),
}


@pytest.mark.parametrize("shape", SHADOW_ORDERS)
def test_shadowed_entries_are_confirmed_whatever_decides_first(
    shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these once named a shadow that was not what the engine tried first: the
    counterexample did not confirm, the finding was dropped and analyze exited 5."""
    text, flagged = SHADOW_ORDERS[shape]
    code, out, err = cli(capsys, str(write(tmp_path, text)), "--output", "json")
    assert (code, err) == (0, "")
    shadowed = {
        f["message"].split()[1]
        for f in json.loads(out)["findings"]
        if f["code"] == "ALLOW_SHADOWED"
    }
    assert shadowed == flagged
