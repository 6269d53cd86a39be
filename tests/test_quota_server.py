"""The quota governor inside a real server (grpc.aio on loopback) against the Cognito stub:
what a refused call is answered, that it sends nothing and keeps no SMS reservation, waiting
within maxWait and the caller's deadline, the bulkhead, retries taking tokens, and reloads."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, Reply, describe_reply, error
from support.policies import sms_guard
from support.prometheus import metrics_text, samples_of, total
from support.rpc import as_caller, request, rich

POOL = "us-east-1_Quota1"
ALLOW = (
    "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: p}\nspec:\n"
    '  callers: ["*"]\n  userPools: ["*"]\n'
    "  allow: [{attribute: given_name}, {attribute: phone_number}]\n"
)


def quota(spec: str, name: str = "account") -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        f"---\napiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {{name: {name}}}\n"
        f"spec:\n{body}\n"
    )


def call(
    server: RunningServer,
    caller: str = "svc",
    timeout: float = 10,
    username: str = "ada",
    **attributes: str,
) -> grpc.RpcError | None:
    with server.channel() as channel:
        try:
            server.stub(channel).UpdateUserAttributes(
                request(POOL, username=username, **(attributes or {"given_name": "Ada"})),
                metadata=as_caller(caller),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            return exc
    return None


def details(exc: grpc.RpcError) -> tuple[error_details_pb2.QuotaFailure, float]:
    status = rpc_status.from_call(exc)
    assert status is not None
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    found = set()
    for detail in status.details:
        for kind in (failure, retry):
            if detail.Is(kind.DESCRIPTOR):
                detail.Unpack(kind)
                found.add(type(kind).__name__)
    assert found == {"QuotaFailure", "RetryInfo"}
    return failure, retry.retry_delay.ToTimedelta().total_seconds()


def quota_samples(server: RunningServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    return samples_of(metrics_text(server.app.metrics_port))


@pytest.fixture
def start(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> Callable[..., RunningServer]:
    def started(policies: str, **overrides: object) -> RunningServer:
        return serve(policies, stub.endpoint, metrics_listen="127.0.0.1:0", **overrides)

    return started


def test_a_call_over_the_quota_is_refused_with_retry_info_and_sends_nothing(
    start: Callable[..., RunningServer], stub: CognitoStub, tmp_path: Path
) -> None:
    log_file = tmp_path / "decisions.jsonl"
    server = start(
        ALLOW + quota("rate: 1\nburst: 1\nqueue: {maxWait: 0s}"), decision_log=str(log_file)
    )
    time.sleep(1.2)  # the bucket starts empty: one token in a second
    # A name no hex id can contain (request and decision ids are hex).
    user = "zelda-quota-user"
    assert call(server, username=user) is None
    refused = call(server, username=user)
    assert refused is not None
    error_ = rich(refused)
    assert error_.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_.info.reason == "QUOTA_EXCEEDED"
    assert error_.info.metadata["quota_share"] == "others"
    assert error_.info.metadata["quota_scope"] == "share"
    failure, retry_after = details(refused)
    assert [v.subject for v in failure.violations] == ["CognitoQuota account share others"]
    assert 0 < retry_after <= 1.0
    assert user not in error_.message
    assert len(stub.calls()) == 1  # the refused call never reached Cognito
    server.stop()
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    refused_entry = [e for e in entries if e.get("outcome") == "quota_exceeded"]
    assert len(refused_entry) == 1
    assert refused_entry[0]["quota"]["share"] == "others"
    assert refused_entry[0]["status"] == "RESOURCE_EXHAUSTED"
    assert refused_entry[0]["matched_policies"] == ["p"]
    assert user not in log_file.read_text()


def test_a_refused_sms_write_keeps_no_reservation(
    start: Callable[..., RunningServer], stub: CognitoStub, tmp_path: Path
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    policies = (
        ALLOW
        + sms_guard("limits:\n  - {per: global, max: 1, window: 1h}")
        + quota("rate: 1\nburst: 1\nqueue: {maxWait: 0s}")
    )
    server = start(policies, state=str(tmp_path / "state.sqlite"))
    time.sleep(1.2)
    assert call(server, given_name="Ada") is None  # takes the only token
    refused = call(server, phone_number="+14155550100")
    assert refused is not None
    assert rich(refused).info.reason == "QUOTA_EXCEEDED"
    time.sleep(1.2)
    # The SMS limit of 1 was not spent by the refused write: this one passes...
    assert call(server, phone_number="+14155550101") is None
    time.sleep(1.2)
    # ...and the limit still counts.
    limited = call(server, phone_number="+14155550102")
    assert limited is not None
    assert rich(limited).info.reason == "SMS_LIMIT_EXCEEDED"


def test_calls_wait_their_turn_within_max_wait(
    start: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = start(ALLOW + quota("rate: 4\nburst: 1\nqueue: {maxWait: 5s}"))
    time.sleep(0.3)
    with server.channel() as channel:  # one channel: the six arrive together
        rpc = server.stub(channel).UpdateUserAttributes
        futures = [
            rpc.future(request(POOL, username=f"u{i}", given_name="Ada"), metadata=as_caller("svc"))
            for i in range(6)
        ]
        for future in futures:
            future.result(timeout=15)
    assert len(stub.calls()) == 6
    samples = quota_samples(server)
    assert total(samples["attrgate_quota_tokens_total"], share="others", result="granted") == 6
    assert total(samples["attrgate_quota_wait_seconds_count"], share="others") == 6
    # 4 per second with a bucket of one, measured where the tokens are handed out (delivery
    # delays on a busy machine do not matter): at best waits of 0, 1/4, 2/4 ... 5/4 s.
    assert total(samples["attrgate_quota_wait_seconds_sum"], share="others") >= 3.0


def test_the_callers_deadline_bounds_the_wait(
    start: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = start(ALLOW + quota("rate: 0.5\nburst: 1\nqueue: {maxWait: 30s}"))
    time.sleep(2.2)
    assert call(server) is None
    started = time.monotonic()
    refused = call(server, timeout=1.0)  # the next token is 2 s away
    took = time.monotonic() - started
    assert refused is not None
    assert rich(refused).info.reason == "QUOTA_EXCEEDED"  # said at once, not a deadline
    assert took < 1.0
    assert len(stub.calls()) == 1


def test_the_bulkhead_holds_a_slot_until_cognito_answers(
    start: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    hold = threading.Event()
    stub.default = Reply(hold=hold)
    server = start(ALLOW + quota("rate: 100\nothers: {maxInFlight: 2}\nqueue: {maxWait: 300ms}"))
    try:
        time.sleep(0.3)
        with ThreadPoolExecutor(2) as pool:
            # Both callers give up, but their calls still hang at Cognito.
            gone = list(pool.map(lambda i: call(server, username=f"u{i}", timeout=0.8), range(2)))
        assert all(g is not None and g.code() == grpc.StatusCode.DEADLINE_EXCEEDED for g in gone)
        full = call(server, username="u3")
        assert full is not None
        assert rich(full).info.metadata["quota_scope"] == "in_flight"
        assert len(stub.calls()) == 2
    finally:
        hold.set()
    stub.default = Reply()
    deadline = time.monotonic() + 10
    while call(server, username="u4") is not None:  # the slots free as Cognito answers
        assert time.monotonic() < deadline, "the bulkhead never gave its slots back"
        time.sleep(0.1)
    samples = quota_samples(server)
    assert total(samples["attrgate_quota_tokens_total"], result="in_flight_exceeded") >= 1


def test_a_retry_takes_a_token_and_without_one_is_not_sent(
    start: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    throttled = error("TooManyRequestsException")
    server = start(ALLOW + quota("rate: 100\nburst: 100"), cognito_max_attempts=2)
    time.sleep(0.3)
    stub.program(throttled)
    assert call(server) is None  # throttled once, retried with a token
    assert len(stub.calls()) == 2
    samples = quota_samples(server)
    assert total(samples["attrgate_quota_tokens_total"], result="retry") == 1
    server.stop()

    stub.received.clear()
    server = start(ALLOW + quota("rate: 0.5\nburst: 1"), cognito_max_attempts=2)
    time.sleep(2.2)  # one token
    stub.program(throttled)
    answer = call(server)
    assert answer is not None
    assert rich(answer).info.reason == "COGNITO_THROTTLED"
    assert len(stub.calls()) == 1  # no token for the retry: not sent
    samples = quota_samples(server)
    assert total(samples["attrgate_quota_tokens_total"], result="retry_refused") == 1
    assert total(samples["attrgate_quota_adaptive_factor"]) < 1.0  # the throttle was heard


def test_a_reload_brings_the_new_quota_and_one_without_a_quota_lifts_it(
    start: Callable[..., RunningServer], stub: CognitoStub, write_policies: Callable[..., Path]
) -> None:
    server = start(ALLOW + quota("rate: 1\nburst: 1\nqueue: {maxWait: 0s}"))
    samples = quota_samples(server)
    assert total(samples["attrgate_quota_configured_rate"]) == 1
    write_policies(ALLOW + quota("rate: 50\nburst: 50\nqueue: {maxWait: 0s}"))
    assert server.run(server.app.reload())
    time.sleep(0.6)  # the next lease renewal follows the serving set
    assert total(quota_samples(server)["attrgate_quota_configured_rate"]) == 50
    answers = [call(server, username=f"u{i}") for i in range(5)]
    assert answers == [None] * 5
    write_policies(ALLOW)
    assert server.run(server.app.reload())
    answers = [call(server, username=f"v{i}") for i in range(20)]
    assert answers == [None] * 20


def test_when_the_server_stops_calls_waiting_for_a_token_are_refused_at_once(
    start: Callable[..., RunningServer], stub: CognitoStub
) -> None:
    server = start(ALLOW + quota("rate: 0.2\nburst: 1\nqueue: {maxWait: 30s}"))
    time.sleep(5.2)
    assert call(server) is None  # the only token for 5 s
    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(call, server, "svc", 20.0, f"u{n}") for n in range(3)]
        time.sleep(0.5)
        started = time.monotonic()
        server.stop(grace=10.0)
        answers = [w.result(timeout=15) for w in waiting]
    assert time.monotonic() - started < 5.0  # not held until the grace ends
    for answer in answers:
        assert answer is not None
        assert rich(answer).info.reason == "QUOTA_EXCEEDED"
    assert len(stub.calls()) == 1
