"""Error statuses always fit the 8 KiB trailer limit gRPC clients accept, degrading step by step
(the served path is covered in test_server; these reach the steps a hostile upstream forces)."""

from __future__ import annotations

import base64
import urllib.parse

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from attrgate.api.status import TRAILER_BUDGET, ErrorStatus
from attrgate.reasons import Reason

Violation = error_details_pb2.BadRequest.FieldViolation


def wire(error: ErrorStatus) -> tuple[int, status_pb2.Status]:
    """Bytes on the wire of grpc-message and grpc-status-details-bin, and the Status sent."""
    sent = error.to_grpc("d" * 32)
    details = dict(sent.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    message = urllib.parse.quote(sent.details.encode(), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return len(message) + len(base64.b64encode(details)), status_pb2.Status.FromString(details)


def info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    found = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(found) for d in status.details if d.Is(found.DESCRIPTOR))
    return found


def bad_request_of(status: status_pb2.Status) -> list[str]:
    found = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(found.DESCRIPTOR):
            detail.Unpack(found)
    return [v.field for v in found.field_violations]


def test_small_statuses_are_sent_as_they_are() -> None:
    error = ErrorStatus(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.POLICY_DENIED,
        "denied by policy: email",
        [Violation(field="user_attributes[0]", description="why", reason="ATTRIBUTE_DENIED")],
    )
    size, status = wire(error)
    assert size < TRAILER_BUDGET
    assert status.message == "denied by policy: email"
    assert bad_request_of(status) == ["user_attributes[0]"]


def test_violations_that_do_not_fit_are_counted() -> None:
    fields = [f"client_metadata.{i:02d}" + "\U0001f600" * 62 for i in range(40)]
    error = ErrorStatus(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.POLICY_DENIED,
        "denied by policy: " + ", ".join(fields[:5]),
        [Violation(field=f, description="x" * 200, reason="KEY_NOT_ALLOWED") for f in fields],
    )
    size, status = wire(error)
    assert size <= TRAILER_BUDGET
    named = bad_request_of(status)
    assert 0 < len(named) < len(fields)
    assert named == fields[: len(named)]
    assert int(info_of(status).metadata["fields_omitted"]) == len(fields) - len(named)
    assert "not named" in status.message


def test_when_nothing_else_fits_the_bare_reason_is_sent() -> None:
    """A hostile upstream's endless error code and many extra details: still under the limit,
    still the right code and reason."""
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=f"guard {i}", description="d" * 300)
            for i in range(40)
        ]
    )
    error = ErrorStatus(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.SMS_LIMIT_EXCEEDED,
        "limits",
        [Violation(field="user_attributes[0]", reason="SMS_LIMIT_EXCEEDED")],
        {"policy_revision": "sha256:0123456789abcdef", "cognito_error_code": "E" * 20000},
        [quota],
    )
    size, status = wire(error)
    assert size <= TRAILER_BUDGET
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = info_of(status)
    assert info.reason == "SMS_LIMIT_EXCEEDED"
    assert info.metadata["policy_revision"] == "sha256:0123456789abcdef"
    assert info.metadata["fields_omitted"] == "1"
    assert not any(d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR) for d in status.details)
    assert isinstance(status.details[0], any_pb2.Any)
