"""`attrgate explain` as a reviewer reads it: the text and JSON it prints, what it never prints,
--all, exit codes, pool files it refuses. (That its decisions are the server's is
test_explain_agreement.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attrgate.cli import main
from support.environment import clean_env

REPO = Path(__file__).resolve().parent.parent

POLICIES = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: ["profile-*"]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: given_name, minLength: 1, maxLength: 10}
    - {attribute: "custom:tier", enum: [free, pro, ENUMMARKER]}
    - {attribute: "custom:*", maxLength: 3}
    - {attribute: "*_verified"}
    - {attribute: phone_number, format: e164}
  deny:
    - {attribute: "custom:role"}
  clientMetadata: {allowKeys: [source]}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: freeze}
spec:
  mode: audit
  callers: ["profile-*", verifier]
  userPools: ["*"]
  deny: [{attribute: given_name}, {attribute: "custom:role"}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: verifier}
spec:
  callers: [verifier]
  userPools: ["us-east-1_*"]
  allow: [{attribute: email_verified, enum: ["true"]}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: europe}
spec:
  callers: ["profile-*"]
  userPools: ["eu-*"]
  allow: [{attribute: given_name}]
---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: countries}
spec:
  userPools: ["*"]
  countries: {allow: [US, CA]}
  limits: [{per: phone_number, max: 3, window: 24h}]
"""
POOL = "us-east-1_Example1"
# A DescribeUserPool answer with settings that are nobody's business in an explanation.
POOL_FILE = {
    "UserPool": {
        "Id": POOL,
        "Name": "NAMEMARKER",
        "SchemaAttributes": [
            {
                "Name": "custom:tier",
                "AttributeDataType": "String",
                "Mutable": True,
                "StringAttributeConstraints": {"MinLength": "1", "MaxLength": "4"},
            },
            {"Name": "custom:frozen", "AttributeDataType": "String", "Mutable": False},
        ],
        "AutoVerifiedAttributes": ["email"],
        "UserAttributeUpdateSettings": {"AttributesRequireVerificationBeforeUpdate": ["email"]},
        "SmsConfiguration": {"ExternalId": "EXTERNALMARKER", "SnsCallerArn": "arn:ARNMARKER"},
        "LambdaConfig": {"PreSignUp": "arn:aws:lambda:us-east-1:1:function:LAMBDAMARKER"},
        "EmailConfiguration": {"SourceArn": "arn:SESMARKER"},
    }
}
MARKERS = ("NAMEMARKER", "EXTERNALMARKER", "ARNMARKER", "LAMBDAMARKER", "SESMARKER")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "set.yaml").write_text(POLICIES)
    return folder


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(POOL_FILE))
    return path


def explain(
    capsys: pytest.CaptureFixture[str], policies: Path, *args: str, pool: str = POOL
) -> tuple[int, str, str]:
    """`attrgate explain` in this process: exit status, stdout, stderr."""
    status = main(["explain", "--policies", str(policies), "--pool", pool, *args])
    out, err = capsys.readouterr()
    return status, out, err


def explain_json(
    capsys: pytest.CaptureFixture[str], policies: Path, *args: str, pool: str = POOL
) -> tuple[int, Any]:
    status, out, err = explain(capsys, policies, "--output", "json", *args, pool=pool)
    assert err == ""
    return status, json.loads(out)


def attribute(answer: Any, name: str) -> Any:
    return next(a for a in answer["attributes"] if a["name"] == name)


# --- text ---------------------------------------------------------------------------------------


def test_text_names_each_constraint_tried_and_why_and_the_determining_entry(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    status, out, _ = explain(
        capsys, policies, "--caller", "profile-api", "given_name=Bartholomew", "custom:tier=pro"
    )
    assert status == 1
    lines = out.splitlines()
    assert (
        "  profile (enforce) " + str(policies / "set.yaml") + ":3" in lines
    )  # the line of its metadata.name
    assert (
        '      callers glob "profile-*" matches the caller, userPools glob "us-east-1_*" matches'
        " the pool" in lines
    )
    given = lines.index('given_name = "Bartholomew": DENIED by policy')
    # The entry, its constraints in the order the entry runs them, passed and failed.
    assert lines[given + 1 : given + 4] == [
        "  profile allow[0] (given_name): refused  [determining]",
        "      FAIL  maxLength: longer than maxLength 10",
        "      pass  minLength: 11 characters, at least 1",
    ]
    tier = lines.index('custom:tier = "pro": allowed by policy')
    assert lines[tier + 1 : tier + 5] == [
        "  profile allow[1] (custom:tier): accepted  [determining]",
        "      pass  enum: one of the allowed values",
        "  profile allow[2] (custom:*): not tried: another entry accepted first",
        "",
    ]
    assert "Decision: DENIED (denied by policy), policy revision sha256:" in out
    assert "    - given_name: MAX_LENGTH [profile allow[0]]: longer than maxLength 10" in lines


def test_text_explains_denies_audit_findings_verified_flags_and_metadata(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    status, out, _ = explain(
        capsys,
        policies,
        *("--caller", "profile-api", "--metadata", "source=a", "--metadata", "debug=b"),
        *("custom:role=admin", "email_verified=true", "given_name=Ada"),
    )
    assert status == 1
    lines = out.splitlines()
    role = lines.index('custom:role = "admin": DENIED by policy')
    assert lines[role + 1 : role + 4] == [
        "  profile deny[0] (custom:role): denied  [determining]",
        "  profile allow[2] (custom:*): not tried: a deny entry decided",
        "  freeze deny[1] (custom:role): not asked: the attribute is denied anyway"
        " (audit reports on allowed ones)",
    ]
    flag = lines.index('email_verified = "true": DENIED by policy')
    assert lines[flag + 1 : flag + 3] == [
        "  profile allow[3] (*_verified): may not grant a verified flag"
        " (only an entry naming it exactly does)",
        "  no allow entry of an applicable enforce policy may grant it: default deny"
        " (VERIFIED_FLAG_NOT_GRANTED)",
    ]
    given = lines.index('given_name = "Ada": allowed by policy')
    assert lines[given + 4] == (
        "  freeze deny[0] (given_name): would deny (audit; the outcome is unchanged)"
    )
    assert "  source: allowed by profile clientMetadata.allowKeys" in lines
    assert "  debug: DENIED: not in any applicable enforce policy's allowKeys" in lines
    assert "    - given_name: ATTRIBUTE_DENIED [freeze deny[0]]: denied by policy" in lines


def test_without_a_pool_file_the_pool_stage_is_skipped_and_the_sms_country_rule_still_holds(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    status, out, _ = explain(
        capsys, policies, "--caller", "profile-api", "phone_number=+33612345678"
    )
    assert status == 1
    assert "Pool stage: skipped (no --pool-file)" in out
    assert "SMS guard: the write sends a verification SMS; destination country FR" in out
    assert "  countries (enforce): countries.allow [CA, US]: REFUSES FR (countries.allow)" in out
    assert (
        "      not checked offline (counted in the servers' store):\n"
        "        limits[0]: at most 3 SMS per phone_number in 24h\n" in out
    )
    assert "Decision: DENIED (denied by sms_country)" in out

    status, out, _ = explain(
        capsys, policies, "--caller", "profile-api", "phone_number=+14155550100"
    )
    assert status == 0
    assert "  countries (enforce): countries.allow [CA, US]: passes" in out
    assert "Decision: ALLOWED, policy revision sha256:" in out


def test_with_a_pool_file_the_schema_and_pending_verification_are_explained(
    capsys: pytest.CaptureFixture[str], policies: Path, pool_file: Path
) -> None:
    args = ("--caller", "profile-api", "--pool-file", str(pool_file))
    status, out, _ = explain(capsys, policies, *args, "custom:tier=pro", "custom:frozen=x")
    assert status == 1
    assert "  pool schema: String, mutable, MinLength 1, MaxLength 4: pass" in out
    assert (
        "  pool schema: String, immutable: FAIL SCHEMA_IMMUTABLE: the attribute is immutable in"
        " this user pool" in out
    )
    assert f"Pool stage: checked against {pool_file}" in out
    assert "Decision: DENIED (denied by pool_schema)" in out

    # email is no concern of this policy set; the verifier's email_verified is.
    status, out, _ = explain(capsys, policies, *args, "phone_number=+14155550100")
    assert status == 0
    assert "SMS guard: the write sends no verification SMS; destination country US" in out
    assert "  pending verification (held back until the user verifies): none" in out


def test_policies_that_do_not_apply_are_listed_only_with_all(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    _, out, _ = explain(capsys, policies, "--caller", "profile-api", "given_name=Ada")
    assert "Policies that do not apply" not in out
    assert "verifier" not in out
    assert "europe" not in out

    _, out, _ = explain(capsys, policies, "--caller", "profile-api", "--all", "given_name=Ada")
    lines = out.splitlines()
    verifier = next(i for i, line in enumerate(lines) if line.startswith("  verifier (enforce)"))
    assert lines[verifier + 1] == (
        '      no callers glob matches the caller; userPools glob "us-east-1_*" matches'
    )
    europe = next(i for i, line in enumerate(lines) if line.startswith("  europe (enforce)"))
    assert lines[europe + 1] == (
        '      callers glob "profile-*" matches; no userPools glob matches the pool'
    )

    _, answer = explain_json(capsys, policies, "--caller", "profile-api", "--all", "given_name=A")
    by_name = {p["name"]: p for p in answer["policies"]}
    assert by_name["verifier"]["applied"] is False
    assert by_name["verifier"]["callerGlob"] is None
    assert by_name["europe"]["callerGlob"] == "profile-*"
    assert by_name["europe"]["userPoolGlob"] is None
    # Per attribute: only the policies that apply.
    assert [p["name"] for p in attribute(answer, "given_name")["policies"]] == ["profile", "freeze"]


def test_an_unknown_caller_has_no_applicable_policy(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    status, out, _ = explain(capsys, policies, "--caller", "stranger", "given_name=Ada")
    assert status == 1
    lines = out.splitlines()
    assert "Policies that apply: none" in lines
    assert "  (no policy's callers and userPools both match; --all shows each policy)" in lines
    assert 'given_name = "Ada": not evaluated: no enforce-mode policy applies' in lines
    assert (
        "    - (request): NO_APPLICABLE_POLICY: no policy applies to this caller and user pool"
        in lines
    )
    _, answer = explain_json(capsys, policies, "--caller", "stranger", "given_name=Ada")
    assert answer["allowed"] is False
    assert [v["reason"] for v in answer["violations"]] == ["NO_APPLICABLE_POLICY"]
    assert answer["policies"] == []
    assert attribute(answer, "given_name") == {
        "name": "given_name",
        "policies": [],
        "entries": [],
        "determining": [],
        "allowedByPolicy": None,
        "schema": None,
    }
    # Only an audit policy applies: it never grants.
    status, out, _ = explain(
        capsys, policies, "--caller", "verifier", "given_name=Ada", pool="eu-west-1_X"
    )
    assert status == 1
    assert "  freeze (audit) " in out
    assert (
        "    - (request): NO_APPLICABLE_POLICY: only audit-mode policies apply to this caller and"
        " pool; audit never grants" in out
    )


@pytest.mark.parametrize(
    ("pair", "field", "reason"),
    [
        ("phone_number=+1415", "user_attributes[0].value", "INVALID_PHONE_NUMBER"),
        ("given_name=" + "x" * 2049, "user_attributes[0].value", "TOO_LONG"),
        ("sub=x", "user_attributes[0].name", "RESERVED_ATTRIBUTE"),
    ],
)
def test_an_invalid_request_is_explained_as_the_invalid_answer_with_field_paths(
    capsys: pytest.CaptureFixture[str], policies: Path, pair: str, field: str, reason: str
) -> None:
    status, out, _ = explain(capsys, policies, "--caller", "profile-api", pair)
    assert status == 1
    assert "The request is INVALID" in out
    assert f"  - {field}: {reason}: " in out
    assert "Decision: INVALID, policy revision sha256:" in out
    status, answer = explain_json(capsys, policies, "--caller", "profile-api", pair)
    assert status == 1
    assert answer["outcome"] == "invalid"
    assert answer["allowed"] is False
    assert [(f["field"], f["reason"]) for f in answer["invalid"]] == [(field, reason)]
    assert answer["violations"] == []


# --- JSON ---------------------------------------------------------------------------------------


def test_json_has_the_documented_shape(
    capsys: pytest.CaptureFixture[str], policies: Path, pool_file: Path
) -> None:
    status, answer = explain_json(
        capsys,
        policies,
        *("--caller", "profile-api", "--pool-file", str(pool_file)),
        *("given_name=Bartholomew", "custom:tier=pro", "custom:role=x"),
    )
    assert status == 1
    assert list(answer) == [
        *("allowed", "outcome", "policyRevision", "deniedBy", "violations", "wouldDeny"),
        *("invalid", "caller", "userPool", "policies", "attributes", "clientMetadata", "pool"),
        *("pendingVerification", "sms"),
    ]
    assert answer["allowed"] is False
    assert answer["outcome"] == "denied"
    assert answer["deniedBy"] == "policy"
    assert answer["policyRevision"].startswith("sha256:")
    assert [
        (v["attribute"], v["policy"], v["entry"], v["reason"]) for v in answer["violations"]
    ] == [
        ("given_name", "profile", "allow[0]", "MAX_LENGTH"),
        ("custom:role", "profile", "deny[0]", "ATTRIBUTE_DENIED"),
    ]
    # given_name is denied (audit policies report on allowed attributes only), and nothing of
    # freeze matches custom:tier.
    assert answer["wouldDeny"] == []
    given = attribute(answer, "given_name")
    assert list(given) == [
        *("name", "policies", "entries", "determining", "allowedByPolicy", "schema"),
    ]
    assert given["policies"] == [
        {
            "name": "profile",
            "mode": "enforce",
            "callerGlob": "profile-*",
            "userPoolGlob": "us-east-1_*",
        },
        {"name": "freeze", "mode": "audit", "callerGlob": "profile-*", "userPoolGlob": "*"},
    ]
    assert given["entries"] == [
        {
            "policy": "profile",
            "entry": "allow[0]",
            "matched": "given_name",
            "outcome": "refused",
            "constraints": [
                {"name": "maxLength", "passed": False, "why": "longer than maxLength 10"},
                {"name": "minLength", "passed": True, "why": "11 characters, at least 1"},
            ],
        },
        {
            "policy": "freeze",
            "entry": "deny[0]",
            "matched": "given_name",
            "outcome": "skipped",  # audit findings are about allowed attributes only
            "constraints": [],
        },
    ]
    assert given["determining"] == [
        {"policy": "profile", "entry": "allow[0]", "outcome": "refused"}
    ]
    assert given["allowedByPolicy"] is False
    assert given["schema"]["dataType"] == "String"
    tier = attribute(answer, "custom:tier")
    assert [(e["entry"], e["outcome"]) for e in tier["entries"]] == [
        ("allow[1]", "accepted"),
        ("allow[2]", "skipped"),
    ]
    role = attribute(answer, "custom:role")
    assert [(e["policy"], e["entry"], e["outcome"]) for e in role["entries"]] == [
        ("profile", "deny[0]", "denied"),
        ("profile", "allow[2]", "skipped"),
        ("freeze", "deny[1]", "skipped"),
    ]
    assert answer["pool"] == {"file": str(pool_file), "stage": "not-reached"}
    assert answer["sms"] is None


def test_json_reports_audit_findings_and_the_sms_assessment(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    status, answer = explain_json(
        capsys, policies, "--caller", "profile-api", "given_name=Ada", "phone_number=+15145550100"
    )
    assert status == 0
    assert answer["allowed"] is True
    assert answer["deniedBy"] is None
    assert [
        (v["attribute"], v["policy"], v["entry"], v["reason"]) for v in answer["wouldDeny"]
    ] == [("given_name", "freeze", "deny[0]", "ATTRIBUTE_DENIED")]
    assert attribute(answer, "given_name")["entries"][-1] == {
        "policy": "freeze",
        "entry": "deny[0]",
        "matched": "given_name",
        "outcome": "wouldDeny",
        "constraints": [],
    }
    assert answer["pool"] == {"file": None, "stage": "skipped"}
    assert answer["sms"] == {
        "triggersSms": True,
        "country": "CA",
        "refusals": [],
        "wouldRefuse": [],
        "guards": [
            {
                "name": "countries",
                "mode": "enforce",
                "countryRule": None,
                "uncounted": ["limits[0]: at most 3 SMS per phone_number in 24h"],
            }
        ],
    }


# --- what is never printed ------------------------------------------------------------------------


def test_no_value_that_did_not_come_from_the_command_line_or_the_policy_is_printed(
    capsys: pytest.CaptureFixture[str], policies: Path, pool_file: Path
) -> None:
    """The pool file's other settings, the policy's enum members not given, the username and
    client-metadata values never appear; the values given do (in the text, to show them)."""
    for output in ("text", "json"):
        for pairs in (
            ("custom:tier=gold", "given_name=GIVENVALUE"),  # denied by policy
            ("custom:tier=pro", "given_name=GIVENVALUE"),  # through the pool stage
        ):
            _, out, err = explain(
                capsys,
                policies,
                *("--caller", "profile-api", "--pool-file", str(pool_file), "--all"),
                *("--output", output, "--username", "USERMARKER"),
                *("--metadata", "source=METAVALUE"),
                *pairs,
            )
            said = out + err
            for marker in (*MARKERS, "USERMARKER", "METAVALUE", "ENUMMARKER"):
                assert marker not in said, (marker, output, pairs)
            assert ("GIVENVALUE" in said) == (output == "text")


def test_odd_characters_are_shown_escaped(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    value = "Ada\u202e\u200bevil\n"
    status, out, _ = explain(capsys, policies, "--caller", "profile-api", f"given_name={value}")
    assert status == 0
    assert 'given_name = "Ada\\u202e\\u200bevil\\n": allowed by policy' in out
    assert "\u202e" not in out
    assert "\u200b" not in out
    long = "x" * 100
    _, out, _ = explain(capsys, policies, "--caller", "profile-api", f"given_name={long}")
    assert f'given_name = "{"x" * 60}"... (100 characters): DENIED by policy' in out


# --- exit codes and refusals --------------------------------------------------------------------


def test_exit_codes(capsys: pytest.CaptureFixture[str], policies: Path, tmp_path: Path) -> None:
    assert explain(capsys, policies, "--caller", "profile-api", "given_name=Ada")[0] == 0
    assert explain(capsys, policies, "--caller", "profile-api", "custom:role=x")[0] == 1
    assert explain(capsys, policies, "--caller", "profile-api", "phone_number=1")[0] == 1

    status, out, err = explain(capsys, policies, "--caller", "profile-api", "given_name")
    assert (status, out) == (2, "")
    assert err == "attrgate explain: attribute 'given_name' is not NAME=VALUE\n"
    status, _, err = explain(capsys, policies, "--caller", "c", "--metadata", "k", "a=b")
    assert status == 2
    assert "metadata 'k' is not KEY=VALUE" in err
    status, _, err = explain(capsys, policies, "--caller", " ", "a=b")
    assert (status, err) == (
        2,
        "attrgate explain: give --caller: the identity the server would see (a SPIFFE id, ...)\n",
    )
    for missing in (["--pool", POOL, "a=b"], ["--caller", "c", "a=b"], ["--caller", "c"]):
        with pytest.raises(SystemExit) as exited:
            main(["explain", "--policies", str(policies), *missing])
        assert exited.value.code == 2
    capsys.readouterr()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text(POLICIES.replace("maxLength: 10", "maxLenght: 10"))
    status, out, err = explain(capsys, broken, "--caller", "profile-api", "given_name=Ada")
    assert (status, out) == (3, "")
    assert err == (
        f"{broken / 'p.yaml'}:8: spec.allow[0].maxLenght: unknown key (did you mean maxLength?)\n"
    )


def test_the_policy_size_limit_applies(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    status, out, err = explain(
        capsys, policies, "--policy-max-bytes", "100", "--caller", "c", "given_name=Ada"
    )
    assert (status, out) == (3, "")
    size = len(POLICIES)
    assert (
        err == f"{policies / 'set.yaml'}: {size} bytes, over the --policy-max-bytes limit of 100\n"
    )


def _explain_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`attrgate explain` in a process of its own (a read that blocks or floods memory fails
    the test alone)."""
    return subprocess.run(
        [sys.executable, "-m", "attrgate", "explain", *args],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_fifo_or_a_device_as_pool_file_is_refused_without_blocking_or_reading_it(
    policies: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "pool.json"
    os.mkfifo(fifo)  # nobody writes: opening it for reading the plain way blocks
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")  # reading it to the end never ends
    for path in (fifo, zero):
        done = _explain_process(
            *("--policies", str(policies), "--caller", "profile-api", "--pool", POOL),
            *("--pool-file", str(path), "given_name=Ada"),
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout == ""
        assert done.stderr == f"{path}: not a regular file\n"


def test_a_pool_file_that_is_no_describe_user_pool_answer_is_refused_with_its_line(
    capsys: pytest.CaptureFixture[str], policies: Path, tmp_path: Path
) -> None:
    cases = {
        "broken.json": ('{"UserPool": {\n  "Id": "x",\n  oops\n}}', ":3: not JSON ("),
        "broken.yaml": ("UserPool:\n  Id: x\n  - oops\n", ":3: invalid YAML: "),
        "list.json": ("[1, 2]", ": not a DescribeUserPool answer"),
        "schema.json": ('{"UserPool": {"SchemaAttributes": 5}}', ": UserPool.SchemaAttributes: "),
        "empty.json": ("{}", ": not a DescribeUserPool answer (a mapping with UserPool)"),
        "typo.json": (
            '{"UserPool": {"SchemaAttributes": '
            '[{"Name": "custom:a", "AttributeDataType": "Strin"}]}}',
            ": UserPool.SchemaAttributes[0].AttributeDataType: 'Strin' is not one of String, ",
        ),
        "huge.json": (
            '{"UserPool": {"SchemaAttributes": [{"Name": "custom:a", '
            '"StringAttributeConstraints": {"MaxLength": "' + "1" * 5000 + '"}}]}}',
            ": UserPool.SchemaAttributes[0].StringAttributeConstraints.MaxLength: '111",
        ),
        "bound.json": (
            '{"UserPool": {"SchemaAttributes": [{"Name": "custom:a", '
            '"StringAttributeConstraints": {"MaxLength": "ten"}}]}}',
            ": UserPool.SchemaAttributes[0].StringAttributeConstraints.MaxLength: 'ten' is not ",
        ),
        "binary.json": (b"\xff\xfe{}", ": not UTF-8 text"),
        "deep.json": ("[" * 100_000 + "]" * 100_000, ": not JSON or YAML (RecursionError)"),
        "large.json": (" " * (1024 * 1024 + 1), ": larger than 1048576 bytes"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        status, out, err = explain(
            capsys, policies, "--caller", "profile-api", "--pool-file", str(path), "given_name=A"
        )
        assert (status, out) == (3, ""), name
        assert err.startswith(f"{path}{expected}"), (name, err)
        assert err.count("\n") == 1, err
    status, _, err = explain(
        capsys, policies, "--caller", "c", "--pool-file", str(tmp_path / "none.json"), "a=b"
    )
    assert status == 3
    assert err == f"{tmp_path / 'none.json'}: No such file or directory\n"
    status, _, err = explain(capsys, policies, "--caller", "c", "--pool-file", str(tmp_path), "a=b")
    assert (status, err) == (3, f"{tmp_path}: not a regular file\n")
    # Another pool's answer would explain this pool's writes against the wrong schema.
    other = tmp_path / "other.json"
    other.write_text('{"UserPool": {"Id": "eu-west-1_Other"}}')
    status, _, err = explain(capsys, policies, "--caller", "c", "--pool-file", str(other), "a=b")
    assert (status, err) == (3, f"{other}: describes user pool eu-west-1_Other, not {POOL}\n")


def test_the_shipped_examples_explain_through_the_command() -> None:
    done = _explain_process(
        *("--policies", "policies", "--caller", "profile-api", "--pool", "us-east-1_Example1"),
        *("--output", "json", "given_name=Ada", "family_name=Lovelace"),
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["allowed"] is True
    assert [(v["attribute"], v["policy"]) for v in answer["wouldDeny"]] == [
        ("family_name", "profile-family-name-freeze")
    ]
