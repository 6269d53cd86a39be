"""The decision-log entry of one RPC, filled in as the request goes and finished with its status.

Plain values only, and nothing personal: attribute names but no values, metadata keys but no
values, the username only as a keyed hash (or not at all when no key is configured).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from typing import Any

from attrgate.domain import (
    Caller,
    Decision,
    Invalid,
    LookupLimited,
    QuotaLimited,
    SmsRefusal,
    Unavailable,
    UpdateRequest,
    UpstreamResult,
    Violation,
)

UsernameHash = Callable[[str, str], str]


def _violation(v: Violation) -> dict[str, str]:
    found = {"attribute": v.attribute, "policy": v.policy, "entry": v.entry, "reason": v.reason}
    if v.client_metadata_key:
        found["client_metadata_key"] = v.client_metadata_key
    return {k: value for k, value in found.items() if value}


def _refusal(r: SmsRefusal) -> dict[str, Any]:
    return {"guard": r.guard, "rule": r.rule, "retry_at_unix_ms": r.retry_at_ms}


class DecisionRecord:
    __slots__ = ("_hash", "_started", "entry")

    def __init__(
        self, method: str, username_hash: UsernameHash | None, shadow: bool = False
    ) -> None:
        self._started = time.perf_counter()
        self._hash = username_hash
        self.entry: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "method": method,
        }
        if shadow:  # serve --shadow: on every entry, refusals before any decision included
            self.entry["shadow"] = True

    def caller(self, caller: Caller) -> None:
        self.entry["caller"] = caller.name
        self.entry["caller_source"] = caller.source

    def request(self, request: UpdateRequest) -> None:
        self.entry["user_pool_id"] = request.user_pool_id
        if self._hash is not None and request.username:
            self.entry["username_hash"] = self._hash(request.user_pool_id, request.username)

    def decided(self, at: float | None = None) -> None:
        """Mark the moment of decision (`at`, a perf_counter reading, or now)."""
        at = time.perf_counter() if at is None else at
        self.entry["decision_ms"] = round((at - self._started) * 1000, 3)

    def invalid(self, outcome: Invalid) -> None:
        # A malformed request's names may be anything: log only the fields at fault.
        self.decided()
        self.entry["decision_id"] = outcome.decision_id
        self.entry["policy_revision"] = outcome.policy_revision
        self.entry["outcome"] = "invalid"
        self.entry["invalid_fields"] = [
            {"field": v.field, "reason": v.reason} for v in outcome.violations
        ]

    def decision(
        self, decision: Decision, request: UpdateRequest, decided_at: float | None = None
    ) -> None:
        self.decided(decided_at)
        entry = self.entry
        entry["decision_id"] = decision.decision_id
        entry["policy_revision"] = decision.policy_revision
        entry["outcome"] = decision.outcome
        if decision.shadow:
            entry["shadow"] = True
        entry["attributes"] = [a.name for a in request.attributes]
        if request.client_metadata:
            entry["client_metadata_keys"] = sorted(request.client_metadata)
        entry["matched_policies"] = list(decision.matched_policies)
        if decision.denied_by:
            entry["denied_by"] = decision.denied_by
        entry["violations"] = [_violation(v) for v in decision.violations]
        entry["would_deny"] = [_violation(v) for v in decision.would_deny]
        if decision.candidate is not None:
            entry["candidate"] = {
                "allowed": decision.candidate.allowed,
                "violations": [_violation(v) for v in decision.candidate.violations],
                "policy_revision": decision.candidate.policy_revision,
                "disagreement": decision.candidate.disagreement,
            }
        if decision.pending_verification:
            entry["pending_verification"] = list(decision.pending_verification)
        if decision.sms is not None:
            entry["sms"] = {
                "outcome": decision.sms_outcome,
                "triggers_sms": decision.sms.triggers_sms,
                "country": decision.sms.country,
                "refusals": [_refusal(r) for r in decision.sms.refusals],
                "would_refuse": [_refusal(r) for r in decision.sms.would_refuse],
                "reserved": [
                    {"guard": g, "rule": r, "amount": a} for g, r, a in decision.sms.reserved
                ],
            }

    def unavailable(self, outcome: Unavailable) -> None:
        self._undecided(outcome, "unavailable")
        self.entry["unavailable"] = outcome.dependency

    def limited(self, outcome: LookupLimited) -> None:
        """Refused by the caller's metadata lookup budget, before anything was decided."""
        self._undecided(outcome, "limited")
        self.entry["limited"] = outcome.lookup
        self.entry["retry_after_ms"] = math.ceil(outcome.retry_after * 1000)

    def quota(self, outcome: QuotaLimited) -> None:
        """Allowed, but refused by the Cognito quota (the decision is recorded already)."""
        self.entry["outcome"] = "quota_exceeded"
        self.entry["quota"] = {
            "share": outcome.share,
            "scope": outcome.scope,
            "retry_after_ms": math.ceil(outcome.retry_after * 1000),
        }

    def _undecided(self, outcome: Unavailable | LookupLimited, name: str) -> None:
        self.decided()
        self.entry["decision_id"] = outcome.decision_id
        self.entry["policy_revision"] = outcome.policy_revision
        self.entry["outcome"] = name

    def shutting_down(self) -> None:
        """Refused before anything was decided: the server is draining."""
        self.decided()
        self.entry["outcome"] = "unavailable"
        self.entry["unavailable"] = "shutting_down"

    def upstream(self, result: UpstreamResult) -> None:
        self.entry["cognito"] = _cognito(result)

    def finish(self, status: str, reason: str = "", decision_id: str = "") -> dict[str, Any]:
        entry = self.entry
        entry.setdefault("decision_id", decision_id)
        entry.setdefault("outcome", "error" if status != "OK" else "allowed")
        entry["status"] = status
        if reason:
            entry["reason"] = reason
        entry["latency_ms"] = round((time.perf_counter() - self._started) * 1000, 3)
        return entry


def _cognito(result: UpstreamResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "error": result.error.value if result.error else "",
        "error_code": result.error_code,
        "request_id": result.request_id,
    }


def late_entry(method: str, decision_id: str, result: UpstreamResult) -> dict[str, Any]:
    """The entry of a Cognito outcome that arrived after its caller had gone (a deadline, a
    cancel, the end of a drain's grace): the request's own entry has its decision id, and
    status DEADLINE_EXCEEDED or CANCELLED; this one says what Cognito did."""
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "method": method,
        "decision_id": decision_id,
        "outcome": "late",
        "cognito": _cognito(result),
    }
