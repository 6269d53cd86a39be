"""Every counterexample `attrgate analyze` prints, sent to CheckUpdateUserAttributes of a running
attrgate (grpc.aio on loopback, callers in the dev header, moto's Cognito with SigV4 checked),
decides as its finding claims. One server per seeded policy set, one RPC per counterexample
(and, for a shadowed entry, one more after a reload without it)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from attrgate.v1 import attrgate_pb2 as pb
from support.analyze_sets import (
    NAMES,
    POOL_SCHEMA,
    POOLS,
    SHADOW_POOL_SCHEMA,
    SHADOWS,
    analyze_command,
)
from support.attrgate_server import RunningServer
from support.moto_cognito import MotoCognito
from support.rpc import as_caller

SETS: dict[str, tuple[str, list[dict[str, Any]] | None]] = {
    "names": (NAMES, None),
    "shadows": (SHADOWS, SHADOW_POOL_SCHEMA),
    "pools": (POOLS, POOL_SCHEMA),
}
# What each code's counterexample must show, beyond being decided at all.
EXPECTED_CODES = {
    "names": {
        "ALLOW_ALWAYS_DENIED",
        "VERIFIED_FLAG_BY_GLOB",
        "AUDIT_EQUALS_ENFORCE",
        "POLICY_UNREACHABLE",
    },
    "shadows": {"ALLOW_SHADOWED", "POOL_UNKNOWN_ATTRIBUTE"},
    "pools": {"POOL_UNKNOWN_ATTRIBUTE", "POOL_IMMUTABLE_ATTRIBUTE", "POOL_VALUE_REFUSED"},
}
confirmed: Counter[str] = Counter()


def analyze(policies: Path, pool_file: Path | None) -> list[dict[str, Any]]:
    """What `attrgate analyze --output json` prints."""
    extra = ["--pool-file", str(pool_file)] if pool_file else []
    result = analyze_command(str(policies), "--output", "json", *extra)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no unconfirmed or undecided finding
    findings: list[dict[str, Any]] = json.loads(result.stdout)["findings"]
    return findings


def check(server: RunningServer, example: dict[str, Any]) -> pb.Decision:
    request = pb.UpdateUserAttributesRequest(
        user_pool_id=example["userPool"],
        username="ada",
        user_attributes=[
            pb.AttributeType(name=k, value=v) for k, v in example["attributes"].items()
        ],
        client_metadata=example["clientMetadata"],
    )
    with server.channel() as channel:
        decision: pb.Decision = server.stub(channel).CheckUpdateUserAttributes(
            request, metadata=as_caller(example["caller"]), timeout=10
        )
    return decision


def reasons_for(decision: pb.Decision, name: str) -> set[str]:
    return {v.reason for v in decision.violations if v.attribute == name}


def confirm(finding: dict[str, Any], decision: pb.Decision) -> None:
    """The decision shows what the finding claims."""
    code, message = finding["code"], finding["message"]
    ((name, _),) = finding["counterexample"]["attributes"].items()
    if code == "ALLOW_ALWAYS_DENIED":
        # Denied, and by deny entries the finding names.
        assert decision.denied_by == "policy"
        denials = [v for v in decision.violations if v.attribute == name]
        assert denials
        assert all(v.reason == "ATTRIBUTE_DENIED" for v in denials)
        assert all(f"{v.policy} {v.entry} " in message for v in denials), message
    elif code == "VERIFIED_FLAG_BY_GLOB":
        assert reasons_for(decision, name) == {"VERIFIED_FLAG_NOT_GRANTED"}
    elif code == "AUDIT_EQUALS_ENFORCE":
        audit = message.split()[2]
        assert audit in decision.matched_policies
        assert not decision.allowed
        assert not [v for v in decision.would_deny if v.policy == audit]
    elif code == "POLICY_UNREACHABLE":  # an audit policy beside no enforce policy
        audit = message.split()[2]
        assert audit in decision.matched_policies
        assert [v.reason for v in decision.violations] == ["NO_APPLICABLE_POLICY"]
        assert not decision.would_deny
    elif code == "ALLOW_SHADOWED":
        assert decision.allowed, decision
    elif code.startswith("POOL_"):
        assert decision.denied_by == "pool_schema"
        expected = {
            "POOL_UNKNOWN_ATTRIBUTE": {"SCHEMA_UNKNOWN_ATTRIBUTE"},
            "POOL_IMMUTABLE_ATTRIBUTE": {"SCHEMA_IMMUTABLE"},
            "POOL_VALUE_REFUSED": {"SCHEMA_CONSTRAINT"},
        }[code]
        assert reasons_for(decision, name) == expected
    else:
        pytest.fail(f"no confirmation for {code}")


@pytest.mark.parametrize("name", list(SETS))
def test_every_counterexample_decides_as_its_finding_claims(
    name: str, moto: MotoCognito, serve: Any, tmp_path: Path
) -> None:
    text, schema = SETS[name]
    pool_file = None
    if schema is not None:
        pool = moto.create_pool(name=name, Schema=schema)
        answer = moto.admin.describe_user_pool(UserPoolId=pool)
        pool_file = tmp_path / "pool.json"
        pool_file.write_text(json.dumps({"UserPool": answer["UserPool"]}, default=str))
    server: RunningServer = serve(text, moto.endpoint)
    policies = Path(server.settings.policies) / "policies.yaml"
    findings = [f for f in analyze(policies.parent, pool_file) if "counterexample" in f]
    for finding in findings:
        example = finding["counterexample"]
        if pool_file is not None:
            assert example["userPool"] == pool, finding  # the described pool, where it fits
        confirm(finding, check(server, example))
        if finding["code"] == "ALLOW_SHADOWED":
            # It never decides: without it, the same request is allowed all the same.
            lines = text.splitlines(keepends=True)
            policies.write_text("".join(lines[: finding["line"] - 1] + lines[finding["line"] :]))
            assert server.run(server.app.reload())
            assert check(server, example).allowed, finding
            policies.write_text(text)
            assert server.run(server.app.reload())
        confirmed[finding["code"]] += 1
    assert {f["code"] for f in findings} == EXPECTED_CODES[name]
    print(f"{name}: {len(findings)} counterexamples confirmed", dict(confirmed))
