"""Protobuf <-> domain values. The only module that builds attrgate messages."""

from __future__ import annotations

from attrgate.domain import (
    Attribute,
    CandidateVerdict,
    Decision,
    SmsAssessment,
    SmsRefusal,
    UpdateRequest,
    Violation,
)
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


def _refusal(refusal: SmsRefusal) -> pb.SmsRefusal:
    return pb.SmsRefusal(
        guard=refusal.guard,
        rule=refusal.rule,
        description=refusal.description,
        retry_at_unix_ms=refusal.retry_at_ms,
    )


def _sms(sms: SmsAssessment | None) -> pb.SmsAssessment | None:
    if sms is None:
        return None
    return pb.SmsAssessment(
        triggers_sms=sms.triggers_sms,
        country=sms.country,
        refusals=[_refusal(r) for r in sms.refusals],
        would_refuse=[_refusal(r) for r in sms.would_refuse],
    )


def _candidate(candidate: CandidateVerdict | None) -> pb.CandidateDecision | None:
    if candidate is None:
        return None
    return pb.CandidateDecision(
        allowed=candidate.allowed,
        violations=[_violation(v) for v in candidate.violations],
        policy_revision=candidate.policy_revision,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    return pb.Decision(
        candidate=_candidate(decision.candidate),
        shadow=decision.shadow,
        shadow_allowed=decision.shadow_allowed,
        denied_by=decision.denied_by,
        sms=_sms(decision.sms),
        allowed=decision.allowed,
        violations=[_violation(v) for v in decision.violations],
        matched_policies=list(decision.matched_policies),
        would_deny=[_violation(v) for v in decision.would_deny],
        decision_id=decision.decision_id,
        policy_revision=decision.policy_revision,
    )
