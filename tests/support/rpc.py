"""Client-side helpers: build requests, call with a caller header, unpack rich errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc


def request(
    pool: str, username: str = "ada", metadata: dict[str, str] | None = None, **attributes: str
) -> pb.UpdateUserAttributesRequest:
    return pb.UpdateUserAttributesRequest(
        user_pool_id=pool,
        username=username,
        user_attributes=[pb.AttributeType(name=k, value=v) for k, v in attributes.items()],
        client_metadata=metadata or {},
    )


def attrs_request(
    pool: str, pairs: list[tuple[str, str]], username: str = "ada"
) -> pb.UpdateUserAttributesRequest:
    """For names that are not Python identifiers (custom:tier) or repeated names."""
    return pb.UpdateUserAttributesRequest(
        user_pool_id=pool,
        username=username,
        user_attributes=[pb.AttributeType(name=k, value=v) for k, v in pairs],
    )


def as_caller(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-attrgate-caller", name),)


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    field_violations: list[error_details_pb2.BadRequest.FieldViolation] = field(
        default_factory=list
    )
    has_bad_request: bool = False

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.field_violations]


def rich(error: grpc.RpcError) -> RichError:
    status = rpc_status.from_call(error)
    assert status is not None, "every error must carry google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    found_info = found_bad = False
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            found_info = True
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(bad)
            found_bad = True
    assert found_info, "every error must carry an ErrorInfo"
    assert info.domain == "attrgate"
    assert info.metadata["decision_id"], "ErrorInfo metadata must carry the decision_id"
    return RichError(
        error.code(), error.details() or "", info, list(bad.field_violations), found_bad
    )


def code_and_reason(error: grpc.RpcError) -> tuple[str, str]:
    """The status code's name and the ErrorInfo reason ("" when the error carries none: one
    made by gRPC itself, a deadline, a dead server)."""
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status is not None else ():
        if detail.Unpack(info):
            return error.code().name, info.reason
    return error.code().name, ""


Answer = pb.UpdateUserAttributesResponse | grpc.RpcError


def update(
    target: str,
    message: pb.UpdateUserAttributesRequest,
    caller: str | None = "svc",
    timeout: float = 10,
) -> Answer:
    """Send UpdateUserAttributes over a channel of its own: the response, or the error."""
    with grpc.insecure_channel(target) as channel:
        try:
            response: pb.UpdateUserAttributesResponse = pb_grpc.UserAttributesStub(
                channel
            ).UpdateUserAttributes(
                message, metadata=as_caller(caller) if caller else None, timeout=timeout
            )
        except grpc.RpcError as error:
            return error
    return response


def outcome(answer: object) -> tuple[str, str]:
    """("OK", "") for a response, else the code's name and the ErrorInfo reason."""
    if isinstance(answer, pb.UpdateUserAttributesResponse):
        return "OK", ""
    assert isinstance(answer, grpc.RpcError), answer
    return code_and_reason(answer)
