"""Protobuf <-> domain values. The only module that builds attrgate messages."""

from __future__ import annotations

from attrgate.domain import Attribute, Decision, UpdateRequest, Violation
from attrgate.v1 import attrgate_pb2 as pb


def request_from_proto(message: pb.UpdateUserAttributesRequest) -> UpdateRequest:
    return UpdateRequest(
        user_pool_id=message.user_pool_id,
        username=message.username,
        attributes=tuple(Attribute(a.name, a.value) for a in message.user_attributes),
        client_metadata=dict(message.client_metadata),
    )


def _violation(violation: Violation) -> pb.Violation:
    return pb.Violation(
        attribute=violation.attribute,
        policy=violation.policy,
        entry=violation.entry,
        reason=str(violation.reason),
        message=violation.message,
        client_metadata_key=violation.client_metadata_key,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    return pb.Decision(
        allowed=decision.allowed,
        violations=[_violation(v) for v in decision.violations],
        matched_policies=list(decision.matched_policies),
        would_deny=[_violation(v) for v in decision.would_deny],
        decision_id=decision.decision_id,
        policy_revision=decision.policy_revision,
    )
