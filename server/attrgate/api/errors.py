"""Every non-OK answer, as the ErrorStatus (api/status.py) of its outcome: which gRPC code, which
reason, which message and details. Messages name fields and attributes, never values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from attrgate.api.status import DECISION_ID_METADATA, ErrorStatus
from attrgate.domain import (
    Decision,
    FieldViolation,
    LookupLimited,
    QuotaLimited,
    Stage,
    Unavailable,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
    Violation,
)
from attrgate.reasons import Reason

__all__ = ["DECISION_ID_METADATA", "ErrorStatus"]


def _summary(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def unauthenticated() -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.CALLER_UNAUTHENTICATED,
        "no caller identity: present a client certificate (or, on an --insecure listener, the "
        "x-attrgate-caller header)",
    )


def invalid_request(problems: Sequence[FieldViolation], revision: str) -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_REQUEST,
        f"invalid request: {_summary([f'{p.field} ({p.reason})' for p in problems])}",
        [
            error_details_pb2.BadRequest.FieldViolation(
                field=p.field, description=p.description, reason=p.reason
            )
            for p in problems
        ],
        {"policy_revision": revision},
    )


def malformed_request() -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_REQUEST,
        "the request is not a valid attrgate.v1.UpdateUserAttributesRequest",
        [
            error_details_pb2.BadRequest.FieldViolation(
                field="request",
                description="protobuf decoding failed (invalid UTF-8 in a string field, or "
                "corrupt data)",
                reason="MALFORMED",
            )
        ],
    )


def _field_violations(
    decision: Decision, request: UpdateRequest
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    positions = {a.name: i for i, a in enumerate(request.attributes)}
    violations = []
    for v in decision.violations:
        if v.attribute in positions:
            field_path = f"user_attributes[{positions[v.attribute]}]"
        elif v.client_metadata_key:
            field_path = f"client_metadata.{v.client_metadata_key}"
        else:
            field_path = "caller"
        where = f" (policy {v.policy} {v.entry})" if v.policy else ""
        # Name the attribute where the field path is only its position.
        subject = f"{v.attribute}: " if v.attribute else ""
        violations.append(
            error_details_pb2.BadRequest.FieldViolation(
                field=field_path,
                description=f"{subject}{v.reason}{where}: {v.message}",
                reason=str(v.reason),
            )
        )
    return violations


def _offenders(violations: Sequence[Violation]) -> str:
    return _summary(list(dict.fromkeys(f"{v.subject} ({v.reason})" for v in violations)))


def _decided(decision: Decision) -> dict[str, str]:
    """ErrorInfo metadata of every denial: the revision that decided, shadow mode, and the
    candidate set's verdict, so a service team sees what the next policies say of a denied
    request too (its subjects and reasons; the whole verdict is CheckUpdateUserAttributes')."""
    found = {"policy_revision": decision.policy_revision}
    if decision.shadow:
        found["shadow"] = "true"
    candidate = decision.candidate
    if candidate is not None:
        found["candidate_policy_revision"] = candidate.policy_revision
        found["candidate_allowed"] = "true" if candidate.allowed else "false"
        if candidate.violations:
            found["candidate_violations"] = _offenders(candidate.violations)
    return found


# Found missing while describing the pool or looking the user up, before any update.
_NOT_FOUND = {
    Stage.POOL: (
        Reason.COGNITO_RESOURCE_NOT_FOUND,
        "Cognito: the user pool does not exist",
        "ResourceNotFoundException",
    ),
    Stage.USER: (
        Reason.COGNITO_USER_NOT_FOUND,
        "Cognito: the user does not exist",
        "UserNotFoundException",
    ),
}


def denied(decision: Decision, request: UpdateRequest, now_ms: int) -> ErrorStatus:
    """The status of a request a stage after validation refused."""
    decided = _decided(decision)
    stage = decision.denied_by
    if stage in _NOT_FOUND:
        reason, message, code = _NOT_FOUND[Stage(stage)]
        return ErrorStatus(
            grpc.StatusCode.NOT_FOUND,
            reason,
            message,
            metadata={**decided, "cognito_error_code": code},
        )
    if stage == Stage.POOL_SCHEMA:
        return ErrorStatus(
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.POOL_SCHEMA_VIOLATION,
            f"the user pool's schema refuses: {_offenders(decision.violations)}",
            _field_violations(decision, request),
            decided,
        )
    if stage == Stage.SMS_COUNTRY:
        return ErrorStatus(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.SMS_COUNTRY_DENIED,
            "the SMS guard does not allow the phone number's destination country",
            _field_violations(decision, request),
            decided,
        )
    if stage == Stage.SMS_LIMIT:
        return _sms_limit(decision, now_ms)
    return ErrorStatus(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.POLICY_DENIED,
        f"denied by policy: {_offenders(decision.violations)}",
        _field_violations(decision, request),
        decided,
    )


def _sms_limit(decision: Decision, now_ms: int) -> ErrorStatus:
    refusals = decision.sms.refusals if decision.sms else ()
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"SmsGuard {r.guard} {r.rule}", description=r.description
            )
            for r in refusals
        ]
    )
    # Every refusing window must free before a retry can pass.
    retry_at = max((r.retry_at_ms for r in refusals), default=now_ms)
    retry = _retry_info(max(0, retry_at - now_ms))
    rules = ", ".join(f"{r.guard} {r.rule}" for r in refusals)
    return ErrorStatus(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.SMS_LIMIT_EXCEEDED,
        f"SMS limit reached: {rules}",
        metadata={**_decided(decision), "retry_at_unix_ms": str(retry_at)},
        extra_details=(quota, retry),
    )


def _retry_info(delay_ms: int) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=delay_ms // 1000, nanos=(delay_ms % 1000) * 1_000_000
        )
    )


_LOOKUPS = {"pool_metadata": "DescribeUserPool", "user_lookup": "AdminGetUser"}


def lookup_limited(outcome: LookupLimited) -> ErrorStatus:
    """The caller's budget for metadata lookups not answered from cache is spent: refused
    before any call, with the time until its next lookup fits."""
    delay_ms = max(1, math.ceil(outcome.retry_after * 1000))
    return ErrorStatus(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.METADATA_LOOKUP_LIMITED,
        f"too many {_LOOKUPS[outcome.lookup]} lookups for pools or users this caller named that "
        f"were not cached; nothing was sent, retry in {delay_ms} ms",
        metadata={"policy_revision": outcome.policy_revision, "lookup": outcome.lookup},
        extra_details=(_retry_info(delay_ms),),
    )


_QUOTA_SCOPES = {
    "share": "no token of its share's rate within the time it could wait",
    "user": "writes to this user are paced (perUser), and its turn would come too late",
    "in_flight": "its share has the most calls under way that it may (maxInFlight)",
}


def quota_exceeded(outcome: QuotaLimited) -> ErrorStatus:
    """The Cognito quota governor gave the call no token in time: nothing was sent, and any
    SMS reservation was given back."""
    delay_ms = max(1, math.ceil(outcome.retry_after * 1000))
    why = _QUOTA_SCOPES[outcome.scope]
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"CognitoQuota {outcome.quota} share {outcome.share}",
                description=f"{outcome.scope}: {why}",
            )
        ]
    )
    return ErrorStatus(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.QUOTA_EXCEEDED,
        f"Cognito quota: share {outcome.share}: {why}; nothing was sent, retry in {delay_ms} ms",
        metadata={
            **_decided(outcome.decision),
            "quota_share": outcome.share,
            "quota_scope": outcome.scope,
        },
        extra_details=(quota, _retry_info(delay_ms)),
    )


_DEPENDENCY_REASONS = {
    "pool_metadata": Reason.POOL_METADATA_UNAVAILABLE,
    "user_lookup": Reason.USER_LOOKUP_UNAVAILABLE,
    "sms_store": Reason.SMS_STORE_UNAVAILABLE,
}


def unavailable(outcome: Unavailable, check: bool = False) -> ErrorStatus:
    """A dependency could not answer: fail closed. attrgate's own credentials being refused
    keeps its distinct reason, and is INTERNAL (an operator must act) except for
    CheckUpdateUserAttributes, whose only dependency error is UNAVAILABLE."""
    upstream = outcome.upstream
    reason = _DEPENDENCY_REASONS[outcome.dependency]
    code = grpc.StatusCode.UNAVAILABLE
    if upstream is not None and upstream.error == UpstreamError.CREDENTIALS_REJECTED:
        reason = Reason.UPSTREAM_CREDENTIALS_REJECTED
        code = grpc.StatusCode.UNAVAILABLE if check else grpc.StatusCode.INTERNAL
    return ErrorStatus(
        code,
        reason,
        f"{outcome.dependency.replace('_', ' ')} unavailable; the request was not forwarded",
        metadata={
            "policy_revision": outcome.policy_revision,
            "cognito_error_code": upstream.error_code if upstream else "",
        },
    )


_UPSTREAM: dict[UpstreamError, tuple[grpc.StatusCode, Reason, str]] = {
    UpstreamError.USER_NOT_FOUND: (
        grpc.StatusCode.NOT_FOUND,
        Reason.COGNITO_USER_NOT_FOUND,
        "Cognito: the user does not exist",
    ),
    UpstreamError.RESOURCE_NOT_FOUND: (
        grpc.StatusCode.NOT_FOUND,
        Reason.COGNITO_RESOURCE_NOT_FOUND,
        "Cognito: the user pool does not exist",
    ),
    UpstreamError.ALIAS_EXISTS: (
        grpc.StatusCode.ALREADY_EXISTS,
        Reason.COGNITO_ALIAS_EXISTS,
        "Cognito: another user already has this email or phone number as an alias",
    ),
    UpstreamError.INVALID_PARAMETER: (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.COGNITO_INVALID_PARAMETER,
        "Cognito rejected a parameter of the request",
    ),
    UpstreamError.THROTTLED: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.COGNITO_THROTTLED,
        "Cognito throttled the request after retries",
    ),
    UpstreamError.UNAVAILABLE: (
        grpc.StatusCode.UNAVAILABLE,
        Reason.COGNITO_UNAVAILABLE,
        "Cognito is unavailable (error, 5xx or unreachable after retries)",
    ),
    UpstreamError.LAMBDA_REJECTED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.COGNITO_LAMBDA_REJECTED,
        "a Cognito Lambda trigger refused or failed",
    ),
    UpstreamError.OPERATION_NOT_ENABLED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.COGNITO_OPERATION_NOT_ENABLED,
        "Cognito: the operation is not enabled for this user pool",
    ),
    UpstreamError.CREDENTIALS_REJECTED: (
        grpc.StatusCode.INTERNAL,
        Reason.UPSTREAM_CREDENTIALS_REJECTED,
        "Cognito rejected attrgate's own credentials or IAM rights: an operator must fix "
        "attrgate's configuration",
    ),
    UpstreamError.POOL_MISCONFIGURED: (
        grpc.StatusCode.INTERNAL,
        Reason.COGNITO_POOL_MISCONFIGURED,
        "the user pool's SMS or email role is misconfigured",
    ),
    UpstreamError.DEADLINE_EXCEEDED: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        Reason.DEADLINE_EXCEEDED,
        "the caller's deadline passed before Cognito answered; the call's outcome is logged",
    ),
    UpstreamError.REFUSED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.COGNITO_REQUEST_REFUSED,
        "Cognito (or a proxy before it) refused the call with an HTTP 4xx and no readable "
        "error; nothing was changed",
    ),
    UpstreamError.UNEXPECTED: (
        grpc.StatusCode.INTERNAL,
        Reason.COGNITO_UNEXPECTED_ERROR,
        "Cognito answered with an error attrgate does not know",
    ),
}


def upstream_failed(result: UpstreamResult, revision: str) -> ErrorStatus:
    code, reason, message = _UPSTREAM[result.error or UpstreamError.UNEXPECTED]
    if result.error_code:
        message = f"{message} ({result.error_code})"
    violations = []
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="user_attributes",
                description=f"Cognito rejected the request ({result.error_code})",
                reason=result.error_code or str(reason),
            )
        )
    return ErrorStatus(
        code,
        reason,
        message,
        violations,
        {
            "cognito_error_code": result.error_code,
            "cognito_request_id": result.request_id,
            "policy_revision": revision,
        },
    )


def shutting_down() -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.UNAVAILABLE,
        Reason.ATTRGATE_SHUTTING_DOWN,
        "attrgate is shutting down and takes no new calls; nothing was decided or sent: retry "
        "(another replica answers)",
    )


def grace_ended() -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.ABORTED,
        Reason.ATTRGATE_GRACE_ENDED,
        "attrgate stopped (its drain's grace ended) before Cognito answered: the update may "
        "have been applied; check before retrying (the decision log has its late outcome)",
    )


def internal_error() -> ErrorStatus:
    return ErrorStatus(
        grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR, "attrgate failed internally; see its logs"
    )
