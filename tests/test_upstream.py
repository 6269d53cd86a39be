"""The Cognito edge, end to end: a real attrgate grpc.aio server on loopback in front of either the
Cognito JSON stub (errors moto cannot produce, slow answers, 5xx, XML 403s) or moto's Cognito with
SigV4 checking on.

What a caller sees for each upstream outcome (gRPC status + ErrorInfo reason), that Cognito's own
messages never leak, how retries and deadlines behave, and that what is forwarded is exactly what
was asked (and nothing at all when the request is denied or invalid).
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import grpc
import pytest

from attrgate.upstream.classify import _BY_CODE
from attrgate.upstream.retries import (
    AttemptWithdrawn,
    CallScope,
    RetryGate,
    botocore_too_old,
    enter_scope,
)
from attrgate.v1 import attrgate_pb2 as pb
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, Reply, describe_reply, error
from support.moto_cognito import MotoCognito, free_port
from support.prometheus import metrics_text
from support.rpc import RichError, as_caller, attrs_request, request, rich
from support.waiting import json_lines, wait_until

POOL = "us-east-1_StubPool1"
CALLER = "profile-api"
# Cognito's message may echo values: it must never reach the caller or the logs.
MARKER = "Zq7-cognito-message-marker-4f1e"
# An attribute value the caller sends: it must never be echoed in an error either.
VALUE_MARKER = "Vx9valuemarker"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
LATE = re.compile(
    r"late cognito outcome decision_id=(?P<id>[0-9a-f]{32}) ok=(?P<ok>\w+) "
    r"error=(?P<error>\w*) code=(?P<code>\S*) cognito_request_id=(?P<rid>\S*)"
)

POLICY = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata:
  name: upstream-tests
spec:
  callers: ["profile-*"]
  userPools: ["us-east-1_*"]
  allow:
    - attribute: given_name
    - attribute: family_name
    - attribute: email
      format: email
    - attribute: "custom:tier"
      enum: [free, pro, enterprise]
  deny:
    - attribute: "custom:role"
  clientMetadata:
    allowKeys: [source, ticket]
"""

# The caller `svc` may write phone numbers; every one of them counts in an SmsGuard limit.
SMS_POLICY = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: sms-writers}
spec:
  callers: [svc]
  userPools: ["*"]
  allow: [{attribute: phone_number}, {attribute: given_name}]
---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: sms}
spec:
  mode: enforce
  userPools: ["*"]
  limits:
    - {per: phone_number, max: 1, window: 24h}
"""
# Also a limit per user: attrgate looks the user up (AdminGetUser) before counting.
PER_USER_POLICY = SMS_POLICY + "    - {per: user, max: 100, window: 24h}\n"

S = grpc.StatusCode
# The documented answer for every Cognito error code AdminUpdateUserAttributes may return.
EXPECTED: dict[str, tuple[grpc.StatusCode, str]] = {
    "UserNotFoundException": (S.NOT_FOUND, "COGNITO_USER_NOT_FOUND"),
    "ResourceNotFoundException": (S.NOT_FOUND, "COGNITO_RESOURCE_NOT_FOUND"),
    "AliasExistsException": (S.ALREADY_EXISTS, "COGNITO_ALIAS_EXISTS"),
    "InvalidParameterException": (S.INVALID_ARGUMENT, "COGNITO_INVALID_PARAMETER"),
    "TooManyRequestsException": (S.RESOURCE_EXHAUSTED, "COGNITO_THROTTLED"),
    "InternalErrorException": (S.UNAVAILABLE, "COGNITO_UNAVAILABLE"),
    "UserLambdaValidationException": (S.FAILED_PRECONDITION, "COGNITO_LAMBDA_REJECTED"),
    "UnexpectedLambdaException": (S.FAILED_PRECONDITION, "COGNITO_LAMBDA_REJECTED"),
    "InvalidLambdaResponseException": (S.FAILED_PRECONDITION, "COGNITO_LAMBDA_REJECTED"),
    "OperationNotEnabledException": (S.FAILED_PRECONDITION, "COGNITO_OPERATION_NOT_ENABLED"),
    "NotAuthorizedException": (S.INTERNAL, "UPSTREAM_CREDENTIALS_REJECTED"),
    "InvalidSmsRoleAccessPolicyException": (S.INTERNAL, "COGNITO_POOL_MISCONFIGURED"),
    "InvalidSmsRoleTrustRelationshipException": (S.INTERNAL, "COGNITO_POOL_MISCONFIGURED"),
    "InvalidEmailRoleAccessPolicyException": (S.INTERNAL, "COGNITO_POOL_MISCONFIGURED"),
}
# The HTTP status real Cognito answers each code with (its errors are 400s except these).
HTTP_STATUS = {"InternalErrorException": 500}
# Retried by botocore's standard mode (throttling code, transient 5xx); every other error is
# Cognito's final word and must be sent exactly once (a retry could re-run Lambda triggers).
RETRIED = {"TooManyRequestsException", "InternalErrorException"}
# The gRPC codes attrgate documents for upstream failures (README / api.errors._UPSTREAM).
DOCUMENTED = {
    S.NOT_FOUND,
    S.ALREADY_EXISTS,
    S.INVALID_ARGUMENT,
    S.RESOURCE_EXHAUSTED,
    S.UNAVAILABLE,
    S.FAILED_PRECONDITION,
    S.INTERNAL,
    S.DEADLINE_EXCEEDED,
}


def botocore_error_codes() -> list[str]:
    model = botocore.session.get_session().get_service_model("cognito-idp")
    return sorted(s.name for s in model.operation_model("AdminUpdateUserAttributes").error_shapes)


ERROR_CODES = botocore_error_codes()


# --- helpers ---------------------------------------------------------------------------------


def call(
    server: RunningServer,
    message: pb.UpdateUserAttributesRequest,
    caller: str | None = CALLER,
    timeout: float = 10,
) -> tuple[pb.UpdateUserAttributesResponse, grpc.Call]:
    with server.channel() as channel:
        return server.stub(channel).UpdateUserAttributes.with_call(
            message, metadata=as_caller(caller) if caller else None, timeout=timeout
        )


def call_error(
    server: RunningServer,
    message: pb.UpdateUserAttributesRequest,
    caller: str | None = CALLER,
    timeout: float = 10,
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(server, message, caller, timeout)
    return raised.value


def exposed_texts(err: grpc.RpcError, detail: RichError) -> list[str]:
    """Everything a caller can read of an error: message, trailers, every detail field."""
    texts = [err.details() or "", detail.message, detail.info.reason, detail.info.domain]
    texts += [*detail.info.metadata.keys(), *detail.info.metadata.values()]
    for violation in detail.field_violations:
        texts += [violation.field, violation.description, violation.reason]
    for key, value in err.trailing_metadata() or ():
        texts.append(key)
        # grpc-status-details-bin: the serialized google.rpc.Status, strings in UTF-8.
        texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return texts


def attrgate_log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        if record.name == "attrgate" or record.name.startswith("attrgate."):
            texts.append(record.getMessage())
            if record.exc_info:
                texts.append(formatter.formatException(record.exc_info))
    return texts


def assert_nothing_leaks(err: grpc.RpcError, detail: RichError, caplog: Any) -> None:
    for text in exposed_texts(err, detail):
        assert MARKER not in text, f"Cognito's message leaked to the caller: {text!r}"
        assert VALUE_MARKER not in text, f"an attribute value leaked to the caller: {text!r}"
    for text in attrgate_log_texts(caplog):
        assert MARKER not in text, f"Cognito's message leaked to the logs: {text!r}"
        assert VALUE_MARKER not in text, f"an attribute value leaked to the logs: {text!r}"


def allowed_request() -> pb.UpdateUserAttributesRequest:
    return request(POOL, given_name=f"Ada{VALUE_MARKER}")


def wait_for_late_record(caplog: pytest.LogCaptureFixture, timeout: float = 5.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if record.name == "attrgate.pipeline" and "late cognito outcome" in record.getMessage():
                assert record.levelno == logging.WARNING
                match = LATE.search(record.getMessage())
                assert match, f"late outcome record in an unexpected shape: {record.getMessage()}"
                return match
        time.sleep(0.02)
    pytest.fail(f"no 'late cognito outcome' record from attrgate.pipeline within {timeout}s")


@pytest.fixture
def stub_server(
    stub: CognitoStub, stub_credentials: None, serve: Callable[..., RunningServer]
) -> Callable[..., RunningServer]:
    def start(policy: str = POLICY, **overrides: Any) -> RunningServer:
        return serve(policy, stub.endpoint, **overrides)

    return start


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="attrgate")
    return caplog


# --- 1 + 2: every modelled error, its status and reason, and no leak -------------------------


def test_botocore_lists_the_errors_this_file_covers() -> None:
    # Guards the parametrization below against an empty or renamed model.
    assert len(ERROR_CODES) >= 10
    assert {"UserNotFoundException", "TooManyRequestsException"} <= set(ERROR_CODES)


@pytest.mark.parametrize("code", ERROR_CODES)
def test_every_modelled_error_is_mapped_explicitly(code: str) -> None:
    # Fails as soon as botocore's model gains an error attrgate does not classify by code.
    assert code in _BY_CODE, f"botocore lists {code} for AdminUpdateUserAttributes: map it"
    assert code in EXPECTED, f"botocore lists {code}: document its gRPC status and reason here"


@pytest.mark.parametrize("code", ERROR_CODES)
def test_modelled_error_maps_to_documented_status(
    code: str, stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    stub.default = error(
        code, f"{MARKER}: value {VALUE_MARKER} rejected", HTTP_STATUS.get(code, 400)
    )
    server = stub_server()

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() != S.UNKNOWN
    assert code in EXPECTED, f"no documented status for {code}"
    assert (err.code(), detail.info.reason) == EXPECTED[code]
    assert detail.info.metadata["cognito_error_code"] == code
    assert UUID.match(detail.info.metadata["cognito_request_id"])
    assert detail.info.metadata["policy_revision"]
    trailers = dict(err.trailing_metadata() or ())
    assert trailers["x-attrgate-decision-id"] == detail.info.metadata["decision_id"]
    if err.code() == S.INVALID_ARGUMENT:
        assert detail.has_bad_request
        assert [v.reason for v in detail.field_violations] == [code]
    else:
        assert not detail.has_bad_request
    assert len(stub.calls()) == (server.settings.cognito_max_attempts if code in RETRIED else 1)
    assert_nothing_leaks(err, detail, logs)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, (S.INTERNAL, "COGNITO_UNEXPECTED_ERROR")),
        (503, (S.UNAVAILABLE, "COGNITO_UNAVAILABLE")),
    ],
)
def test_unknown_error_code_gets_a_documented_status(
    status: int,
    expected: tuple[grpc.StatusCode, str],
    stub: CognitoStub,
    stub_server: Callable[..., RunningServer],
    logs: Any,
) -> None:
    stub.default = error("BrandNewCognitoException", MARKER, status)
    server = stub_server()

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() != S.UNKNOWN
    assert err.code() in DOCUMENTED
    assert (err.code(), detail.info.reason) == expected
    # A code the operation does not document is passed on as `other` (see the forged-line test).
    assert detail.info.metadata["cognito_error_code"] == "other"
    assert_nothing_leaks(err, detail, logs)


# --- 3: retries, 5xx, XML 403, unreachable ---------------------------------------------------


@pytest.mark.floors
def test_throttling_is_retried_max_attempts_then_resource_exhausted(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    stub.default = error("TooManyRequestsException", MARKER)
    server = stub_server()
    assert server.settings.cognito_max_attempts == 2

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() == S.RESOURCE_EXHAUSTED
    assert detail.info.reason == "COGNITO_THROTTLED"
    assert len(stub.calls()) == 2
    assert_nothing_leaks(err, detail, logs)


def test_max_attempts_one_means_no_retry(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    # --cognito-max-attempts counts attempts, the first included: 1 is "never retry".
    stub.default = error("TooManyRequestsException", MARKER)
    server = stub_server(cognito_max_attempts=1)

    err = call_error(server, allowed_request())

    assert err.code() == S.RESOURCE_EXHAUSTED
    assert len(stub.calls()) == 1


def test_throttling_once_then_success_is_ok(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    stub.program(error("TooManyRequestsException", MARKER))
    server = stub_server()

    response, _ = call(server, allowed_request())

    assert response.decision.allowed
    assert UUID.match(response.cognito_request_id)
    assert len(stub.calls()) == 2


def test_internal_error_500_is_unavailable(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    stub.default = error("InternalErrorException", MARKER, 500)
    server = stub_server()

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() == S.UNAVAILABLE
    assert detail.info.reason == "COGNITO_UNAVAILABLE"
    assert len(stub.calls()) == 2
    assert_nothing_leaks(err, detail, logs)


def test_html_502_from_a_proxy_is_unavailable(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    body = f"<html><body>Bad gateway {MARKER}</body></html>".encode()
    stub.default = Reply(status=502, raw=body, content_type="text/html")
    server = stub_server()

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() == S.UNAVAILABLE
    assert detail.info.reason == "COGNITO_UNAVAILABLE"
    assert_nothing_leaks(err, detail, logs)


def test_xml_403_is_credentials_rejected_never_permission_denied(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    # What an IAM layer (and moto with auth on) answers: an XML body the JSON parser cannot read.
    body = (
        "<?xml version='1.0' encoding='UTF-8'?><ErrorResponse><Error><Type>Sender</Type>"
        f"<Code>SignatureDoesNotMatch</Code><Message>{MARKER}</Message></Error>"
        "<RequestId>r-1</RequestId></ErrorResponse>"
    ).encode()
    stub.default = Reply(status=403, raw=body, content_type="text/xml")
    server = stub_server()

    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() == S.INTERNAL
    assert err.code() != S.PERMISSION_DENIED
    assert detail.info.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert len(stub.calls()) == 1
    assert_nothing_leaks(err, detail, logs)


def test_unreachable_endpoint_is_unavailable(
    stub_credentials: None, serve: Callable[..., RunningServer], logs: Any
) -> None:
    server = serve(POLICY, f"http://127.0.0.1:{free_port()}")

    started = time.monotonic()
    err = call_error(server, allowed_request())
    detail = rich(err)

    assert err.code() == S.UNAVAILABLE
    # The first call an allowed request makes is DescribeUserPool: it fails closed.
    assert detail.info.reason == "POOL_METADATA_UNAVAILABLE"
    assert time.monotonic() - started < 5
    assert_nothing_leaks(err, detail, logs)


# --- 4: deadlines ----------------------------------------------------------------------------


@pytest.mark.floors
def test_deadline_exceeded_and_late_outcome_logged(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any, tmp_path: Path
) -> None:
    # Cognito answers only once the test has seen the caller's end logged (a fixed delay raced
    # a loaded machine: a 0.3 s deadline could pass before the write was even sent).
    answer = threading.Event()
    stub.program(Reply(hold=answer))
    decisions = tmp_path / "decisions.jsonl"
    server = stub_server(decision_log=str(decisions), cognito_read_timeout=30.0)
    try:
        err = call_error(server, allowed_request(), timeout=2)

        assert err.code() == S.DEADLINE_EXCEEDED
        assert len(stub.calls()) == 1  # the write reached Cognito before the deadline
        # The server's side, not the client's timer: the handler ended at the caller's deadline
        # (its own DEADLINE_EXCEEDED, or gRPC's cancellation when the client's timer won the
        # race) and was logged while Cognito, still busy, had not answered.
        (entry,) = json_lines(decisions, 1)
        assert not [r for r in logs.records if "late cognito outcome" in r.getMessage()]
        assert entry["status"] in ("DEADLINE_EXCEEDED", "CANCELLED"), entry
    finally:
        answer.set()
    late = wait_for_late_record(logs, timeout=10)
    # The outcome Cognito gave after the caller left: the update happened.
    assert late["ok"] == "True"
    assert UUID.match(late["rid"])
    assert late["id"] == entry["decision_id"]
    # ...and the decision log has it too, under the same decision id.
    (_, followed) = json_lines(decisions, 2)
    assert (followed["decision_id"], followed["outcome"]) == (entry["decision_id"], "late")
    assert followed["cognito"]["ok"] is True
    assert followed["cognito"]["request_id"] == late["rid"]
    assert len(stub.calls()) == 1
    # When the server's own abort wins the race with the client's timer, the caller holds the
    # decision id too; it must be the one logged.
    trailers = dict(err.trailing_metadata() or ())
    if "x-attrgate-decision-id" in trailers:
        assert trailers["x-attrgate-decision-id"] == late["id"]


@pytest.mark.floors
def test_no_retry_after_the_deadline(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    stub.default = Reply(
        status=400, body={"__type": "TooManyRequestsException", "message": MARKER}, delay=1.5
    )
    server = stub_server(cognito_max_attempts=3)

    err = call_error(server, allowed_request(), timeout=0.6)

    assert err.code() == S.DEADLINE_EXCEEDED
    late = wait_for_late_record(logs)
    assert (late["ok"], late["error"], late["code"]) == (
        "False",
        "THROTTLED",
        "TooManyRequestsException",
    )
    assert len(stub.calls()) == 1, "retried for a caller whose deadline had passed"
    assert all(MARKER not in text for text in attrgate_log_texts(logs))


# --- 5: forwarding fidelity ------------------------------------------------------------------


def test_allowed_request_is_forwarded_exactly(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    server = stub_server()
    attributes = [
        ("family_name", "Lovelace"),
        ("given_name", "Ada"),
        ("custom:tier", "pro"),
        ("email", "ada@example.com"),
    ]
    metadata = {"source": "web", "ticket": "T-42"}
    message = request(POOL, "ada.l", metadata, **dict(attributes))

    response, grpc_call = call(server, message)

    assert response.decision.allowed
    assert UUID.match(response.cognito_request_id)
    trailers = dict(grpc_call.trailing_metadata() or ())
    assert trailers["x-attrgate-decision-id"] == response.decision.decision_id
    [received] = stub.calls()
    assert received.target == "AWSCognitoIdentityProviderService.AdminUpdateUserAttributes"
    assert received.body == {
        "UserPoolId": POOL,
        "Username": "ada.l",
        "UserAttributes": [{"Name": n, "Value": v} for n, v in attributes],
        "ClientMetadata": metadata,
    }
    assert received.authorization.startswith("AWS4-HMAC-SHA256 ")
    assert "Credential=stub-key/" in received.authorization
    assert "/us-east-1/cognito-idp/aws4_request" in received.authorization
    assert "Signature=" in received.authorization


def test_request_without_metadata_sends_no_client_metadata(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    server = stub_server()

    call(server, attrs_request(POOL, [("given_name", "Ada")]))

    [received] = stub.calls()
    assert received.body == {
        "UserPoolId": POOL,
        "Username": "ada",
        "UserAttributes": [{"Name": "given_name", "Value": "Ada"}],
    }


def test_denied_invalid_and_unauthenticated_requests_never_reach_cognito(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    server = stub_server()

    denied_attribute = call_error(server, attrs_request(POOL, [("custom:role", "admin")]))
    denied_metadata = call_error(server, request(POOL, metadata={"evil": "x"}, given_name="Ada"))
    denied_caller = call_error(server, allowed_request(), caller="billing-api")
    denied_pool = call_error(server, request("eu-west-1_Other1", given_name="Ada"))
    invalid = call_error(server, attrs_request(POOL, [("sub", "x")], username=""))
    unauthenticated = call_error(server, allowed_request(), caller=None)

    for err in (denied_attribute, denied_metadata, denied_caller, denied_pool):
        assert err.code() == S.PERMISSION_DENIED
        assert rich(err).info.reason == "POLICY_DENIED"
    assert invalid.code() == S.INVALID_ARGUMENT
    assert rich(invalid).info.reason == "INVALID_REQUEST"
    assert unauthenticated.code() == S.UNAUTHENTICATED
    assert stub.received == [], "a refused request reached Cognito"

    # The same server does reach the stub for an allowed request: the silence above is a refusal.
    call(server, allowed_request())
    assert [r.target.rsplit(".", 1)[1] for r in stub.received] == [
        "DescribeUserPool",
        "AdminUpdateUserAttributes",
    ]


# --- 6: moto with SigV4 checking on ----------------------------------------------------------


def test_moto_allowed_update_changes_the_user(
    moto: MotoCognito, pool: str, serve: Callable[..., RunningServer]
) -> None:
    server = serve(POLICY, moto.endpoint)

    response, _ = call(
        server, request(pool, metadata={"source": "web"}, given_name="Grace", family_name="Hopper")
    )

    assert response.decision.allowed
    assert response.cognito_request_id
    attributes = moto.attributes(pool, "ada")
    assert attributes["given_name"] == "Grace"
    assert attributes["family_name"] == "Hopper"
    assert attributes["email"] == "ada@example.com"


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_moto_wrong_credentials_are_internal_not_permission_denied(
    variable: str,
    moto: MotoCognito,
    pool: str,
    serve: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    logs: Any,
) -> None:
    monkeypatch.setenv(variable, "AKIAWRONGWRONGWRONG0" if "KEY_ID" in variable else "wrong")
    server = serve(POLICY, moto.endpoint)

    err = call_error(server, request(pool, given_name="Mallory"))
    detail = rich(err)

    assert err.code() == S.INTERNAL
    assert err.code() != S.PERMISSION_DENIED
    assert detail.info.reason == "UPSTREAM_CREDENTIALS_REJECTED"
    assert moto.attributes(pool, "ada")["given_name"] == "Ada"
    assert_nothing_leaks(err, detail, logs)


def test_moto_user_not_found(
    moto: MotoCognito, pool: str, serve: Callable[..., RunningServer]
) -> None:
    server = serve(POLICY, moto.endpoint)

    err = call_error(server, request(pool, "nobody", given_name="Ada"))
    detail = rich(err)

    assert err.code() == S.NOT_FOUND
    assert detail.info.reason == "COGNITO_USER_NOT_FOUND"
    assert detail.info.metadata["cognito_error_code"] == "UserNotFoundException"


def test_moto_pool_not_found(
    moto: MotoCognito, pool: str, serve: Callable[..., RunningServer]
) -> None:
    server = serve(POLICY, moto.endpoint)
    missing = "us-east-1_" + "0" * 9

    err = call_error(server, request(missing, given_name="Ada"))
    detail = rich(err)

    assert err.code() == S.NOT_FOUND
    assert detail.info.reason == "COGNITO_RESOURCE_NOT_FOUND"
    assert detail.info.metadata["cognito_error_code"] == "ResourceNotFoundException"


def test_moto_alias_exists(moto: MotoCognito, serve: Callable[..., RunningServer]) -> None:
    # moto raises AliasExistsException when an email already used by another user is written in
    # a pool that signs users in by email.
    pool_id = moto.create_pool("by-email", UsernameAttributes=["email"])
    moto.create_user(pool_id, "ada@example.com", given_name="Ada")
    moto.create_user(pool_id, "grace@example.com", given_name="Grace")
    server = serve(POLICY, moto.endpoint)

    err = call_error(server, request(pool_id, "grace@example.com", email="ada@example.com"))
    detail = rich(err)

    assert err.code() == S.ALREADY_EXISTS
    assert detail.info.reason == "COGNITO_ALIAS_EXISTS"
    assert moto.attributes(pool_id, "grace@example.com")["email"] == "grace@example.com"


def _call_in_thread(
    server: RunningServer,
    timeout: float,
    results: list[Any],
    message: pb.UpdateUserAttributesRequest | None = None,
    caller: str = CALLER,
) -> Any:
    def call() -> None:
        with server.channel() as channel:
            try:
                results.append(
                    server.stub(channel).UpdateUserAttributes(
                        message or request(POOL, given_name="Ada"),
                        metadata=as_caller(caller),
                        timeout=timeout,
                    )
                )
            except grpc.RpcError as exc:
                results.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    return worker


def test_shutdown_still_records_the_outcome_of_a_running_call(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="attrgate.pipeline")
    server = serve(POLICY, stub.endpoint, grace=0.2)
    stub.program(Reply(delay=1.0))
    results: list[Any] = []
    worker = _call_in_thread(server, 10, results)
    assert wait_until(lambda: len(stub.calls()) == 1)
    server.stop(grace=0.2)  # closes the event loop while Cognito is still answering
    worker.join(10)
    assert isinstance(results[0], grpc.RpcError)
    assert wait_until(lambda: LATE.search(caplog.text) is not None)
    found = LATE.search(caplog.text)
    assert found is not None
    assert found["ok"] == "True"


def test_botocore_debug_logging_never_carries_values(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(POLICY, stub.endpoint)
    with server.channel() as channel:
        server.stub(channel).UpdateUserAttributes(
            request(POOL, username="user-" + VALUE_MARKER, given_name=VALUE_MARKER),
            metadata=as_caller(CALLER),
        )
    assert stub.calls(), "the request must have been forwarded"
    assert any(r.name.startswith("botocore") for r in caplog.records), "botocore logged nothing"
    leaked = [r.name for r in caplog.records if VALUE_MARKER in r.getMessage()]
    assert leaked == []


@pytest.mark.floors
def test_the_retry_gate_stops_what_must_not_be_retried() -> None:
    """The needs-retry hook botocore consults: for an SMS-triggering write, a failed connection
    may be retried (nothing was sent); a 5xx or a connection lost after sending may not. No
    retry at all for a caller that has gone, past its deadline, or once the server stops."""

    class Answer:
        def __init__(self, status: int) -> None:
            self.status_code = status

    never_sent = botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")
    lost = botocore.exceptions.ConnectionClosedError(endpoint_url="http://x")
    timed_out = botocore.exceptions.ReadTimeoutError(endpoint_url="http://x")

    def asks(gate: RetryGate, scope: CallScope, **kwargs: Any) -> bool | None:
        def inside() -> bool | None:
            enter_scope(scope)
            return gate.needs_retry(**kwargs)

        return contextvars.copy_context().run(inside)

    gate, sms = RetryGate(), CallScope(sms_write=True)
    assert asks(gate, sms, caught_exception=never_sent) is None
    assert asks(gate, sms, caught_exception=lost) is False
    assert asks(gate, sms, caught_exception=timed_out) is False
    assert asks(gate, sms, response=(Answer(503), {})) is False
    assert asks(gate, sms, response=(Answer(400), {})) is None
    # Other writes leave it all to botocore's standard retry mode...
    plain = CallScope()
    assert asks(gate, plain, caught_exception=lost) is None
    assert asks(gate, plain, response=(Answer(503), {})) is None
    # ...until their caller is gone, their deadline passed, or the server stops.
    assert asks(gate, CallScope(gone=lambda: True), response=(Answer(503), {})) is False
    assert asks(gate, CallScope(deadline=time.monotonic() - 1), caught_exception=lost) is False
    # A lookup is asked again only when its attempt never reached Cognito.
    lookup = CallScope(lookup=True)
    assert asks(gate, lookup, caught_exception=never_sent) is None
    assert (
        asks(gate, lookup, response=(Answer(400), {"Error": {"Code": "TooManyRequests"}})) is False
    )
    assert asks(gate, lookup, response=(Answer(503), {})) is False
    gate.stop()
    assert asks(gate, plain, response=(Answer(503), {})) is False


def test_a_botocore_below_the_floor_is_refused_at_start() -> None:
    """pyproject.toml's floor can be bypassed (an image pinning its own botocore, PYTHONPATH):
    on botocore 1.43.2 an SMS write after a 5xx went out 144 times in 5 s."""
    assert botocore_too_old(botocore.__version__) is None
    assert botocore_too_old("1.43.3") is None
    assert botocore_too_old("1.44.0rc1") is None
    refusal = botocore_too_old("1.43.2")
    assert refusal is not None
    assert "botocore 1.43.2 is older than 1.43.3" in refusal
    assert botocore_too_old("1.9.400") is not None


def test_an_attempt_is_withdrawn_right_before_it_would_go_out() -> None:
    """botocore decides to retry, then sleeps its backoff: whatever happened meanwhile (the
    deadline, the caller leaving, the server stopping) withdraws the attempt."""

    def sends(gate: RetryGate, scope: CallScope) -> None:
        def inside() -> None:
            enter_scope(scope)
            gate.before_send()

        contextvars.copy_context().run(inside)

    gate = RetryGate()
    sends(gate, CallScope(deadline=time.monotonic() + 60))  # the first attempt goes out
    late = CallScope(deadline=time.monotonic() - 0.001)
    with pytest.raises(AttemptWithdrawn) as withdrawn:
        sends(gate, late)
    assert withdrawn.value.deadline
    assert withdrawn.value.no_effect  # nothing of it reached Cognito
    with pytest.raises(AttemptWithdrawn):
        sends(gate, CallScope(gone=lambda: True))
    retrying = CallScope()
    sends(gate, retrying)
    gate.stop()
    with pytest.raises(AttemptWithdrawn):
        sends(gate, retrying)  # its second attempt, the server now stopping
    sends(gate, CallScope())  # a first attempt of a call admitted before still goes out


@pytest.mark.floors
def test_no_retry_goes_out_after_the_backoff_outlasted_the_callers_deadline(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    """Cognito throttles at once; botocore backs off (up to a second, then two) before
    retrying. Those retries used to go out after the caller had been answered
    DEADLINE_EXCEEDED (9 of 10 calls)."""
    stub.default = error("TooManyRequestsException", MARKER)
    server = stub_server(cognito_max_attempts=4, executor_threads=16)
    deadline = 0.5
    with server.channel() as channel:
        started = time.monotonic()
        calls = [
            server.stub(channel).UpdateUserAttributes.future(
                allowed_request(), metadata=as_caller(CALLER), timeout=deadline
            )
            for _ in range(10)
        ]
        for pending in calls:
            with pytest.raises(grpc.RpcError):
                pending.result()
    time.sleep(3 * deadline)  # past any backoff botocore could have chosen for a retry
    updates = stub.calls()
    assert len(updates) >= 10  # every call's first attempt went out
    # One attempt in flight at the deadline may land a little after it; none starts later.
    late = [round(c.at - started, 2) for c in updates if c.at > started + deadline + 0.25]
    assert not late, f"attempts sent after the callers' deadline: {late}"


def test_a_throttled_pool_lookup_is_not_asked_again(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    """Each lookup the budget pays for is one call: retried, a throttled DescribeUserPool
    cost the account's quota three times over."""
    stub.describe = error("TooManyRequestsException", MARKER)
    server = stub_server(cognito_max_attempts=3)
    err = call_error(server, allowed_request())
    assert rich(err).info.reason == "POOL_METADATA_UNAVAILABLE"
    assert len(stub.calls("DescribeUserPool")) == 1


@pytest.mark.floors
def test_an_sms_write_is_not_resent_after_a_5xx(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """What the gate's False means to botocore. Before botocore 1.43.3 a False was "retry at
    once" (and kept being so): this call never ended; a plain write is retried as usual."""
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.default = error("InternalErrorException", MARKER, 500)
    server = stub_server(SMS_POLICY, state=str(tmp_path / "state.sqlite"), cognito_max_attempts=3)

    err = call_error(server, request(POOL, phone_number="+14155550100"), caller="svc")
    assert (err.code(), rich(err).info.reason) == (S.UNAVAILABLE, "COGNITO_UNAVAILABLE")
    assert len(stub.calls()) == 1, "an SMS-triggering write was re-sent after a 5xx"

    err = call_error(server, request(POOL, given_name="Ada"), caller="svc")
    assert err.code() == S.UNAVAILABLE
    assert len(stub.calls()) == 1 + 3


# --- undecodable answers, undocumented codes, queue slots ------------------------------------


@pytest.mark.floors
def test_a_4xx_whose_body_cannot_be_decoded_is_the_refusal_it_is(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], tmp_path: Path, logs: Any
) -> None:
    """A 400 with a non-UTF-8 body (a proxy's binary page, garbage) made botocore's parser raise:
    INTERNAL, and the SMS reservation was kept. It is a refusal: nothing happened, so the place
    in the limit (max 1 per number) is given back and the next write to the number passes."""
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.program(Reply(status=400, raw=b"\xff\xfe\x00garbage " + MARKER.encode()))
    server = stub_server(SMS_POLICY, state=str(tmp_path / "state.sqlite"))
    phone = request(POOL, phone_number="+14155550100")

    err = call_error(server, phone, caller="svc")
    detail = rich(err)

    assert (err.code(), detail.info.reason) == (S.FAILED_PRECONDITION, "COGNITO_REQUEST_REFUSED")
    assert detail.info.metadata["cognito_error_code"] == "400"
    assert_nothing_leaks(err, detail, logs)
    updates = [c for c in stub.received if c.target.endswith(".AdminUpdateUserAttributes")]
    assert len(updates) == 1, "a refusal is Cognito's final word: never retried"
    # The reservation came back: the limit of one write per number is free again.
    assert wait_until(lambda: _sms_free(server, phone), 10), "the reservation was kept"
    response, _ = call(server, phone, caller="svc")
    assert response.decision.allowed


def _sms_free(server: RunningServer, message: pb.UpdateUserAttributesRequest) -> bool:
    """CheckUpdateUserAttributes: whether the SMS guard would let `message` through now."""
    with server.channel() as channel:
        decision = server.stub(channel).CheckUpdateUserAttributes(
            message, metadata=as_caller("svc"), timeout=10
        )
    return bool(decision.allowed)


@pytest.mark.floors
def test_a_5xx_whose_body_cannot_be_decoded_is_unavailable_and_retried(
    stub: CognitoStub, stub_server: Callable[..., RunningServer]
) -> None:
    stub.default = Reply(status=503, raw=b"\xff\xfe\x00")
    server = stub_server()

    err = call_error(server, allowed_request())

    assert (err.code(), rich(err).info.reason) == (S.UNAVAILABLE, "COGNITO_UNAVAILABLE")
    assert rich(err).info.metadata["cognito_error_code"] == "503"
    assert len(stub.calls()) == server.settings.cognito_max_attempts


FORGED = "Evil\n2026-01-01 00:00:00,000 WARNING attrgate forged line"


def test_an_undocumented_error_code_is_passed_on_as_other_everywhere(
    stub: CognitoStub,
    stub_server: Callable[..., RunningServer],
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    spans: Any,
) -> None:
    """Cognito's error code was echoed verbatim into the status, ErrorInfo, decision log, log
    lines and spans: a newline in it forged log lines. Only documented codes pass."""
    slow = error(FORGED, MARKER)
    slow.delay = 1.0  # answers after the caller's deadline: the late-outcome log line
    stub.program(error(FORGED, MARKER), slow)
    decisions = tmp_path / "decisions.jsonl"
    metrics_port = free_port()
    server = stub_server(decision_log=str(decisions), metrics_listen=f"127.0.0.1:{metrics_port}")

    err = call_error(server, allowed_request())
    detail = rich(err)
    late = call_error(server, allowed_request(), timeout=0.3)

    assert (err.code(), detail.info.reason) == (S.INTERNAL, "COGNITO_UNEXPECTED_ERROR")
    assert detail.info.metadata["cognito_error_code"] == "other"
    assert "(other)" in detail.message
    assert late.code() == S.DEADLINE_EXCEEDED
    assert wait_for_late_record(logs)["code"] == "other"
    # the two requests' entries, and the late outcome's
    entries = json_lines(decisions, 3)
    assert entries[0]["cognito"]["error_code"] == "other"
    assert [e["cognito"]["error_code"] for e in entries if e["outcome"] == "late"] == ["other"]
    finished = spans.get_finished_spans()
    by_name = {x.name.split("/")[0]: x for x in finished}
    assert by_name["cognito-idp.AdminUpdateUserAttributes"].attributes is not None
    assert (
        by_name["cognito-idp.AdminUpdateUserAttributes"].attributes["attrgate.cognito.error_code"]
        == "other"
    )
    assert 'error_code="other"' in metrics_text(metrics_port)
    seen = [
        *exposed_texts(err, detail),
        late.details() or "",  # the client's own deadline may end it first: no details
        decisions.read_text(),
        *attrgate_log_texts(logs),
        metrics_text(metrics_port),
        *(f"{dict(x.attributes or {})} {x.status.description}" for x in finished),
    ]
    for text in seen:
        assert "Evil" not in text, text
        assert "forged" not in text, text


def test_pool_metadata_errors_pass_on_only_documented_codes(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    stub.describe = error(FORGED, MARKER, 503)
    server = stub_server()

    err = call_error(server, allowed_request())

    assert (err.code(), rich(err).info.reason) == (S.UNAVAILABLE, "POOL_METADATA_UNAVAILABLE")
    assert rich(err).info.metadata["cognito_error_code"] == "other"
    assert all("Evil" not in text for text in attrgate_log_texts(logs))


@pytest.mark.floors
def test_no_retry_starts_after_the_caller_has_gone(
    stub: CognitoStub, stub_server: Callable[..., RunningServer], logs: Any
) -> None:
    """A caller without a deadline cancels while Cognito throttles slowly: the attempt under way
    finishes (its outcome logged), and no retry is sent for a caller that is gone."""
    stub.default = error("TooManyRequestsException", MARKER)
    stub.default.delay = 1.0
    server = stub_server(cognito_max_attempts=3)

    with server.channel() as channel:
        pending = server.stub(channel).UpdateUserAttributes.future(
            allowed_request(), metadata=as_caller(CALLER)
        )
        assert wait_until(lambda: len(stub.calls()) == 1)
        pending.cancel()
        assert not wait_until(lambda: len(stub.calls()) > 1, 3.0), "retried for a gone caller"
    late = wait_for_late_record(logs, timeout=10)
    assert (late["ok"], late["error"]) == ("False", "THROTTLED")
