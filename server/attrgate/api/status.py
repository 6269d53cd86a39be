"""A google.rpc.Status that always reaches the caller: ErrorInfo always, BadRequest where the
request was at fault, squeezed step by step into the trailer size gRPC clients accept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from attrgate.reasons import DOMAIN, Reason

DECISION_ID_METADATA = "x-attrgate-decision-id"
_DETAILS_METADATA = "grpc-status-details-bin"  # grpc_status.rpc_status's key
# gRPC clients refuse trailers past 8 KiB (grpc.max_metadata_size), and a status travels twice:
# its message percent-encoded in grpc-message (3 bytes per non-ASCII byte), the whole Status
# base64-encoded in grpc-status-details-bin. Past this many wire bytes for the two, the answer
# degrades step by step: violations lose their descriptions (one per field, every field still
# named); then the message stops naming fields; last, violations that do not fit are left out
# and counted in ErrorInfo `fields_omitted`.
TRAILER_BUDGET = 7 * 1024


@dataclass(frozen=True)
class ErrorStatus:
    code: grpc.StatusCode
    reason: Reason
    message: str
    field_violations: Sequence[error_details_pb2.BadRequest.FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    extra_details: Sequence[Message] = ()

    def to_grpc(self, decision_id: str) -> GrpcError:
        # Each Status is serialised once: the bytes measured are the bytes sent.
        status = self._status(decision_id, self.field_violations)
        details = status.SerializeToString()
        if _wire_size(status.message, details) > TRAILER_BUDGET:
            status = self._status(decision_id, _compact(self.field_violations))
            details = status.SerializeToString()
        if _wire_size(status.message, details) > TRAILER_BUDGET:
            status.message = f"{self.reason}: the BadRequest detail names the fields at fault"
            details = status.SerializeToString()
        if _wire_size(status.message, details) > TRAILER_BUDGET:
            status = self._fitting(decision_id, status.message)
            details = status.SerializeToString()
        # What grpc_status.rpc_status.to_status sends, without serialising the Status again.
        trailing = ((_DETAILS_METADATA, details), (DECISION_ID_METADATA, decision_id))
        return GrpcError(self.code, status.message, trailing)

    def _fitting(self, decision_id: str, message: str) -> status_pb2.Status:
        """As many compacted violations as fit the budget, the rest counted; failing even that
        (long upstream metadata, many extra details), the bare reason."""
        violations = _compact(self.field_violations)
        for kept in range(len(violations), -1, -1):
            left_out = len(violations) - kept
            omitted = {"fields_omitted": str(left_out)} if left_out else {}
            status = self._status(decision_id, violations[:kept], omitted)
            status.message = (
                f"{self.reason}: {len(violations)} fields at fault, {left_out} not named "
                "(ErrorInfo fields_omitted)"
                if left_out
                else message
            )
            if _wire_size(status.message, status.SerializeToString()) <= TRAILER_BUDGET:
                return status
        info = error_details_pb2.ErrorInfo(
            reason=str(self.reason),
            domain=DOMAIN,
            metadata={
                "decision_id": decision_id,
                "policy_revision": self.metadata.get("policy_revision", ""),
                "fields_omitted": str(len(violations)),
            },
        )
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=str(self.reason), details=[_pack(info)]
        )

    def _status(
        self,
        decision_id: str,
        field_violations: Sequence[error_details_pb2.BadRequest.FieldViolation],
        more_metadata: Mapping[str, str] | None = None,
    ) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=str(self.reason),
            domain=DOMAIN,
            metadata={
                "decision_id": decision_id,
                **{k: v for k, v in self.metadata.items() if v},
                **(more_metadata or {}),
            },
        )
        details = [_pack(info)]
        if field_violations:
            details.append(_pack(error_details_pb2.BadRequest(field_violations=field_violations)))
        details.extend(_pack(extra) for extra in self.extra_details)
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )


# Bytes grpc-message carries as they are; every other byte is percent-encoded (%XX).
_MESSAGE_SAFE = bytes(b for b in range(0x20, 0x7F) if b != 0x25)


def _wire_size(message: str, details: bytes) -> int:
    """Bytes of grpc-message (percent-encoded) plus grpc-status-details-bin (base64)."""
    encoded = message.encode()
    escaped = len(encoded.translate(None, _MESSAGE_SAFE))  # the bytes that take 3
    return len(encoded) + 2 * escaped + (len(details) + 2) // 3 * 4


def _compact(
    violations: Sequence[error_details_pb2.BadRequest.FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    first: dict[str, str] = {}
    for violation in violations:
        first.setdefault(violation.field, violation.reason)
    return [
        error_details_pb2.BadRequest.FieldViolation(field=name, reason=reason)
        for name, reason in first.items()
    ]


@dataclass(frozen=True)
class GrpcError:
    """What `context.abort` takes: the code, the message and the rich-status trailers."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
