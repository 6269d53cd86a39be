"""What `attrgate call` prints of an answer: attrgate's additions to the operation's (empty)
response, under `Attrgate`, and an error in the AWS CLI's words with attrgate's details below
(the exit status: 254 when attrgate answered, 255 when it did not)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb

EXIT_SERVICE, EXIT_OTHER = 254, 255
# The answer's shape, for --generate-cli-skeleton output: what updated() fills in.
OUTPUT_SKELETON: dict[str, Any] = {
    "Attrgate": {
        "DecisionId": "",
        "PolicyRevision": "",
        "CognitoRequestId": "",
        "PendingVerification": [""],
        "WouldDeny": [{"Attribute": "", "Policy": "", "Reason": ""}],
    }
}


def updated(response: pb.UpdateUserAttributesResponse) -> dict[str, Any]:
    """attrgate's additions to the operation's (empty) response."""
    decision = response.decision
    return {
        "DecisionId": decision.decision_id,
        "PolicyRevision": decision.policy_revision,
        "CognitoRequestId": response.cognito_request_id,
        "PendingVerification": list(response.pending_verification),
        "WouldDeny": [_finding(v) for v in decision.would_deny],
    }


def checked(decision: pb.Decision) -> dict[str, Any]:
    """A CheckUpdateUserAttributes decision, in the same style."""
    answer: dict[str, Any] = {
        "Allowed": decision.allowed,
        "DecisionId": decision.decision_id,
        "PolicyRevision": decision.policy_revision,
        "MatchedPolicies": list(decision.matched_policies),
        "Violations": [_finding(v, detailed=True) for v in decision.violations],
        "WouldDeny": [_finding(v, detailed=True) for v in decision.would_deny],
    }
    if decision.denied_by:
        answer["DeniedBy"] = decision.denied_by
    if decision.shadow:
        answer["Shadow"] = True
        answer["ShadowAllowed"] = decision.shadow_allowed
    if decision.HasField("sms"):
        sms = decision.sms
        answer["Sms"] = {
            "TriggersSms": sms.triggers_sms,
            "Country": sms.country,
            "Refusals": [_refusal(r) for r in sms.refusals],
            "WouldRefuse": [_refusal(r) for r in sms.would_refuse],
        }
    if decision.HasField("candidate"):
        candidate = decision.candidate
        answer["Candidate"] = {
            "Allowed": candidate.allowed,
            "PolicyRevision": candidate.policy_revision,
            "Violations": [_finding(v, detailed=True) for v in candidate.violations],
        }
    return answer


def _finding(v: pb.Violation, detailed: bool = False) -> dict[str, str]:
    found = {"Attribute": v.attribute, "Policy": v.policy, "Reason": v.reason}
    if v.client_metadata_key:
        found["ClientMetadataKey"] = v.client_metadata_key
    if detailed:
        found["Entry"] = v.entry
        found["Message"] = v.message
    return found


def _refusal(r: pb.SmsRefusal) -> dict[str, Any]:
    return {
        "Guard": r.guard,
        "Rule": r.rule,
        "Description": r.description,
        "RetryAtUnixMs": r.retry_at_unix_ms,
    }


def print_error(error: grpc.RpcError, operation: str, target: str, out: TextIO) -> int:
    """The AWS CLI's error line, attrgate's details below it; the exit status. The code in
    parentheses is Cognito's own when Cognito refused (what a runbook greps for), else
    attrgate's reason, else the gRPC status."""
    code: grpc.StatusCode = error.code()
    status = rpc_status.from_call(error)
    info = _error_info(status)
    if info is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # Nothing from attrgate: the connection or the deadline failed, not the request.
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            print(f'\nRead timeout on endpoint URL: "{target}": {error.details()}', file=out)
        else:
            print(
                f'\nCould not connect to the endpoint URL: "{target}": {error.details()}', file=out
            )
        return EXIT_OTHER
    name = code.name if info is None else info.metadata.get("cognito_error_code") or info.reason
    print(
        f"\nAn error occurred ({name}) when calling the {operation} operation: {error.details()}",
        file=out,
    )
    print(f"  status: {code.name}", file=out)
    if status is not None:
        _print_details(status.details, out)
    return EXIT_SERVICE


def _error_info(status: Any) -> error_details_pb2.ErrorInfo | None:
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _print_details(details: Sequence[Any], out: TextIO) -> None:
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(f"  reason: {info.reason} (domain {info.domain})", file=out)
            for key in sorted(info.metadata):
                print(f"  {key}: {info.metadata[key]}", file=out)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            for violation in quota.violations:
                print(f"  quota: {violation.subject}: {violation.description}", file=out)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            print(f"  retry after: {retry.retry_delay.seconds}s", file=out)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            print("  field violations:", file=out)
            for violation in bad.field_violations:
                print(f"    - {violation.field}: {violation.description}", file=out)
