"""After the policy: the user pool's schema, and the SMS cost guard, through the real server."""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from attrgate.v1 import attrgate_pb2 as pb
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, Reply, describe_reply, error
from support.moto_cognito import MotoCognito
from support.rpc import as_caller, attrs_request, rich
from support.rpc import update as send
from support.waiting import wait_until

CALLER = as_caller("svc")
OPEN_POLICY = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: open}
spec:
  callers: [svc]
  userPools: ["*"]
  allow:
    - attribute: "*"
    - attribute: phone_number_verified
    - attribute: email_verified
"""


def guard(body: str, name: str = "sms", mode: str = "enforce") -> str:
    indented = "\n".join("  " + line for line in body.strip("\n").splitlines())
    return (
        f"---\napiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {{name: {name}}}\n"
        f"spec:\n  mode: {mode}\n  userPools: ['*']\n{indented}\n"
    )


Serve = Callable[..., RunningServer]


def update(
    server: RunningServer, pool: str, pairs: list[tuple[str, str]], user: str = "ada"
) -> object:
    return send(server.target, attrs_request(pool, pairs, username=user))


def check(server: RunningServer, pool: str, pairs: list[tuple[str, str]]) -> pb.Decision:
    with server.channel() as channel:
        decision: pb.Decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(pool, pairs), metadata=CALLER, timeout=10
        )
        return decision


# --- the pool's schema ------------------------------------------------------------------------


@pytest.fixture
def schema_pool(moto: MotoCognito) -> str:
    pool = moto.create_pool(
        Schema=[
            {
                "Name": "tier",
                "AttributeDataType": "String",
                "Mutable": True,
                "StringAttributeConstraints": {"MaxLength": "5"},
            },
            {
                "Name": "level",
                "AttributeDataType": "Number",
                "Mutable": True,
                "NumberAttributeConstraints": {"MinValue": "1", "MaxValue": "9"},
            },
            {"Name": "born", "AttributeDataType": "String", "Mutable": False},
            {"Name": "vip", "AttributeDataType": "Boolean", "Mutable": True},
        ],
        UserAttributeUpdateSettings={"AttributesRequireVerificationBeforeUpdate": ["email"]},
        AutoVerifiedAttributes=["email"],
    )
    moto.create_user(pool, "ada", email="ada@example.com", given_name="Ada")
    return pool


def test_schema_findings_name_every_attribute_and_nothing_is_forwarded(
    serve: Serve, moto: MotoCognito, schema_pool: str, tmp_path: Path
) -> None:
    server = serve(OPEN_POLICY, moto.endpoint)
    before = moto.attributes(schema_pool, "ada")
    outcome = update(
        server,
        schema_pool,
        [
            ("given_name", "Ok"),
            ("custom:unknown", "x"),
            ("custom:tier", "toolong"),
            ("custom:level", "12"),
            ("custom:born", "1815"),
            ("custom:vip", "yes"),
            ("Given_Name", "x"),
        ],
    )
    assert isinstance(outcome, grpc.RpcError)
    error_ = rich(outcome)
    assert error_.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error_.info.reason == "POOL_SCHEMA_VIOLATION"
    assert [(v.field, v.reason) for v in error_.field_violations] == [
        ("user_attributes[1]", "SCHEMA_UNKNOWN_ATTRIBUTE"),
        ("user_attributes[2]", "SCHEMA_CONSTRAINT"),
        ("user_attributes[3]", "SCHEMA_CONSTRAINT"),
        ("user_attributes[4]", "SCHEMA_IMMUTABLE"),
        ("user_attributes[5]", "SCHEMA_TYPE"),
        ("user_attributes[6]", "SCHEMA_UNKNOWN_ATTRIBUTE"),
    ]
    assert moto.attributes(schema_pool, "ada") == before

    decision = check(server, schema_pool, [("custom:level", "0")])
    assert not decision.allowed
    assert decision.denied_by == "pool_schema"
    assert [v.reason for v in decision.violations] == ["SCHEMA_CONSTRAINT"]


def test_policy_findings_come_before_schema_findings(
    serve: Serve, moto: MotoCognito, schema_pool: str
) -> None:
    narrow = OPEN_POLICY.replace('- attribute: "*"', "- attribute: given_name")
    server = serve(narrow, moto.endpoint)
    outcome = update(server, schema_pool, [("custom:unknown", "x")])
    assert isinstance(outcome, grpc.RpcError)
    assert rich(outcome).info.reason == "POLICY_DENIED"


def test_pending_verification_is_reported(
    serve: Serve, moto: MotoCognito, schema_pool: str
) -> None:
    server = serve(OPEN_POLICY, moto.endpoint)
    held = update(server, schema_pool, [("email", "new@example.com")])
    assert isinstance(held, pb.UpdateUserAttributesResponse), held
    assert list(held.pending_verification) == ["email"]
    verified = update(
        server, schema_pool, [("email", "other@example.com"), ("email_verified", "true")]
    )
    assert isinstance(verified, pb.UpdateUserAttributesResponse), verified
    assert list(verified.pending_verification) == []


def test_a_pool_that_does_not_exist(serve: Serve, moto: MotoCognito) -> None:
    server = serve(OPEN_POLICY, moto.endpoint)
    outcome = update(server, "us-east-1_Missing1", [("given_name", "x")])
    assert isinstance(outcome, grpc.RpcError)
    assert (rich(outcome).code, rich(outcome).info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "COGNITO_RESOURCE_NOT_FOUND",
    )
    decision = check(server, "us-east-1_Missing1", [("given_name", "x")])
    assert (decision.allowed, decision.denied_by) == (False, "pool")


def test_pool_metadata_is_described_once_only_for_allowed_requests(
    serve: Serve, stub: CognitoStub, stub_credentials: None
) -> None:
    server = serve(OPEN_POLICY.replace("callers: [svc]", "callers: [svc]\n  # x"), stub.endpoint)
    with server.channel() as channel:
        stub_ = server.stub(channel)
        with pytest.raises(grpc.RpcError):
            stub_.UpdateUserAttributes(
                attrs_request("us-east-1_Pool1", [("given_name", "x")]),
                metadata=as_caller("stranger"),
            )
        assert stub.received == [], "a denied request described the pool"
        futures = [
            stub_.UpdateUserAttributes.future(
                attrs_request("us-east-1_Pool1", [("given_name", f"n{i}")]), metadata=CALLER
            )
            for i in range(8)
        ]
        for future in futures:
            future.result(timeout=10)
    describes = [r for r in stub.received if r.target.endswith(".DescribeUserPool")]
    assert len(describes) == 1
    assert len(stub.calls()) == 8


def test_pool_metadata_unavailable_fails_closed_unless_told_otherwise(
    serve: Serve, stub: CognitoStub, stub_credentials: None, spans: InMemorySpanExporter
) -> None:
    closed = serve(OPEN_POLICY, stub.endpoint, pool_cache_ttl=0.0)
    # A 5xx, and a 200 whose body is not a pool description (a garbling proxy).
    for reply in (error("InternalErrorException", status=500), Reply(body={"Other": 1})):
        stub.describe = reply
        outcome = update(closed, "us-east-1_Pool1", [("given_name", "x")])
        assert isinstance(outcome, grpc.RpcError)
        assert (rich(outcome).code, rich(outcome).info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "POOL_METADATA_UNAVAILABLE",
        )
    assert stub.calls() == []
    # The garbled answer is a failed call, not a successful one.
    described = [s for s in spans.get_finished_spans() if s.name == "cognito-idp.DescribeUserPool"]
    assert [(s.attributes or {}).get("attrgate.cognito.error_code") for s in described] == [
        "InternalErrorException",
        "MalformedResponse",
    ]
    open_ = serve(OPEN_POLICY, stub.endpoint, pool_metadata_fail_open=True)
    assert isinstance(
        update(open_, "us-east-1_Pool1", [("given_name", "x")]), pb.UpdateUserAttributesResponse
    )
    assert len(stub.calls()) == 1


# --- the SMS guard ----------------------------------------------------------------------------

US = "+14155550100"
US2 = "+14155550101"
GB = "+442071838750"
FR = "+33142685300"


@pytest.fixture
def sms_stub(stub: CognitoStub, stub_credentials: None) -> CognitoStub:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    return stub


def sms_server(serve: Serve, endpoint: str, tmp_path: Path, guards: str) -> RunningServer:
    return serve(OPEN_POLICY + guards, endpoint, state=str(tmp_path / "state.sqlite"))


@dataclass(frozen=True)
class SmsCognito:
    """moto with SigV4 checked, and a pool that verifies phone numbers: where SMS tests send
    unless they need an error or a delay only the stub produces."""

    endpoint: str
    pool: str
    forwarded: Callable[[], int]  # AdminUpdateUserAttributes calls attrgate sent


@pytest.fixture
def sms(moto: MotoCognito) -> Iterator[SmsCognito]:
    pool = moto.create_pool(AutoVerifiedAttributes=["phone_number"])
    moto.create_user(pool, "ada", given_name="Ada")
    with moto.recording():
        yield SmsCognito(moto.endpoint, pool, lambda: moto.received("AdminUpdateUserAttributes"))


LIMIT_2 = guard(
    """
countries: {allow: [US, GB]}
limits:
  - {per: phone_number, max: 2, window: 24h}
"""
)


def test_sms_limit_refuses_with_quota_failure_and_retry_info(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    server = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    for _ in range(2):
        ok = update(server, sms.pool, [("phone_number", US)])
        assert isinstance(ok, pb.UpdateUserAttributesResponse), ok
        assert ok.decision.sms.triggers_sms
        assert ok.decision.sms.country == "US"
    refused = update(server, sms.pool, [("phone_number", US)])
    assert isinstance(refused, grpc.RpcError)
    error_ = rich(refused)
    assert (error_.code, error_.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SMS_LIMIT_EXCEEDED",
    )
    status = rpc_status.from_call(refused)
    assert status is not None
    quota, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    kinds = set()
    for detail in status.details:
        if detail.Unpack(quota):
            kinds.add("quota")
        elif detail.Unpack(retry):
            kinds.add("retry")
    assert kinds == {"quota", "retry"}
    assert [v.subject for v in quota.violations] == ["SmsGuard sms limits[0]"]
    assert US not in str(quota)
    assert US not in error_.message
    assert 23 * 3600 < retry.retry_delay.seconds <= 24 * 3600
    assert sms.forwarded() == 2
    # Another number still has room: the limit is per phone number.
    assert isinstance(
        update(server, sms.pool, [("phone_number", US2)]), pb.UpdateUserAttributesResponse
    )


def test_only_sms_triggering_writes_count(serve: Serve, sms: SmsCognito, tmp_path: Path) -> None:
    server = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    for _ in range(3):
        verified = update(
            server, sms.pool, [("phone_number", US), ("phone_number_verified", "true")]
        )
        assert isinstance(verified, pb.UpdateUserAttributesResponse), verified
        assert not verified.decision.sms.triggers_sms
    for _ in range(2):
        assert isinstance(
            update(server, sms.pool, [("phone_number", US)]),
            pb.UpdateUserAttributesResponse,
        )
    # Counting is on: the third message-sending write finds the limit of 2 full.
    full = update(server, sms.pool, [("phone_number", US)])
    assert rich(full).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]
    assert sms.forwarded() == 5


def test_a_pool_that_does_not_verify_phones_sends_no_sms(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    server = sms_server(serve, stub.endpoint, tmp_path, LIMIT_2)
    for _ in range(3):
        outcome = update(server, "us-east-1_Pool1", [("phone_number", US)])
        assert isinstance(outcome, pb.UpdateUserAttributesResponse), outcome
        assert not outcome.decision.sms.triggers_sms


def test_country_rule_applies_to_every_phone_write(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    server = sms_server(
        serve, sms.endpoint, tmp_path, LIMIT_2 + guard("countries: {deny: [GB]}", "watch", "audit")
    )
    for pairs in (
        [("phone_number", FR)],
        [("phone_number", FR), ("phone_number_verified", "true")],
    ):
        outcome = update(server, sms.pool, pairs)
        assert isinstance(outcome, grpc.RpcError)
        error_ = rich(outcome)
        assert (error_.code, error_.info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "SMS_COUNTRY_DENIED",
        )
        assert [(v.field, v.reason) for v in error_.field_violations] == [
            ("user_attributes[0]", "SMS_COUNTRY_NOT_ALLOWED")
        ]
    allowed = update(server, sms.pool, [("phone_number", GB)])
    assert isinstance(allowed, pb.UpdateUserAttributesResponse), allowed
    assert [(v.policy, v.reason) for v in allowed.decision.would_deny] == [
        ("watch", "SMS_COUNTRY_NOT_ALLOWED")
    ]
    assert sms.forwarded() == 1


def test_invalid_phone_numbers_are_invalid_argument(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    server = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    for bad in ("+1415555", "4155550100", "+1 415 555 0100"):
        outcome = update(server, sms.pool, [("phone_number", bad)])
        assert isinstance(outcome, grpc.RpcError)
        assert [v.reason for v in rich(outcome).field_violations] == ["INVALID_PHONE_NUMBER"]


def test_budget_is_exact_in_micro_units(serve: Serve, sms: SmsCognito, tmp_path: Path) -> None:
    budget = guard(
        """
budget:
  currency: USD
  amount: 0.0883
  window: month
  pricePerMessage: {US: 0.00883, default: 0.10}
"""
    )
    server = sms_server(serve, sms.endpoint, tmp_path, budget)
    numbers = [f"+1415555{n:04d}" for n in range(100, 111)]
    outcomes = [update(server, sms.pool, [("phone_number", n)]) for n in numbers]
    ok = [o for o in outcomes if isinstance(o, pb.UpdateUserAttributesResponse)]
    assert len(ok) == 10  # 10 x 0.00883 = 0.0883 exactly; the 11th would be one over
    assert rich(outcomes[-1]).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]


def test_check_consumes_nothing(serve: Serve, sms: SmsCognito, tmp_path: Path) -> None:
    server = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    for _ in range(5):
        decision = check(server, sms.pool, [("phone_number", US)])
        assert decision.allowed
        assert decision.sms.triggers_sms
    for _ in range(2):
        assert isinstance(
            update(server, sms.pool, [("phone_number", US)]),
            pb.UpdateUserAttributesResponse,
        )
    decision = check(server, sms.pool, [("phone_number", US)])
    assert (decision.allowed, decision.denied_by) == (False, "sms_limit")


def test_a_refused_write_gives_its_reservation_back_a_doubtful_one_keeps_it(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    server = sms_server(serve, sms_stub.endpoint, tmp_path, LIMIT_2)
    # Cognito answered with an error of its own: no message was sent, the count is released.
    sms_stub.program(error("InvalidParameterException"))
    assert isinstance(update(server, "us-east-1_Pool1", [("phone_number", US)]), grpc.RpcError)
    # A 5xx: nobody knows whether a message left, so it counts, and it is never retried.
    sms_stub.program(error("InternalErrorException", status=500))
    assert isinstance(update(server, "us-east-1_Pool1", [("phone_number", US)]), grpc.RpcError)
    assert len(sms_stub.calls()) == 2  # the 5xx was not retried
    assert isinstance(
        update(server, "us-east-1_Pool1", [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    refused = update(server, "us-east-1_Pool1", [("phone_number", US)])
    assert rich(refused).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]


def test_throttling_is_still_retried_for_sms_writes(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    server = sms_server(serve, sms_stub.endpoint, tmp_path, LIMIT_2)
    sms_stub.program(error("TooManyRequestsException"), Reply())
    assert isinstance(
        update(server, "us-east-1_Pool1", [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    assert len(sms_stub.calls()) == 2


def test_guards_without_a_store_refuse_to_start(serve: Serve, sms: SmsCognito) -> None:
    from attrgate.config import ConfigError

    with pytest.raises(ConfigError, match="--state"):
        serve(OPEN_POLICY + LIMIT_2, sms.endpoint)


def test_sms_usage_reports_every_limit_and_budget_from_the_store(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    import subprocess
    import sys

    guards = guard(
        """
limits:
  - {per: phone_number, max: 2, window: 24h}
  - {per: global, max: 100, window: 1h}
budget:
  currency: USD
  amount: 1.00
  window: month
  pricePerMessage: {US: 0.00883, default: 0.10}
"""
    )
    server = sms_server(serve, sms.endpoint, tmp_path, guards)
    for number in (US, US, US2):
        assert isinstance(
            update(server, sms.pool, [("phone_number", number)]),
            pb.UpdateUserAttributesResponse,
        )
    policies = Path(server.settings.policies or "")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "attrgate",
            "sms",
            "usage",
            "--policies",
            str(policies),
            "--state",
            str(tmp_path / "state.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        "SmsGuard sms (enforce)",
        "  limits[0] per phone_number, at most 2 per 24h: 2 phone_number counted, "
        "highest 2/2, 1 at the limit",
        "  limits[1] per global, at most 100 per 1h:",
        "    global: 3/100",
        "  budget: 1.00 USD per month: 0.02649 spent (2.6%)",
    ]
    assert US not in result.stdout


def test_per_user_limits_key_on_the_sub_whatever_the_spelling(
    serve: Serve, moto: MotoCognito, tmp_path: Path
) -> None:
    pool = moto.create_pool(UsernameAttributes=["email"], AutoVerifiedAttributes=["phone_number"])
    created = moto.admin.admin_create_user(
        UserPoolId=pool, Username="ada@example.com", MessageAction="SUPPRESS"
    )
    sub = created["User"]["Username"]  # with email as username, Cognito's username is the sub
    per_user = guard("limits:\n  - {per: user, max: 1, window: 24h}")
    server = serve(OPEN_POLICY + per_user, moto.endpoint, state=str(tmp_path / "s.sqlite"))
    first = update(server, pool, [("phone_number", US)], user="ada@example.com")
    assert isinstance(first, pb.UpdateUserAttributesResponse), first
    # The same user by another name: the same sub, so the same count.
    again = update(server, pool, [("phone_number", US2)], user=sub)
    assert isinstance(again, grpc.RpcError)
    assert rich(again).info.reason == "SMS_LIMIT_EXCEEDED"
    missing = update(server, pool, [("phone_number", US2)], user="nobody@example.com")
    assert isinstance(missing, grpc.RpcError)
    assert (rich(missing).code, rich(missing).info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "COGNITO_USER_NOT_FOUND",
    )


def test_an_unreachable_store_fails_sms_writes_closed_and_fast_others_go_on(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:

    from support.moto_cognito import free_port

    key = tmp_path / "hmac.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    server = serve(
        OPEN_POLICY + LIMIT_2,
        sms.endpoint,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        hmac_key_file=str(key),
    )
    started = time.monotonic()
    outcome = update(server, sms.pool, [("phone_number", US)])
    assert time.monotonic() - started < 10  # refused at once, not after a hang
    assert isinstance(outcome, grpc.RpcError)
    assert (rich(outcome).code, rich(outcome).info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "SMS_STORE_UNAVAILABLE",
    )
    assert sms.forwarded() == 0
    assert isinstance(
        update(server, sms.pool, [("given_name", "Ada")]), pb.UpdateUserAttributesResponse
    )


def test_the_embedded_store_keeps_its_hmac_key_and_counts_across_restarts(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:

    first = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    for _ in range(2):
        assert isinstance(
            update(first, sms.pool, [("phone_number", US)]),
            pb.UpdateUserAttributesResponse,
        )
    first.stop()
    again = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2)
    refused = update(again, sms.pool, [("phone_number", US)])
    assert rich(refused).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert US not in dump
    assert US.removeprefix("+") not in dump


def test_the_policy_reference_worked_example_holds(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs/policies.md").read_text()
    example = text.split("### Worked example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    server = sms_server(serve, sms.endpoint, tmp_path, "---\n" + example)
    pool = sms.pool

    def outcome(pairs: list[tuple[str, str]]) -> str:
        result = update(server, pool, pairs)
        if isinstance(result, pb.UpdateUserAttributesResponse):
            return "OK"
        return rich(result).info.reason  # type: ignore[arg-type]

    def refusal(pairs: list[tuple[str, str]]) -> tuple[list[str], float]:
        """The QuotaFailure subjects and the RetryInfo delay (seconds) of a refused write."""
        refused = update(server, pool, pairs)
        assert isinstance(refused, grpc.RpcError)
        assert rich(refused).info.reason == "SMS_LIMIT_EXCEEDED"
        status = rpc_status.from_call(refused)
        assert status is not None
        quota, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
        assert any(d.Unpack(quota) for d in status.details)
        assert any(d.Unpack(retry) for d in status.details)
        delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        return [v.subject for v in quota.violations], delay

    assert outcome([("phone_number", US)]) == "OK"
    assert outcome([("phone_number", US)]) == "OK"
    assert outcome([("phone_number", FR)]) == "SMS_COUNTRY_DENIED"
    # Row 4: the budget, free again at 00:00 UTC on the first of next month.
    now = datetime.datetime.now(datetime.UTC)
    month_end = (now.replace(day=28) + datetime.timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    subjects, delay = refusal([("phone_number", GB)])
    assert subjects == ["SmsGuard default budget"]
    assert abs(delay - (month_end - now).total_seconds()) < 60
    assert outcome([("phone_number", US), ("phone_number_verified", "true")]) == "OK"
    assert outcome([("phone_number", US)]) == "OK"
    # A fourth to that number: limits[0], free when the oldest of the three is 24 h old.
    subjects, delay = refusal([("phone_number", US)])
    assert subjects == ["SmsGuard default limits[0]"]
    assert 23 * 3600 < delay <= 24 * 3600


def test_an_audit_guard_counts_apart_and_never_refuses(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    audit = guard("limits:\n  - {per: phone_number, max: 1, window: 24h}", "tight", "audit")
    server = sms_server(serve, sms.endpoint, tmp_path, LIMIT_2 + audit)
    first = update(server, sms.pool, [("phone_number", US)])
    assert isinstance(first, pb.UpdateUserAttributesResponse), first
    assert list(first.decision.sms.would_refuse) == []
    second = update(server, sms.pool, [("phone_number", US)])
    assert isinstance(second, pb.UpdateUserAttributesResponse), second
    assert [(r.guard, r.rule) for r in second.decision.sms.would_refuse] == [("tight", "limits[0]")]
    assert second.decision.sms.would_refuse[0].retry_at_unix_ms > 0
    # The enforcing guard's own count is untouched by the audit one: its third is refused.
    third = update(server, sms.pool, [("phone_number", US)])
    assert rich(third).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]


def test_a_read_timeout_is_neither_retried_nor_released(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    server = serve(
        OPEN_POLICY + LIMIT_2,
        sms_stub.endpoint,
        state=str(tmp_path / "state.sqlite"),
        cognito_read_timeout=0.5,
    )
    sms_stub.program(Reply(delay=1.5))
    timed_out = update(server, "us-east-1_Pool1", [("phone_number", US)])
    assert rich(timed_out).code == grpc.StatusCode.UNAVAILABLE  # type: ignore[arg-type]
    assert len(sms_stub.calls()) == 1  # a retry could have sent a second message
    assert isinstance(
        update(server, "us-east-1_Pool1", [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    # The timed-out write still counts: when in doubt, count.
    assert rich(update(server, "us-east-1_Pool1", [("phone_number", US)])).info.reason == (  # type: ignore[arg-type]
        "SMS_LIMIT_EXCEEDED"
    )


def test_a_connection_never_made_gives_the_reservation_back(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    from support.moto_cognito import free_port

    state = str(tmp_path / "state.sqlite")
    # The pool is described through a working endpoint first, then Cognito goes away.
    server = serve(OPEN_POLICY + LIMIT_2, sms_stub.endpoint, state=state)
    assert isinstance(
        update(server, "us-east-1_Pool1", [("given_name", "x")]), pb.UpdateUserAttributesResponse
    )
    sms_stub.stop()
    dead = serve(
        OPEN_POLICY + LIMIT_2,
        f"http://127.0.0.1:{free_port()}",
        state=state,
        pool_metadata_fail_open=True,
    )
    for _ in range(4):
        outcome = update(dead, "us-east-1_Pool1", [("phone_number", US)])
        assert rich(outcome).code == grpc.StatusCode.UNAVAILABLE  # type: ignore[arg-type]
        # Refused for the connection, never for the limit of 2: each reservation came back.
        assert rich(outcome).info.reason == "COGNITO_UNAVAILABLE"  # type: ignore[arg-type]


def held(state: Path) -> int:
    """Places held in the SQLite state file, read as another process would."""
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    return int(count)


def _two_ok(server: RunningServer, pool: str) -> None:
    """Both places of LIMIT_2 are free: two writes pass (a leaked reservation would refuse one)."""
    for _ in range(2):
        outcome = update(server, pool, [("phone_number", US)])
        assert isinstance(outcome, pb.UpdateUserAttributesResponse), outcome


def test_a_write_that_never_left_gives_its_reservation_back(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    import threading

    # One call under way at Cognito at a time: the second waits for the bulkhead's slot.
    one_at_a_time = (
        "---\napiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {name: account}\n"
        "spec:\n  rate: 100\n  others: {maxInFlight: 1}\n"
    )
    server = serve(
        OPEN_POLICY + LIMIT_2 + one_at_a_time, sms_stub.endpoint, state=str(tmp_path / "s.db")
    )
    answer = threading.Event()
    sms_stub.program(Reply(hold=answer))
    blocker = threading.Thread(
        target=update, args=(server, "us-east-1_Pool1", [("given_name", "slow")])
    )
    blocker.start()
    try:
        assert wait_until(lambda: bool(sms_stub.calls()))
        # Reserved, then refused by the bulkhead the held call keeps (its caller cannot wait
        # for the slot): never sent, so never counted.
        with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
            server.stub(channel).UpdateUserAttributes(
                attrs_request("us-east-1_Pool1", [("phone_number", US)]),
                metadata=CALLER,
                timeout=0.5,
            )
    finally:
        answer.set()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich(caught.value).info.reason == "QUOTA_EXCEEDED"
    blocker.join(10)
    # Not sent: the place is given back.
    assert wait_until(lambda: held(tmp_path / "s.db") == 0, 10)
    _two_ok(server, "us-east-1_Pool1")
    assert len(sms_stub.calls()) == 3


def test_a_late_answer_proving_no_sms_gives_the_reservation_back(
    serve: Serve, sms_stub: CognitoStub, tmp_path: Path
) -> None:
    server = sms_server(serve, sms_stub.endpoint, tmp_path, LIMIT_2)
    # Cognito answers only when the test says so (a fixed delay raced the test's own checks on
    # a loaded machine: the answer could come before the first look at the store).
    answer = threading.Event()
    sms_stub.program(Reply(status=400, body={"__type": "AliasExistsException"}, hold=answer))
    try:
        with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
            server.stub(channel).UpdateUserAttributes(
                attrs_request("us-east-1_Pool1", [("phone_number", US)]),
                metadata=CALLER,
                timeout=3,
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(sms_stub.calls()) == 1  # the write reached Cognito before the deadline
        assert held(tmp_path / "state.sqlite") == 1  # counted while Cognito has not answered
    finally:
        answer.set()
    # Cognito answers 400 after the caller left: no message went out, the place comes back.
    assert wait_until(lambda: held(tmp_path / "state.sqlite") == 0, 10)
    _two_ok(server, "us-east-1_Pool1")


def test_a_caller_leaving_while_the_store_is_busy_leaks_nothing(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    import threading

    state = tmp_path / "s.db"
    server = serve(OPEN_POLICY + LIMIT_2, sms.endpoint, state=str(state))
    holder = sqlite3.connect(state, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock for a while
    released = threading.Timer(0.6, lambda: holder.execute("COMMIT"))
    released.start()
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).UpdateUserAttributes(
            attrs_request(sms.pool, [("phone_number", US)]), metadata=CALLER, timeout=0.4
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert released.is_alive(), "the lock was gone before the caller left: no race was tested"
    released.join(10)
    holder.close()
    # The store works in order: whatever of the abandoned reservation ran, its release ran next,
    # before these two.
    _two_ok(server, sms.pool)
    assert sms.forwarded() == 2


def test_an_audit_guard_does_not_count_what_the_enforcing_guard_refused(
    serve: Serve, sms: SmsCognito, tmp_path: Path
) -> None:
    import asyncio

    one = guard("limits:\n  - {per: global, max: 1, window: 1h}")
    shadow = guard("limits:\n  - {per: global, max: 5, window: 1h}", "shadow", "audit")
    server = sms_server(serve, sms.endpoint, tmp_path, one + shadow)
    assert isinstance(
        update(server, sms.pool, [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    for _ in range(3):
        assert rich(update(server, sms.pool, [("phone_number", US)])).info.reason == (  # type: ignore[arg-type]
            "SMS_LIMIT_EXCEEDED"
        )

    found = asyncio.run(_usage_now(tmp_path / "state.sqlite", "sms:shadow:"))
    assert found == {"sms:shadow:a:l0:global": 1}


async def _usage_now(path: Path, prefix: str) -> dict[str, int]:
    from attrgate.guards.counting import wall_clock_ms
    from attrgate.store.sqlite import SqliteStore

    store = SqliteStore(str(path))
    try:
        return await store.usage_by_prefix(prefix, 3_600_000, wall_clock_ms())
    finally:
        await store.close()


def test_replicas_share_counts_through_redis(
    serve: Serve,
    sms: SmsCognito,
    tmp_path: Path,
    redis_server: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import redis

    url = redis_server.url  # type: ignore[attr-defined]
    with redis.Redis.from_url(url) as client:
        client.flushall()
    caplog.set_level(logging.WARNING, logger="attrgate")
    with_newline, without = tmp_path / "a.key", tmp_path / "b.key"
    with_newline.write_bytes(b"k" * 32 + b"\n")  # as editors and `echo` write it
    without.write_bytes(b"k" * 32)
    # ATTRGATE_STATE as the image sets it: Redis takes over, and says so.
    first = serve(
        OPEN_POLICY + LIMIT_2,
        sms.endpoint,
        redis_url=url,
        hmac_key_file=str(with_newline),
        state=str(tmp_path / "unused.sqlite"),
    )
    assert "is not used" in caplog.text
    # The test redis-server runs without an append-only file: a start warns about it.
    assert "runs without appendonly yes" in caplog.text
    second = serve(OPEN_POLICY + LIMIT_2, sms.endpoint, redis_url=url, hmac_key_file=str(without))
    assert isinstance(
        update(first, sms.pool, [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    assert isinstance(
        update(second, sms.pool, [("phone_number", US)]), pb.UpdateUserAttributesResponse
    )
    third = update(first, sms.pool, [("phone_number", US)])
    assert rich(third).info.reason == "SMS_LIMIT_EXCEEDED"  # type: ignore[arg-type]
    assert not (tmp_path / "unused.sqlite").exists()


def test_sms_usage_reads_redis_when_the_image_also_sets_a_state_file(
    tmp_path: Path, redis_server: object
) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "g.yaml").write_text(OPEN_POLICY + LIMIT_2)
    env = {
        **os.environ,
        "ATTRGATE_STATE": str(tmp_path / "absent.sqlite"),
        "ATTRGATE_REDIS_URL": redis_server.url,  # type: ignore[attr-defined]
    }
    result = subprocess.run(
        [sys.executable, "-m", "attrgate", "sms", "usage", "--policies", str(tmp_path / "g.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "reading Redis; --state is not used" in result.stderr
    assert result.stdout.splitlines()[0] == "SmsGuard sms (enforce)"
