"""/metrics: Prometheus text that a Prometheus parser reads, attrgate_* names, bounded labels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, Reply, describe_reply, error
from support.moto_cognito import free_port
from support.policies import svc_policy
from support.prometheus import Samples, metrics_text, samples_of, total
from support.rpc import as_caller, attrs_request
from support.waiting import wait_until

POLICY = svc_policy()
POOL = "us-east-1_Pool1"
MARK = "Qq7personal"
GUARD = """---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: sms}
spec:
  userPools: ["*"]
  countries: {allow: [US]}
  limits: [{per: phone_number, max: 5, window: 1h}]
  budget: {currency: USD, amount: 1, window: month, pricePerMessage: {US: 0.00883, default: 0.1}}
"""


def scrape(port: int) -> Samples:
    text = metrics_text(port)
    assert MARK not in text
    return samples_of(text)


def serve_sms(
    serve: Callable[..., RunningServer], stub: CognitoStub, tmp_path: Path
) -> tuple[RunningServer, int]:
    """attrgate with GUARD counting in SQLite, phone numbers auto-verified (so SMS-triggering),
    and metrics on a port of its own."""
    stub.describe = describe_reply(auto_verified=("phone_number",))
    port = free_port()
    server = serve(
        svc_policy("[{attribute: phone_number}]") + GUARD,
        stub.endpoint,
        metrics_listen=f"127.0.0.1:{port}",
        state=str(tmp_path / "state.sqlite"),
        decision_log=str(tmp_path / "d"),
    )
    return server, port


def test_requests_latency_and_cognito_errors_are_counted(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    port = free_port()
    server = serve(
        POLICY, stub.endpoint, metrics_listen=f"127.0.0.1:{port}", decision_log=str(tmp_path / "d")
    )
    with server.channel() as channel:
        stub_ = server.stub(channel)
        for _ in range(3):
            stub_.UpdateUserAttributes(
                attrs_request(POOL, [("given_name", MARK)], username=MARK),
                metadata=as_caller("svc"),
            )
        with pytest.raises(grpc.RpcError):
            stub_.UpdateUserAttributes(
                attrs_request(POOL, [("email", MARK)]), metadata=as_caller(f"who-{MARK}")
            )
        with pytest.raises(grpc.RpcError):
            stub_.UpdateUserAttributes(
                attrs_request(POOL, [("sub", MARK)]), metadata=as_caller("svc")
            )
        stub.program(error("AliasExistsException"), error(f"Weird{MARK}Exception"))
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub_.UpdateUserAttributes(
                    attrs_request(POOL, [("given_name", "x")]), metadata=as_caller("svc")
                )
    # An RPC is counted once it has ended, which may be a moment after its caller has the
    # answer (an abort sends the status first): all seven come, none is lost.
    durations = "attrgate_request_duration_seconds_count"
    assert wait_until(lambda: total(scrape(port)[durations]) == 7, 10)
    samples = scrape(port)
    assert all(
        name.startswith("attrgate_")
        for name in samples
        if not name.startswith(("target_info", "python_", "process_"))
    )
    (resource,) = samples["target_info"]
    assert resource[0]["service_name"] == "attrgate", "metrics and traces name one service"
    requests = samples["attrgate_requests_total"]
    assert total(requests, method="UpdateUserAttributes", caller="svc", code="OK") == 3
    # Invalid before any policy ran, yet from a caller the policies name: its own label.
    assert total(requests, caller="svc", code="INVALID_ARGUMENT") == 1
    # Alerts on these see 0 before the first event, not "no data".
    reloads = samples["attrgate_policy_reloads_total"]
    assert sorted((labels["set"], labels["result"]) for labels, _ in reloads) == [
        ("serving", "loaded"),
        ("serving", "rejected"),
        ("serving", "unavailable"),
        ("serving", "unchanged"),
    ]
    assert total(reloads, result="rejected") == 0
    assert total(samples["attrgate_decision_log_dropped_total"]) == 0
    # A caller no policy names gets no series of its own: labels stay bounded.
    assert total(requests, caller="unmatched", code="PERMISSION_DENIED") == 1
    assert total(requests, reason="COGNITO_ALIAS_EXISTS", code="ALREADY_EXISTS") == 1
    assert total(samples[durations]) == 7
    decisions = samples["attrgate_decision_duration_seconds_count"]
    assert total(decisions, method="UpdateUserAttributes", outcome="allowed") == 5
    assert total(decisions, method="UpdateUserAttributes", outcome="denied") == 1
    cognito = samples["attrgate_cognito_calls_total"]
    update = "AdminUpdateUserAttributes"
    assert total(cognito, operation=update, error_code="none") == 3
    assert total(cognito, operation=update, error_code="AliasExistsException") == 1
    # A code Cognito's API does not define is counted as `other`: labels stay bounded.
    assert total(cognito, operation=update, error_code="other") == 1
    # Pool metadata is fetched once and cached, and counted as a call of its own.
    assert total(cognito, operation="DescribeUserPool", error_code="none") == 1
    durations = samples["attrgate_cognito_call_duration_seconds_count"]
    assert total(durations, operation=update) == 5


def test_decision_latency_leaves_out_the_cognito_call(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    """A slow Cognito shows in end-to-end and Cognito latency, not in decision latency."""
    port = free_port()
    log = tmp_path / "decisions"
    server = serve(POLICY, stub.endpoint, metrics_listen=f"127.0.0.1:{port}", decision_log=str(log))
    stub.program(Reply(delay=0.4))
    with server.channel() as channel:
        server.stub(channel).UpdateUserAttributes(
            attrs_request(POOL, [("given_name", "x")]), metadata=as_caller("svc")
        )
    samples = scrape(port)

    def seconds(name: str, **labels: str) -> float:
        return total(samples[f"{name}_sum"], **labels)

    assert seconds("attrgate_request_duration_seconds") >= 0.4
    update = "AdminUpdateUserAttributes"
    assert seconds("attrgate_cognito_call_duration_seconds", operation=update) >= 0.4
    assert seconds("attrgate_decision_duration_seconds") < 0.4
    assert wait_until(lambda: log.exists() and bool(log.read_text().strip()))
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["decision_ms"] < 400 <= entry["latency_ms"]


def test_sms_reservations_policy_set_and_in_flight(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    server, port = serve_sms(serve, stub, tmp_path)
    with server.channel() as channel:
        for _ in range(2):
            server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, [("phone_number", "+14155550100")]), metadata=as_caller("svc")
            )
        # Cognito refuses (a 4xx): provably nothing sent, so the reservation is given back.
        stub.program(error("AliasExistsException"))
        with pytest.raises(grpc.RpcError):
            server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, [("phone_number", "+14155550100")]), metadata=as_caller("svc")
            )
        # A destination country the guard does not allow: refused, nothing reserved.
        with pytest.raises(grpc.RpcError):
            server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, [("phone_number", "+33612345678")]), metadata=as_caller("svc")
            )
    assert wait_until(
        lambda: total(scrape(port).get("attrgate_sms_releases_total", []), rule="budget") == 1
    )
    samples = scrape(port)
    reservations = samples["attrgate_sms_reservations_total"]
    assert total(reservations, guard="sms", rule="limits[0]") == 3
    assert total(reservations, guard="sms", rule="budget") == 3
    assert total(samples["attrgate_sms_budget_reserved_micros_total"], guard="sms") == 3 * 8830
    releases = samples["attrgate_sms_releases_total"]
    assert total(releases, guard="sms", rule="limits[0]") == 1
    assert total(samples["attrgate_sms_budget_released_micros_total"], guard="sms") == 8830
    decisions = samples["attrgate_sms_decisions_total"]
    assert total(decisions, outcome="allowed") == 3
    assert total(decisions, outcome="refused") == 1
    (policy_set,) = samples["attrgate_policy_set"]
    assert policy_set[0]["revision"].startswith("sha256:")
    assert policy_set[1] == 2  # the AttributePolicy and the SmsGuard
    # The guard's budget itself, what the alert rules project the reservations against.
    [(labels, budget)] = samples["attrgate_sms_budget_micros"]
    assert (labels["guard"], labels["window"]) == ("sms", "month")
    assert budget == 1_000_000  # amount: 1 (USD)
    assert total(samples["attrgate_in_flight_requests"]) == 0


def test_a_cancelled_sms_write_counts_its_reservation_and_its_release(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    """The caller gives up while Cognito is slow; Cognito then refuses (nothing sent), so the
    reservation is given back. The RPC ended without a decision, yet both are counted."""
    server, port = serve_sms(serve, stub, tmp_path)
    refused = error("AliasExistsException")
    refused.delay = 0.5
    stub.program(refused)
    with server.channel() as channel:
        call = server.stub(channel).UpdateUserAttributes.future(
            attrs_request(POOL, [("phone_number", "+14155550100")]), metadata=as_caller("svc")
        )
        assert wait_until(lambda: len(stub.calls()) == 1)
        call.cancel()

    def released() -> float:
        return total(scrape(port).get("attrgate_sms_releases_total", []), rule="budget")

    assert wait_until(released, seconds=5)
    samples = scrape(port)
    assert total(samples["attrgate_sms_reservations_total"], rule="budget") == 1
    assert total(samples["attrgate_sms_releases_total"], rule="limits[0]") == 1
    assert total(samples["attrgate_sms_budget_released_micros_total"]) == 8830
    assert total(samples["attrgate_requests_total"], code="CANCELLED") == 1


def test_callers_matched_by_a_glob_share_its_label(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    """Anyone can present any name: a glob's callers are counted under the glob, so a caller
    cannot mint series (and push the metric past its cardinality limit)."""
    port = free_port()
    # An audit policy for everyone must not swallow the more specific glob's label.
    policy = svc_policy().replace("callers: [svc]", 'callers: ["*", svc, "team-*"]')
    server = serve(policy, stub.endpoint, metrics_listen=f"127.0.0.1:{port}")
    with server.channel() as channel:
        for name in ("svc", "team-a", f"team-{MARK}", "other"):
            server.stub(channel).CheckUpdateUserAttributes(
                attrs_request(POOL, [("given_name", "x")]), metadata=as_caller(name)
            )
    requests = scrape(port)["attrgate_requests_total"]
    assert {labels["caller"] for labels, _ in requests} == {"svc", "team-*", "*"}
    assert total(requests, caller="team-*") == 2
