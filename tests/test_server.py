"""The whole path through a real grpc.aio server on loopback, against moto with SigV4 enforced."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.cognito_stub import CognitoStub, Reply
from support.moto_cognito import MotoCognito, free_port
from support.rpc import as_caller, attrs_request, code_and_reason, request, rich
from support.served import start_serve
from support.waiting import wait_until

POLICIES = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: [profile-api]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: given_name, maxLength: 10}
    - {attribute: "custom:tier", enum: [free, pro]}
  deny:
    - {attribute: "custom:role"}
  clientMetadata: {allowKeys: [source]}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: given-name-freeze}
spec:
  mode: audit
  callers: ["profile-*"]
  userPools: ["*"]
  deny: [{attribute: given_name}]
"""
CALLER = as_caller("profile-api")


@pytest.fixture
def server(moto: MotoCognito, serve):
    return serve(POLICIES, moto.endpoint)


def test_allowed_update_reaches_cognito(server, moto: MotoCognito, pool: str) -> None:
    with server.channel() as channel:
        response, call = server.stub(channel).UpdateUserAttributes.with_call(
            request(pool, given_name="Augusta", metadata={"source": "test"}), metadata=CALLER
        )
    decision = response.decision
    assert decision.allowed
    assert response.cognito_request_id
    assert list(decision.matched_policies) == ["profile", "given-name-freeze"]
    assert [(v.attribute, v.policy) for v in decision.would_deny] == [
        ("given_name", "given-name-freeze")
    ]
    assert decision.policy_revision.startswith("sha256:")
    assert dict(call.trailing_metadata())["x-attrgate-decision-id"] == decision.decision_id
    assert moto.attributes(pool, "ada")["given_name"] == "Augusta"


def test_denied_update_lists_every_violation_and_changes_nothing(
    server, moto: MotoCognito, pool: str
) -> None:
    before = moto.attributes(pool, "ada")
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).UpdateUserAttributes(
            attrs_request(
                pool,
                [
                    ("given_name", "Bartholomew"),
                    ("custom:role", "admin"),
                    ("email_verified", "true"),
                    ("custom:tier", "pro"),
                ],
            ),
            metadata=CALLER,
        )
    error = rich(caught.value)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.info.reason == "POLICY_DENIED"
    assert error.fields == ["user_attributes[0]", "user_attributes[1]", "user_attributes[2]"]
    assert [v.reason for v in error.field_violations] == [
        "MAX_LENGTH",
        "ATTRIBUTE_DENIED",
        "ATTRIBUTE_NOT_ALLOWED",
    ]
    assert "Bartholomew" not in error.message + str(error.field_violations)
    assert moto.attributes(pool, "ada") == before


def test_unknown_metadata_key_is_denied_not_trimmed(server, pool: str) -> None:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).UpdateUserAttributes(
            request(pool, given_name="Ada", metadata={"source": "a", "debug": "b"}),
            metadata=CALLER,
        )
    error = rich(caught.value)
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.fields == ["client_metadata.debug"]


def test_checks_run_in_order_identity_validation_policy(server, pool: str) -> None:
    malformed_and_denied = attrs_request(pool, [("custom:role", "x"), ("sub", "y")], username="")
    with server.channel() as channel:
        stub = server.stub(channel)
        with pytest.raises(grpc.RpcError) as no_caller:
            stub.UpdateUserAttributes(malformed_and_denied)
        assert rich(no_caller.value).code == grpc.StatusCode.UNAUTHENTICATED
        assert rich(no_caller.value).info.reason == "CALLER_UNAUTHENTICATED"

        with pytest.raises(grpc.RpcError) as malformed:
            stub.UpdateUserAttributes(malformed_and_denied, metadata=CALLER)
        error = rich(malformed.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.info.reason == "INVALID_REQUEST"
        assert error.fields == ["username", "user_attributes[1].name"]

        with pytest.raises(grpc.RpcError) as stranger:
            stub.UpdateUserAttributes(request(pool, given_name="Ada"), metadata=as_caller("x"))
        error = rich(stranger.value)
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert [v.reason for v in error.field_violations] == ["NO_APPLICABLE_POLICY"]


def test_check_decides_and_never_forwards(server, moto: MotoCognito, pool: str) -> None:
    before = moto.attributes(pool, "ada")
    with server.channel() as channel:
        stub = server.stub(channel)
        allowed = stub.CheckUpdateUserAttributes(request(pool, given_name="Zed"), metadata=CALLER)
        denied = stub.CheckUpdateUserAttributes(
            attrs_request(pool, [("custom:role", "admin")]), metadata=CALLER
        )
        with pytest.raises(grpc.RpcError) as malformed:
            stub.CheckUpdateUserAttributes(request(pool), metadata=CALLER)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.CheckUpdateUserAttributes(request(pool, given_name="Zed"))
    assert allowed.allowed
    assert not denied.allowed
    assert [(v.attribute, v.reason) for v in denied.violations] == [
        ("custom:role", "ATTRIBUTE_DENIED")
    ]
    assert allowed.decision_id != denied.decision_id
    assert rich(malformed.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert rich(anonymous.value).code == grpc.StatusCode.UNAUTHENTICATED
    assert moto.attributes(pool, "ada") == before


def test_oversized_request_is_refused(server, pool: str) -> None:
    big = request(pool, given_name="x" * (70 * 1024))
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).UpdateUserAttributes(big, metadata=CALLER)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection(moto: MotoCognito, serve) -> None:
    admin_port = free_port()
    server = serve(POLICIES, moto.endpoint, admin_listen=f"127.0.0.1:{admin_port}")
    for target in (server.target, f"127.0.0.1:{admin_port}"):
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "attrgate.v1.UserAttributes"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with server.channel() as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert "attrgate.v1.UserAttributes" in names
    # The admin listener serves health and status, never the API.
    with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
        stub = server.stub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CheckUpdateUserAttributes(request("us-east-1_X", given_name="a"), metadata=CALLER)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_graceful_stop_drains_in_flight_calls_and_reports_not_serving(
    serve, stub: CognitoStub, stub_credentials: None
) -> None:
    admin_port = free_port()
    server = serve(POLICIES, stub.endpoint, admin_listen=f"127.0.0.1:{admin_port}")
    stub.program(Reply(delay=1.0))
    results: list[object] = []

    def call() -> None:
        with server.channel() as channel:
            try:
                results.append(
                    server.stub(channel).UpdateUserAttributes(
                        request("us-east-1_Pool1", given_name="Ada"), metadata=CALLER, timeout=10
                    )
                )
            except grpc.RpcError as error:
                results.append(error)

    worker = threading.Thread(target=call)
    worker.start()
    assert wait_until(lambda: bool(stub.calls())), "the call never reached Cognito"
    stopping = asyncio.run_coroutine_threadsafe(server.app.stop(5.0), server.loop)
    with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopping.result(10)
    worker.join(10)
    (result,) = results
    assert isinstance(result, pb.UpdateUserAttributesResponse), result
    assert result.decision.allowed


def test_undecodable_request_is_invalid_argument_not_unknown(server) -> None:
    # Field 2 (username) holding invalid UTF-8: protobuf refuses to decode it.
    body = bytes([0x0A, 0x07]) + b"us-1_ab" + bytes([0x12, 0x02, 0xFF, 0xFE])
    with server.channel() as channel:
        for method in ("UpdateUserAttributes", "CheckUpdateUserAttributes"):
            raw = channel.unary_unary(
                f"/attrgate.v1.UserAttributes/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as caught:
                raw(body, metadata=CALLER, timeout=5)
            error = rich(caught.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.info.reason == "INVALID_REQUEST"
            assert error.fields == ["request"]


def test_the_largest_denial_still_names_every_field(server, pool: str) -> None:
    from attrgate.validate import ATTRIBUTE_NAME_MAX, ATTRIBUTES_MAX, METADATA_ENTRIES_MAX

    names = [f"custom:{i:02d}".ljust(ATTRIBUTE_NAME_MAX, "x") for i in range(ATTRIBUTES_MAX)]
    metadata = {f"k{i:02d}".ljust(64, "y"): "v" for i in range(METADATA_ENTRIES_MAX)}
    message = pb.UpdateUserAttributesRequest(
        user_pool_id=pool,
        username="ada",
        user_attributes=[pb.AttributeType(name=n, value="v") for n in names],
        client_metadata=metadata,
    )
    expected = [f"user_attributes[{i}]" for i in range(ATTRIBUTES_MAX)] + [
        f"client_metadata.{k}" for k in metadata
    ]
    with server.channel() as channel:
        # Past the 8 KiB trailer limit a client drops the status at random: ask several times.
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as caught:
                server.stub(channel).UpdateUserAttributes(message, metadata=CALLER, timeout=5)
            error = rich(caught.value)
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            assert sorted(error.fields) == sorted(expected)


@pytest.mark.parametrize("keys", [5, 20])
def test_a_denial_of_non_ascii_names_reaches_the_caller_whole(server, pool: str, keys: int) -> None:
    """Non-ASCII grows threefold in grpc-message and by a third in base64: the status must still
    fit the 8 KiB trailer limit (it arrived as RESOURCE_EXHAUSTED), naming every field it can and
    counting the rest."""
    metadata = {f"{i:02d}" + "\U0001f600" * 62: "v" for i in range(keys)}
    message = pb.UpdateUserAttributesRequest(
        user_pool_id=pool,
        username="ada",
        user_attributes=[pb.AttributeType(name="given_name", value="Ada")],
        client_metadata=metadata,
    )
    expected = {f"client_metadata.{k}" for k in metadata}
    with server.channel() as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                server.stub(channel).UpdateUserAttributes(message, metadata=CALLER, timeout=5)
            error = rich(caught.value)
            assert error.code == grpc.StatusCode.PERMISSION_DENIED
            named = set(error.fields)
            assert named <= expected
            omitted = int(error.info.metadata.get("fields_omitted", "0"))
            assert len(named) + omitted == keys
            assert omitted == 0 or keys == 20


def test_a_metadata_finding_is_never_mistaken_for_an_attribute(server, pool: str) -> None:
    # An attribute literally named like the metadata field path must keep its own violation.
    message = request(pool, metadata={"src": "x"})
    message.user_attributes.add(name="given_name", value="Ada")
    message.user_attributes.add(name="client_metadata.src", value="x")
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).UpdateUserAttributes(message, metadata=CALLER)
    error = rich(caught.value)
    assert sorted((v.field, v.reason) for v in error.field_violations) == [
        ("client_metadata.src", "METADATA_KEY_NOT_ALLOWED"),
        ("user_attributes[1]", "ATTRIBUTE_NOT_ALLOWED"),
    ]


# --- the drain, with real `attrgate serve` processes ------------------------------------------

DRAIN_POLICY = """
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: drain}
spec:
  callers: [svc]
  userPools: ["*"]
  allow: [{attribute: given_name}]
"""
SVC = as_caller("svc")
DRAIN_POOL = "us-east-1_DrainPool1"


class Served:
    """`attrgate serve` against the Cognito stub, its decision log and stderr in `folder`."""

    def __init__(self, folder: Path, stub: CognitoStub, *flags: str) -> None:
        (folder / "policies").mkdir()
        (folder / "policies" / "drain.yaml").write_text(DRAIN_POLICY)
        self.folder = folder
        self.port, self.admin_port = free_port(), free_port()
        self.decisions = folder / "decisions.jsonl"
        self.process = start_serve(
            folder / "policies",
            self.port,
            *("--cognito-endpoint", stub.endpoint, "--decision-log", str(self.decisions)),
            *("--admin-listen", f"127.0.0.1:{self.admin_port}", *flags),
            output=folder,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            self.close()
            raise AssertionError(f"attrgate serve did not start:\n{self.errors()}") from None
        self.stub = pb_grpc.UserAttributesStub(self.channel)

    def update(self, name: str, timeout: float | None = 30) -> grpc.Future:
        message = request(DRAIN_POOL, username=name, given_name="Ada")
        return self.stub.UpdateUserAttributes.future(message, metadata=SVC, timeout=timeout)

    def health(self, port: int) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        return int(answer.status)

    def entries(self) -> list[dict[str, object]]:
        text = self.decisions.read_text() if self.decisions.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def errors(self) -> str:
        return (self.folder / "err").read_text(errors="replace")

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def served(tmp_path: Path, stub: CognitoStub) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(*flags: str) -> Served:
        started.append(Served(tmp_path, stub, *flags))
        return started[-1]

    yield start
    for one in started:
        one.close()


def _code(future: grpc.Future) -> str:
    """OK, or the status code and ErrorInfo reason."""
    try:
        future.result()
    except grpc.RpcError as error:
        return " ".join(code_and_reason(error)).strip()
    return "OK"


@pytest.mark.parametrize("calls", [64, 256])
def test_sigterm_lets_every_call_in_flight_finish_normally(
    calls: int, served: Callable[..., Served], stub: CognitoStub
) -> None:
    """SIGTERM with a grace while `calls` calls are in flight against a slow Cognito, most of
    them still queued in gRPC's core (it hands calls over one at a time): gRPC's own shutdown
    killed those (CANCELLED at once, no decision-log entry). Every call must get its normal
    answer and its decision-log line, and the process exit 0 within the grace."""
    stub.default = Reply(delay=1.0)
    # A grace that holds on a loaded machine: what is tested is that nothing is cut off within
    # it (256 calls of 1 s each took more than 5 s with both cores busy elsewhere).
    server = served(
        *("--grace", "20", "--drain-delay", "0"),
    )
    futures = [server.update(f"user{i}") for i in range(calls)]
    assert wait_until(lambda: len(stub.calls()) >= 1, 60), server.errors()
    reached = len(stub.calls())
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # The race this is about: calls not yet handed to attrgate when the signal came.
    assert reached < calls, "every call had reached Cognito before SIGTERM: nothing was tested"

    codes = [_code(f) for f in futures]

    assert codes == ["OK"] * calls, Counter(codes)
    assert server.process.wait(20 + 10) == 0, server.errors()
    assert time.monotonic() - signalled < 20 + 10
    entries = server.entries()
    assert len(entries) == calls
    assert {e["status"] for e in entries} == {"OK"}
    assert len(stub.calls()) == calls


def test_drain_delay_reports_not_serving_and_keeps_serving_then_refuses_new_calls(
    served: Callable[..., Served], stub: CognitoStub
) -> None:
    """The timeline: NOT_SERVING on both listeners at once; calls still served normally for
    --drain-delay; then new calls refused UNAVAILABLE (ATTRGATE_SHUTTING_DOWN) while the call in
    flight finishes normally."""
    delay = 5.0  # long enough to observe on a busy machine
    # In flight across the whole drain, and long after the gate closes: until it ends, the
    # listener is up and a refusal comes from attrgate's gate, not from a closed port.
    stub.program(Reply(delay=delay + 8))
    server = served("--grace", "15", "--drain-delay", str(delay), "--cognito-read-timeout", "20")
    long_call = server.update("long")
    assert wait_until(lambda: len(stub.calls()) == 1, 30)
    assert server.health(server.port) == health_pb2.HealthCheckResponse.SERVING

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for port in (server.port, server.admin_port):
        assert wait_until(
            lambda port=port: server.health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        ), f"health on {port} did not turn NOT_SERVING"
    served_during_delay = _code(server.update("during"))
    assert time.monotonic() - signalled < delay, "too slow to observe the drain delay"
    assert served_during_delay == "OK"

    refused: grpc.RpcError | None = None
    attempts = 0
    while refused is None and time.monotonic() - signalled < delay + 5:
        attempts += 1
        try:
            server.update(f"late{attempts}", timeout=5).result()
        except grpc.RpcError as error:
            refused = error
    assert refused is not None, "new calls were still taken after the drain delay"
    assert time.monotonic() - signalled >= delay
    detail = rich(refused)
    assert (detail.code, detail.info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "ATTRGATE_SHUTTING_DOWN",
    )
    assert _code(long_call) == "OK"
    assert server.process.wait(30) == 0, server.errors()
    by_status = Counter(str(e["status"]) for e in server.entries())
    assert by_status["OK"] >= 2
    assert by_status["UNAVAILABLE"] >= 1
    # The refused call was decided nowhere and sent nowhere.
    assert f"late{attempts}" not in {c.body.get("Username") for c in stub.calls()}


def test_a_call_still_running_at_grace_end_is_cancelled_logged_and_never_retried(
    served: Callable[..., Served], stub: CognitoStub
) -> None:
    """Cognito throttles slowly; the grace ends during the attempt: the call is cancelled, its
    decision logged, its Cognito outcome logged when it arrives, and no retry is sent (35 writes
    used to reach Cognito after their callers were gone)."""
    stub.default = Reply(
        status=400, body={"__type": "TooManyRequestsException", "message": "slow"}, delay=2.5
    )
    server = served("--grace", "1", "--drain-delay", "0", "--cognito-max-attempts", "3")
    running = server.update("running", timeout=None)
    assert wait_until(lambda: len(stub.calls()) == 1, 30)
    server.process.send_signal(signal.SIGTERM)

    # Answered by attrgate, not cut by gRPC (UNAVAILABLE, which clients retry though the
    # update may have reached Cognito): ABORTED, with the reason.
    assert _code(running) == "ABORTED ATTRGATE_GRACE_ENDED"
    assert server.process.wait(20) == 0, server.errors()
    assert len(stub.calls()) == 1, "a retry reached Cognito after the caller was cancelled"
    late = re.search(
        r"late cognito outcome decision_id=(\w+) ok=False error=THROTTLED "
        r"code=TooManyRequestsException",
        server.errors(),
    )
    assert late, server.errors()
    entry, followed = server.entries()
    assert (entry["status"], entry["reason"]) == ("ABORTED", "ATTRGATE_GRACE_ENDED")
    assert entry["decision_id"] == late[1]
    assert (followed["outcome"], followed["decision_id"]) == ("late", late[1])
    assert followed["cognito"]["error"] == "THROTTLED"
