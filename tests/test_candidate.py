"""A candidate policy set (serve --candidate-policies) through the RPCs, the decision log and
/metrics: judged beside the serving set on every request, never deciding, costing no Cognito
call and no SMS count."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from attrgate.cli import main
from attrgate.v1 import attrgate_pb2 as pb
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, describe_reply
from support.moto_cognito import free_port
from support.policies import sms_guard
from support.prometheus import metrics_text, samples_of, total
from support.rpc import as_caller, attrs_request, rich
from support.waiting import json_lines, wait_until

POOL = "us-east-1_Pool1"
MARK = "Qq7personal"
SERVING = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: [svc]
  userPools: ["*"]
  allow:
    - attribute: given_name
    - {attribute: "custom:tier", enum: [free, pro]}
    - attribute: phone_number
"""
# The next version of the same policy: given_name tightened, custom:nickname opened, custom:role
# denied outright, and a caller the serving set does not know.
CANDIDATE = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: [svc, newsvc]
  userPools: ["*"]
  allow:
    - {attribute: given_name, maxLength: 3}
    - {attribute: "custom:tier", enum: [free, pro]}
    - attribute: phone_number
    - attribute: "custom:nickname"
  deny:
    - attribute: "custom:role"
"""
# (caller, attributes): serving allowed?, candidate allowed?, disagreement
CASES: list[tuple[str, list[tuple[str, str]], bool, bool, str]] = [
    ("svc", [("given_name", "Ada")], True, True, ""),
    ("svc", [("given_name", f"Augusta{MARK}")], True, False, "would_deny_now_allowed"),
    ("svc", [("custom:nickname", MARK)], False, True, "would_allow_now_denied"),
    ("svc", [("custom:role", MARK)], False, False, "different_violations"),
    ("svc", [("custom:tier", f"gold{MARK}")], False, False, ""),  # same findings both sides
    ("newsvc", [("given_name", "Ada")], False, True, "would_allow_now_denied"),
]

Serve = Callable[..., RunningServer]


def candidate_folder(tmp_path: Path, text: str = CANDIDATE) -> Path:
    folder = tmp_path / "candidate"
    folder.mkdir(exist_ok=True)
    (folder / "policies.yaml").write_text(text)
    return folder


def start(serve: Serve, stub: CognitoStub, tmp_path: Path, **overrides: Any) -> RunningServer:
    return serve(
        SERVING,
        stub.endpoint,
        candidate_policies=str(candidate_folder(tmp_path)),
        decision_log=str(tmp_path / "decisions.jsonl"),
        **overrides,
    )


def check(server: RunningServer, caller: str, pairs: list[tuple[str, str]]) -> pb.Decision:
    with server.channel() as channel:
        decision: pb.Decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(POOL, pairs, username=MARK), metadata=as_caller(caller), timeout=10
        )
    return decision


def update(
    server: RunningServer, caller: str, pairs: list[tuple[str, str]]
) -> pb.UpdateUserAttributesResponse | grpc.RpcError:
    with server.channel() as channel:
        try:
            answer: pb.UpdateUserAttributesResponse = server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, pairs, username=MARK), metadata=as_caller(caller), timeout=10
            )
        except grpc.RpcError as error:
            return error
    return answer


def findings(violations: Any) -> set[tuple[str, str, str, str]]:
    return {(v.attribute, v.policy, v.entry, v.reason) for v in violations}


def test_check_answers_the_candidates_verdict_and_never_changes_the_outcome(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    server = start(serve, stub, tmp_path)
    revision = server.app.pipeline.candidate.revision  # type: ignore[union-attr]
    assert revision
    assert revision != server.app.policy_revision
    for caller, pairs, serving_allows, candidate_allows, _ in CASES:
        decision = check(server, caller, pairs)
        assert decision.allowed is serving_allows, (caller, pairs)
        assert decision.HasField("candidate")
        assert decision.candidate.allowed is candidate_allows, (caller, pairs)
        assert decision.candidate.policy_revision == revision
        assert decision.policy_revision == server.app.policy_revision
        assert not decision.shadow
    role = check(server, "svc", [("custom:role", "x")])
    assert findings(role.violations) == {("custom:role", "", "", "ATTRIBUTE_NOT_ALLOWED")}
    assert findings(role.candidate.violations) == {
        ("custom:role", "profile", "deny[0]", "ATTRIBUTE_DENIED")
    }
    assert stub.calls() == []  # Check forwards nothing, candidate or not


def test_update_carries_the_candidate_in_the_response_and_in_denials(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    server = start(serve, stub, tmp_path)
    tightened = update(server, "svc", [("given_name", "Augusta")])
    assert isinstance(tightened, pb.UpdateUserAttributesResponse), tightened
    assert tightened.decision.allowed
    assert not tightened.decision.candidate.allowed
    assert findings(tightened.decision.candidate.violations) == {
        ("given_name", "profile", "allow[0]", "MAX_LENGTH")
    }
    loosened = update(server, "svc", [("custom:nickname", MARK)])
    assert isinstance(loosened, grpc.RpcError)
    info = rich(loosened).info
    assert info.reason == "POLICY_DENIED"
    assert info.metadata["candidate_allowed"] == "true"
    assert info.metadata["candidate_policy_revision"] == server.app.pipeline.candidate.revision  # type: ignore[union-attr]
    role = update(server, "svc", [("custom:role", MARK)])
    assert isinstance(role, grpc.RpcError)
    assert rich(role).info.metadata["candidate_allowed"] == "false"
    assert rich(role).info.metadata["candidate_violations"] == "custom:role (ATTRIBUTE_DENIED)"
    assert MARK not in str(rich(role).info)
    assert len(stub.calls()) == 1  # the one the serving set allowed


def test_disagreements_are_counted_by_caller_and_kind_and_logged_without_values(
    serve: Serve,
    stub: CognitoStub,
    stub_credentials: None,
    tmp_path: Path,
    spans: InMemorySpanExporter,
) -> None:
    port = free_port()
    server = start(serve, stub, tmp_path, metrics_listen=f"127.0.0.1:{port}")
    for caller, pairs, _, _, _ in CASES:
        check(server, caller, pairs)
        update(server, caller, pairs)
    log_file = tmp_path / "decisions.jsonl"
    entries = json_lines(log_file, 2 * len(CASES))
    assert MARK not in log_file.read_text()
    revision = server.app.pipeline.candidate.revision  # type: ignore[union-attr]
    expected = [case for case in CASES for _ in range(2)]
    for entry, (caller, _, _, candidate_allows, kind) in zip(entries, expected, strict=True):
        assert entry["caller"] == caller
        found = entry["candidate"]
        assert found["allowed"] is candidate_allows, entry
        assert found["policy_revision"] == revision
        assert found["disagreement"] == kind
        assert all(
            set(v) <= {"attribute", "policy", "entry", "reason"} for v in found["violations"]
        )
    assert entries[6]["candidate"]["violations"] == [
        {
            "attribute": "custom:role",
            "policy": "profile",
            "entry": "deny[0]",
            "reason": "ATTRIBUTE_DENIED",
        }
    ]

    def kinds(name: str) -> list[str]:
        found = [x for x in spans.get_finished_spans() if x.name == name]
        return [str((x.attributes or {}).get("attrgate.candidate.disagreement", "")) for x in found]

    assert wait_until(lambda: len(kinds("attrgate.policy")) == 2 * len(CASES))
    assert kinds("attrgate.policy") == [kind for *_, kind in expected]
    assert sorted(kinds("attrgate.v1.UserAttributes/UpdateUserAttributes")) == sorted(
        kind for *_, kind in CASES
    )

    text = metrics_text(port)
    assert MARK not in text
    counted = samples_of(text)["attrgate_candidate_disagreements_total"]
    assert {(labels["caller"], labels["kind"]): value for labels, value in counted} == {
        ("svc", "would_deny_now_allowed"): 2,
        ("svc", "would_allow_now_denied"): 2,
        ("svc", "different_violations"): 2,
        # A caller only the candidate names keeps its own label (not "unmatched").
        ("newsvc", "would_allow_now_denied"): 2,
    }
    requests = samples_of(text)["attrgate_requests_total"]
    assert total(requests, caller="newsvc") == 2
    assert total(requests, caller="unmatched") == 0


def test_without_a_candidate_nothing_changes(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    port = free_port()
    log_file = tmp_path / "decisions.jsonl"
    server = serve(
        SERVING, stub.endpoint, metrics_listen=f"127.0.0.1:{port}", decision_log=str(log_file)
    )
    decision = check(server, "svc", [("given_name", "Augusta")])
    assert not decision.HasField("candidate")
    answer = update(server, "svc", [("given_name", "Augusta")])
    assert isinstance(answer, pb.UpdateUserAttributesResponse)
    assert not answer.decision.HasField("candidate")
    denied = update(server, "svc", [("custom:role", "x")])
    assert isinstance(denied, grpc.RpcError)
    assert not [k for k in rich(denied).info.metadata if k.startswith("candidate")]
    assert all("candidate" not in e for e in json_lines(log_file, 3))
    samples = samples_of(metrics_text(port))
    assert total(samples.get("attrgate_candidate_disagreements_total", [])) == 0


def test_a_reloaded_candidate_changes_the_answers(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    server = start(serve, stub, tmp_path)
    before = check(server, "svc", [("given_name", "Augusta")])
    assert not before.candidate.allowed
    candidate_folder(tmp_path, CANDIDATE.replace("maxLength: 3", "maxLength: 30"))
    assert server.run(server.app.reload())
    after = check(server, "svc", [("given_name", "Augusta")])
    assert after.candidate.allowed
    assert after.candidate.policy_revision != before.candidate.policy_revision
    assert after.policy_revision == before.policy_revision  # the serving set stayed


def test_the_candidate_costs_no_cognito_call_and_no_sms_count(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    """The candidate allows what the serving set denies and denies what it allows, and carries
    an SmsGuard of its own: none of it reaches Cognito or the store."""
    stub.describe = describe_reply(auto_verified=("phone_number",))
    limit = sms_guard("limits:\n  - {per: phone_number, max: 1, window: 24h}")
    strict_guard = sms_guard("countries: {allow: [GB]}", name="candidate-only")
    (candidate_folder(tmp_path) / "guards.yaml").write_text(strict_guard.lstrip("-\n"))
    port = free_port()
    server = serve(
        SERVING + limit,
        stub.endpoint,
        candidate_policies=str(tmp_path / "candidate"),
        state=str(tmp_path / "state.sqlite"),
        metrics_listen=f"127.0.0.1:{port}",
        decision_log=str(tmp_path / "decisions.jsonl"),
    )
    phone = [("phone_number", "+14155550100")]
    first = update(server, "svc", phone)
    assert isinstance(first, pb.UpdateUserAttributesResponse), first
    assert first.decision.sms.triggers_sms
    assert first.decision.candidate.allowed
    for _ in range(3):
        assert check(server, "svc", phone).denied_by == "sms_limit"
        update(server, "svc", [("custom:nickname", "x")])  # the candidate alone allows it
        assert not check(server, "svc", [("given_name", "Augusta")]).candidate.allowed
    # Counted once, by the serving set's guard; the US number passed although the candidate's
    # guard allows only GB (its guards are never consulted).
    second = update(server, "svc", phone)
    assert isinstance(second, grpc.RpcError)
    assert rich(second).info.reason == "SMS_LIMIT_EXCEEDED"
    assert len(stub.calls()) == 1
    assert len(stub.calls("DescribeUserPool")) == 1
    assert {r.target.rsplit(".", 1)[-1] for r in stub.received} == {
        "AdminUpdateUserAttributes",
        "DescribeUserPool",
    }
    assert wait_until(
        lambda: total(samples_of(metrics_text(port))["attrgate_sms_reservations_total"]) == 1
    )


def test_a_candidate_that_cannot_load_stops_the_start(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    from attrgate.config import ConfigError

    folder = candidate_folder(tmp_path, CANDIDATE.replace("maxLength: 3", "maxLength: three"))
    with pytest.raises(ConfigError, match="candidate policies"):
        serve(SERVING, stub.endpoint, candidate_policies=str(folder))


def test_attrgate_call_shows_the_candidates_verdict(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path, capsys: Any
) -> None:
    server = start(serve, stub, tmp_path)
    call = ["call", "--check", "--target", server.target, "--caller", "svc", "--pool", POOL]
    assert main([*call, "--user", "ada", "given_name=Augusta"]) == 0
    out = capsys.readouterr().out
    revision = server.app.pipeline.candidate.revision  # type: ignore[union-attr]
    candidate = json.loads(out)["Attrgate"]["Candidate"]
    assert candidate["Allowed"] is False
    assert candidate["PolicyRevision"] == revision
    [violation] = candidate["Violations"]
    assert violation["Attribute"] == "given_name"
    assert (violation["Reason"], violation["Policy"], violation["Entry"]) == (
        *("MAX_LENGTH", "profile", "allow[0]"),
    )
