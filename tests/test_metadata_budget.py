"""What a `userPools: ["*"]` policy lets a caller spend on Cognito metadata, through the real
server: made-up pools and users are bounded per caller, not-found pools are cached, and a
throttled DescribeUserPool serves what it knew. Counted where Cognito receives the calls (moto's
recorder; the stub, which alone can throttle)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, describe_reply, error
from support.moto_cognito import MotoCognito, free_port
from support.prometheus import metrics_text, samples_of, total
from support.rpc import as_caller, attrs_request, rich
from support.waiting import json_lines

Serve = Callable[..., RunningServer]
POLICY = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: open}
spec:
  callers: [svc, other]
  userPools: ["*"]
  allow:
    - attribute: "*"
"""
PER_USER = """
---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: sms}
spec:
  userPools: ['*']
  limits:
    - {per: user, max: 5, window: 24h}
"""
US = "+14155550100"
# The defaults: 5 lookups a second per caller, 10 at once.
RATE, BURST = 5, 10


def send(
    server: RunningServer,
    requests: list[pb.UpdateUserAttributesRequest],
    caller: str = "svc",
    method: str = "UpdateUserAttributes",
) -> list[Any]:
    """All at once; each answer or the RpcError it raised, in order."""
    with server.channel() as channel:
        call = getattr(server.stub(channel), method)
        futures = [call.future(r, metadata=as_caller(caller), timeout=60) for r in requests]
        answers: list[Any] = []
        for future in futures:
            try:
                answers.append(future.result())
            except grpc.RpcError as exc:
                answers.append(exc)
        return answers


def one(server: RunningServer, pool: str, caller: str = "svc", user: str = "ada", **kw: str) -> Any:
    pairs = list(kw.items()) or [("given_name", "x")]
    return send(server, [attrs_request(pool, pairs, username=user)], caller)[0]


def reasons(answers: list[Any]) -> list[str]:
    return ["OK" if not isinstance(a, grpc.RpcError) else rich(a).info.reason for a in answers]


def retry_delay(answer: grpc.RpcError) -> float:
    status = rpc_status.from_call(answer)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9


def bounded_spend(
    server: RunningServer,
    moto: MotoCognito,
    made_up: list[pb.UpdateUserAttributesRequest],
    operation: str,
    not_found: str,
    lookup: str,
) -> int:
    """Send the made-up requests at once: moto receives at most the burst plus the rate over the
    time taken of `operation` calls, each answered `not_found`; every other request is refused
    without any call. How many calls went out."""
    with moto.recording():
        started = time.monotonic()
        answers = send(server, made_up)
        elapsed = time.monotonic() - started
        calls = moto.received(operation)
        assert moto.received("AdminUpdateUserAttributes") == 0
    found = reasons(answers)
    assert found.count(not_found) == calls
    assert found.count("METADATA_LOOKUP_LIMITED") == len(made_up) - calls
    assert BURST <= calls <= BURST + RATE * elapsed + 1, (calls, elapsed)
    limited = next(a for a in answers if rich(a).info.reason == "METADATA_LOOKUP_LIMITED")
    assert rich(limited).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich(limited).info.metadata["lookup"] == lookup
    assert 0 < retry_delay(limited) <= 1 / RATE
    return calls


# --- made-up pools ----------------------------------------------------------------------------


def test_made_up_pools_cost_at_most_the_burst_plus_the_rate(
    serve: Serve, moto: MotoCognito, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "decisions.log"
    server = serve(POLICY, moto.endpoint, metrics_listen=f"127.0.0.1:{port}", decision_log=str(log))
    made_up = [attrs_request(f"us-east-1_Fake{i}", [("given_name", "x")]) for i in range(200)]
    described = bounded_spend(
        server, moto, made_up, "DescribeUserPool", "COGNITO_RESOURCE_NOT_FOUND", "pool_metadata"
    )

    # The decision log and the metrics see the refusals like any other outcome.
    entries = json_lines(log, 200)
    refused = [e for e in entries if e.get("reason") == "METADATA_LOOKUP_LIMITED"]
    assert len(refused) == 200 - described
    assert {(e["outcome"], e["status"], e["limited"]) for e in refused} == {
        ("limited", "RESOURCE_EXHAUSTED", "pool_metadata")
    }
    samples = samples_of(metrics_text(port))
    requests = samples["attrgate_requests_total"]
    assert total(requests, reason="METADATA_LOOKUP_LIMITED", outcome="limited") == 200 - described
    lookups = samples["attrgate_metadata_lookups_total"]
    assert total(lookups, operation="DescribeUserPool", answer="limited") == 200 - described
    assert total(lookups, operation="DescribeUserPool", answer="cognito") == described


def test_the_same_made_up_pool_costs_one_call(serve: Serve, moto: MotoCognito) -> None:
    server = serve(POLICY, moto.endpoint)
    with moto.recording():
        answers = [one(server, "us-east-1_Missing1") for _ in range(50)]
        assert moto.received("DescribeUserPool") == 1
    assert {(rich(a).code, rich(a).info.reason) for a in answers} == {
        (grpc.StatusCode.NOT_FOUND, "COGNITO_RESOURCE_NOT_FOUND")
    }
    with server.channel() as channel:
        decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request("us-east-1_Missing1", [("given_name", "x")]), metadata=as_caller("svc")
        )
    assert (decision.allowed, decision.denied_by) == (False, "pool")


def test_a_caller_draining_its_budget_leaves_others_and_real_pools_alone(
    serve: Serve, moto: MotoCognito, pool: str, tmp_path: Path
) -> None:
    # Nothing stays fresh in the cache (every request for a real pool describes it again), and
    # a drained bucket stays drained for the length of the test (a token every 10 s).
    server = serve(
        POLICY,
        moto.endpoint,
        pool_cache_ttl=0.0,
        metadata_lookup_rate=0.1,
        decision_log=str(tmp_path / "d.log"),
    )
    assert isinstance(one(server, pool, "other"), pb.UpdateUserAttributesResponse)
    made_up = [attrs_request(f"us-east-1_Drain{i}", [("given_name", "x")]) for i in range(20)]
    assert reasons(send(server, made_up, "svc")).count("METADATA_LOOKUP_LIMITED") == 20 - BURST
    # CheckUpdateUserAttributes is bounded too.
    checked = send(
        server,
        [attrs_request("us-east-1_Drain99", [("given_name", "x")])],
        "svc",
        "CheckUpdateUserAttributes",
    )
    assert reasons(checked) == ["METADATA_LOOKUP_LIMITED"]
    assert rich(checked[0]).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # svc, over budget, still writes to a pool already known: served from cache, no call.
    with moto.recording():
        assert isinstance(one(server, pool, "svc"), pb.UpdateUserAttributesResponse)
        assert moto.received("DescribeUserPool") == 0
    with moto.recording():
        # Three times the burst of lookups that find their pool: none is refused.
        for i in range(3 * BURST):
            answer = one(server, pool, "other", given_name=f"n{i}")
            assert isinstance(answer, pb.UpdateUserAttributesResponse), reasons([answer])
        assert moto.received("DescribeUserPool") == 3 * BURST
    # Its own made-up pools are still looked up: the drained bucket was svc's.
    others = [attrs_request(f"us-east-1_Other{i}", [("given_name", "x")]) for i in range(BURST)]
    assert set(reasons(send(server, others, "other"))) == {"COGNITO_RESOURCE_NOT_FOUND"}


# --- a throttled DescribeUserPool -------------------------------------------------------------


def test_a_throttled_describe_serves_a_known_pool_stale_and_fails_a_new_one(
    serve: Serve,
    stub: CognitoStub,
    stub_credentials: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    # ttl 0: the description expires as soon as it is cached.
    server = serve(POLICY, stub.endpoint, pool_cache_ttl=0.0, metrics_listen=f"127.0.0.1:{port}")
    assert isinstance(one(server, "us-east-1_Pool1"), pb.UpdateUserAttributesResponse)
    stub.describe = error("TooManyRequestsException")
    answer = one(server, "us-east-1_Pool1", given_name="stale")
    assert isinstance(answer, pb.UpdateUserAttributesResponse), reasons([answer])
    assert [c.body["UserAttributes"] for c in stub.calls()][-1] == [
        {"Name": "given_name", "Value": "stale"}
    ]
    assert "DescribeUserPool us-east-1_Pool1 failed (THROTTLED)" in caplog.text
    never_seen = one(server, "us-east-1_Pool2")
    assert (rich(never_seen).code, rich(never_seen).info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "POOL_METADATA_UNAVAILABLE",
    )
    assert len(stub.calls()) == 2
    lookups = samples_of(metrics_text(port))["attrgate_metadata_lookups_total"]
    assert total(lookups, operation="DescribeUserPool", answer="stale") == 1


# --- AdminGetUser (per-user SMS limits) -------------------------------------------------------


def test_made_up_users_cost_at_most_the_burst_plus_the_rate(
    serve: Serve, moto: MotoCognito, tmp_path: Path
) -> None:
    pool = moto.create_pool(AutoVerifiedAttributes=["phone_number"])
    server = serve(POLICY + PER_USER, moto.endpoint, state=str(tmp_path / "s.sqlite"))
    made_up = [
        attrs_request(pool, [("phone_number", US)], username=f"ghost{i}") for i in range(100)
    ]
    bounded_spend(server, moto, made_up, "AdminGetUser", "COGNITO_USER_NOT_FOUND", "user_lookup")


def test_a_user_that_does_not_exist_is_denied_by_the_user_stage(
    serve: Serve, moto: MotoCognito, tmp_path: Path
) -> None:
    pool = moto.create_pool(AutoVerifiedAttributes=["phone_number"])
    log = tmp_path / "decisions.log"
    server = serve(
        POLICY + PER_USER, moto.endpoint, state=str(tmp_path / "s.sqlite"), decision_log=str(log)
    )
    missing = one(server, pool, user="nobody", phone_number=US)
    assert (rich(missing).code, rich(missing).info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "COGNITO_USER_NOT_FOUND",
    )
    with server.channel() as channel:
        decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(pool, [("phone_number", US)], username="nobody"),
            metadata=as_caller("svc"),
        )
    assert (decision.allowed, decision.denied_by) == (False, "user")
    assert [v.reason for v in decision.violations] == ["USER_NOT_FOUND"]
    entries = json_lines(log, 2)
    assert [(e["outcome"], e.get("denied_by")) for e in entries] == [("denied", "user")] * 2


@pytest.mark.parametrize(
    "failure",
    [error("TooManyRequestsException"), error("InternalErrorException", status=500)],
    ids=["throttled", "5xx"],
)
def test_a_failing_user_lookup_is_unavailable_and_forwards_nothing(
    serve: Serve, stub: CognitoStub, stub_credentials: None, tmp_path: Path, failure: Any
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.default = failure  # AdminGetUser (and any update, which must not come)
    server = serve(
        POLICY + PER_USER,
        stub.endpoint,
        state=str(tmp_path / "s.sqlite"),
        decision_log=str(tmp_path / "d.log"),
    )
    answer = one(server, "us-east-1_Pool1", phone_number=US)
    assert (rich(answer).code, rich(answer).info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "USER_LOOKUP_UNAVAILABLE",
    )
    assert stub.calls("AdminGetUser")
    assert stub.calls() == []
