"""The candidate policy set (serve --candidate-policies): its engine's verdict on a request,
beside the serving set's, and how the two differ. Pure, like the engine: one more evaluation, no
I/O, never deciding.

Only the policy verdicts are compared: the pool schema and the SmsGuards are the serving set's
(the candidate's guards are not consulted), so a later stage's denial is no disagreement.
"""

from __future__ import annotations

import enum

from attrgate.domain import CandidateVerdict, UpdateRequest, Verdict, Violation
from attrgate.policy.compile import PolicySet
from attrgate.policy.engine import evaluate


class Disagreement(enum.StrEnum):
    """attrgate_candidate_disagreements_total{kind}."""

    # The serving set allows; the candidate would deny: promoting it tightens.
    WOULD_DENY_NOW_ALLOWED = "would_deny_now_allowed"
    # The serving set denies; the candidate would allow: promoting it loosens.
    WOULD_ALLOW_NOW_DENIED = "would_allow_now_denied"
    # Both deny, for different reasons.
    DIFFERENT_VIOLATIONS = "different_violations"


def judge(
    candidate: PolicySet | None, caller: str, request: UpdateRequest, serving: Verdict
) -> CandidateVerdict | None:
    """The candidate's verdict on `request`, compared with the serving set's; None without a
    candidate (nothing evaluated)."""
    if candidate is None:
        return None
    verdict = evaluate(candidate, caller, request)
    return CandidateVerdict(
        verdict.allowed,
        verdict.violations,
        candidate.revision,
        disagreement(serving, verdict),
    )


def disagreement(serving: Verdict, candidate: Verdict) -> str:
    """The Disagreement between two verdicts on the same request, or "" when they agree."""
    if serving.allowed and not candidate.allowed:
        return Disagreement.WOULD_DENY_NOW_ALLOWED
    if candidate.allowed and not serving.allowed:
        return Disagreement.WOULD_ALLOW_NOW_DENIED
    if not serving.allowed and _findings(serving.violations) != _findings(candidate.violations):
        return Disagreement.DIFFERENT_VIOLATIONS
    return ""


def _findings(violations: tuple[Violation, ...]) -> frozenset[tuple[str, str, str, str, str]]:
    # What a violation says, not how: messages may be reworded without a disagreement.
    return frozenset(
        (v.attribute, v.policy, v.entry, v.reason, v.client_metadata_key) for v in violations
    )
