"""Shadow mode for adoption (serve --shadow) through the RPCs, the decision log, /metrics, the
status RPC and the log: what the policies deny is forwarded with would_deny; validation, the pool
schema and enforcing SmsGuards still deny; impossible to miss."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from attrgate.cli import main
from attrgate.shadow import WARNING
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub, describe_reply
from support.moto_cognito import free_port
from support.policies import sms_guard
from support.prometheus import metrics_text, samples_of, total
from support.rpc import as_caller, attrs_request, rich
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import json_lines, wait_for, wait_until

POOL = "us-east-1_Pool1"
MARK = "Ww3personal"
POLICY = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: [svc]
  userPools: ["*"]
  allow:
    - attribute: given_name
    - attribute: phone_number
  deny:
    - attribute: "custom:role"
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: watch}
spec:
  mode: audit
  callers: [svc]
  userPools: ["*"]
  deny:
    - attribute: given_name
"""
GUARDS = sms_guard("countries: {allow: [US]}") + sms_guard(
    "countries: {allow: [FR]}", name="audited"
).replace("mode: enforce", "mode: audit")

Serve = Callable[..., RunningServer]


@pytest.fixture
def shadow(
    write_policies: Callable[[str], Path],
    stub: CognitoStub,
    stub_credentials: None,
    tmp_path: Path,
) -> Iterator[Callable[..., RunningServer]]:
    """attrgate in shadow mode before the stub (phone numbers auto-verified), with an enforcing
    and an audit SmsGuard, its decision log in tmp_path, metrics and admin on ports of their
    own; App options (the reminder's period) pass through."""
    started: list[RunningServer] = []
    stub.describe = describe_reply(auto_verified=("phone_number",))

    def start(**options: Any) -> RunningServer:
        settings = settings_for(
            policies=str(write_policies(POLICY + GUARDS)),
            cognito_endpoint=stub.endpoint,
            shadow=options.pop("shadow", True),
            state=str(tmp_path / "state.sqlite"),
            decision_log=str(tmp_path / "decisions.jsonl"),
            metrics_listen=f"127.0.0.1:{free_port()}",
            admin_listen=f"127.0.0.1:{free_port()}",
        )
        server = RunningServer(settings, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def call(
    server: RunningServer, method: str, pairs: list[tuple[str, str]], caller: str = "svc"
) -> Any:
    with server.channel() as channel:
        try:
            return getattr(server.stub(channel), method)(
                attrs_request(POOL, pairs, username=MARK), metadata=as_caller(caller), timeout=10
            )
        except grpc.RpcError as error:
            return error


def reasons(violations: Any) -> list[tuple[str, str, str]]:
    return [(v.attribute, v.policy, v.reason) for v in violations]


def test_what_the_policies_deny_is_forwarded_with_would_deny(
    shadow: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = shadow()
    answer = call(server, "UpdateUserAttributes", [("custom:role", "x"), ("custom:tier", "y")])
    assert isinstance(answer, pb.UpdateUserAttributesResponse), answer
    decision = answer.decision
    assert (decision.allowed, decision.shadow, decision.shadow_allowed) == (True, True, True)
    assert (list(decision.violations), decision.denied_by) == ([], "")
    assert reasons(decision.would_deny) == [
        ("custom:role", "profile", "ATTRIBUTE_DENIED"),
        ("custom:tier", "", "ATTRIBUTE_NOT_ALLOWED"),
    ]
    # A caller no policy names, and Check: the same.
    stranger = call(server, "UpdateUserAttributes", [("given_name", "x")], caller="stranger")
    assert isinstance(stranger, pb.UpdateUserAttributesResponse), stranger
    assert reasons(stranger.decision.would_deny) == [("", "", "NO_APPLICABLE_POLICY")]
    checked = call(server, "CheckUpdateUserAttributes", [("custom:role", "x")])
    assert (checked.allowed, checked.shadow, checked.shadow_allowed) == (True, True, True)
    # What the policies allow is not shadow_allowed; audit findings stay would_deny.
    allowed = call(server, "UpdateUserAttributes", [("given_name", "x")])
    assert (allowed.decision.shadow, allowed.decision.shadow_allowed) == (True, False)
    assert reasons(allowed.decision.would_deny) == [("given_name", "watch", "ATTRIBUTE_DENIED")]
    forwarded = stub.calls()
    assert len(forwarded) == 3
    assert forwarded[0].body["UserAttributes"] == [
        {"Name": "custom:role", "Value": "x"},
        {"Name": "custom:tier", "Value": "y"},
    ]


def test_validation_pool_schema_and_enforcing_sms_guards_still_deny(
    shadow: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = shadow()
    invalid = call(server, "UpdateUserAttributes", [("given_name", "x" * 5000)])
    assert rich(invalid).info.reason == "INVALID_REQUEST"
    schema = call(server, "UpdateUserAttributes", [("custom:unknown", "x")])
    assert (rich(schema).code, rich(schema).info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "POOL_SCHEMA_VIOLATION",
    )
    assert rich(schema).info.metadata["shadow"] == "true"
    checked = call(server, "CheckUpdateUserAttributes", [("custom:unknown", "x")])
    assert (checked.allowed, checked.denied_by, checked.shadow) == (False, "pool_schema", True)
    assert checked.shadow_allowed  # the policies deny it too
    # The enforcing guard refuses GB; the audit guard (FR only) refuses nothing.
    refused = call(server, "UpdateUserAttributes", [("phone_number", "+442071838750")])
    assert rich(refused).info.reason == "SMS_COUNTRY_DENIED"
    us = call(server, "UpdateUserAttributes", [("phone_number", "+14155550100")])
    assert isinstance(us, pb.UpdateUserAttributesResponse), us
    assert list(us.decision.sms.would_refuse) == []
    assert reasons(us.decision.would_deny) == [
        ("phone_number", "audited", "SMS_COUNTRY_NOT_ALLOWED")
    ]
    assert len(stub.calls()) == 1


def test_shadow_is_in_the_decision_log_metrics_and_status(
    shadow: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = shadow()
    call(server, "UpdateUserAttributes", [("custom:role", MARK)])
    call(server, "UpdateUserAttributes", [("given_name", MARK)])
    call(server, "UpdateUserAttributes", [("custom:unknown", MARK)])
    call(server, "CheckUpdateUserAttributes", [("given_name", MARK * 5000)])
    log_file = tmp_path / "decisions.jsonl"
    entries = json_lines(log_file, 4)
    assert MARK not in log_file.read_text()
    # Every entry, refusals before any decision included.
    assert [(e["outcome"], e.get("shadow"), e.get("denied_by", "")) for e in entries] == [
        ("shadow_allowed", True, ""),
        ("allowed", True, ""),
        ("denied", True, "pool_schema"),
        ("invalid", True, ""),
    ]
    assert entries[0]["would_deny"] == [
        {
            "attribute": "custom:role",
            "policy": "profile",
            "entry": "deny[0]",
            "reason": "ATTRIBUTE_DENIED",
        }
    ]
    assert entries[0]["violations"] == []

    port = server.app.metrics_port
    samples = samples_of(metrics_text(port))
    requests = samples["attrgate_requests_total"]
    assert total(requests, outcome="shadow_allowed", method="UpdateUserAttributes") == 1
    assert total(requests, outcome="allowed") == 1
    assert total(requests, outcome="denied") == 1
    assert total(requests, outcome="invalid") == 1
    assert [value for _, value in samples["attrgate_shadow_mode"]] == [1.0]

    with grpc.insecure_channel(f"127.0.0.1:{server.app.admin_port}") as channel:
        status = pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
    assert status.shadow is True


def test_without_shadow_the_gauge_is_zero_and_policy_denials_are_denied(
    shadow: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = shadow(shadow=False)
    denied = call(server, "UpdateUserAttributes", [("custom:role", "x")])
    assert rich(denied).info.reason == "POLICY_DENIED"
    assert "shadow" not in rich(denied).info.metadata
    allowed = call(server, "UpdateUserAttributes", [("given_name", "x")])
    assert (allowed.decision.shadow, allowed.decision.shadow_allowed) == (False, False)
    gauge = samples_of(metrics_text(server.app.metrics_port))["attrgate_shadow_mode"]
    assert [value for _, value in gauge] == [0.0]
    with grpc.insecure_channel(f"127.0.0.1:{server.app.admin_port}") as channel:
        assert not pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10).shadow
    assert len(stub.calls()) == 1


def test_the_warning_comes_at_start_and_again_while_serving(
    shadow: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="attrgate")

    def warnings() -> int:
        return sum(
            1 for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == WARNING
        )

    server = shadow(shadow_reminder_period=0.2)
    assert warnings() >= 1  # logged by start(), before it returned
    assert wait_until(lambda: warnings() >= 3, seconds=30)
    server.stop()
    stopped = warnings()
    assert not wait_until(lambda: warnings() > stopped, seconds=0.6)  # no reminder once stopped


def test_serve_warns_at_start_in_the_process_log(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    port = free_port()
    process = start_serve(policies, port, output=tmp_path, ATTRGATE_SHADOW="true")
    try:
        assert wait_serving(f"127.0.0.1:{port}", process), (tmp_path / "err").read_text()
        wait_for(lambda: WARNING in (tmp_path / "err").read_text(), "the shadow warning", 30)
    finally:
        stop_serve(process)
    lines = [line for line in (tmp_path / "err").read_text().splitlines() if WARNING in line]
    assert lines
    assert all("WARNING" in line for line in lines)


def test_the_offline_tools_do_not_shadow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """explain (and test) decide through the same pipeline; shadow is a serve-time mode only."""
    monkeypatch.setenv("ATTRGATE_SHADOW", "true")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    status = main(
        ["explain", "--policies", str(policies), "--caller", "svc", "--pool", POOL, "custom:role=x"]
    )
    out = capsys.readouterr().out
    assert status == 1, out  # denied
    assert "shadow" not in out.lower()


def test_attrgate_call_says_shadow(
    shadow: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = shadow()
    call = ["call", "--check", "--target", server.target, "--caller", "svc", "--pool", POOL]
    assert main([*call, "--user", "ada", "custom:role=x"]) == 0
    out = capsys.readouterr().out
    decision = json.loads(out)["Attrgate"]
    assert decision["Allowed"] is True
    assert decision["Shadow"] is True
    assert decision["ShadowAllowed"] is True  # the policies deny it; shadow let it through
    [finding] = decision["WouldDeny"]
    assert (finding["Attribute"], finding["Reason"], finding["Policy"], finding["Entry"]) == (
        *("custom:role", "ATTRIBUTE_DENIED", "profile", "deny[0]"),
    )
