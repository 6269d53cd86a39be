"""An Explanation as the `--output json` object other tools read.

The keys of the issue's contract (allowed, policyRevision, violations, wouldDeny,
attributes[].name/policies/entries/determining) are never renamed; docs/policy-testing.md
describes every key. No attribute value is in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrgate.domain import AttributeSchema, Invalid, SmsRefusal, Violation
from attrgate.explain.collect import (
    AttributeExplanation,
    Explanation,
    PolicyWhy,
    country_finding,
    uncounted,
)
from attrgate.policy.trace import EntryTrace


def to_json(explanation: Explanation, all_policies: bool = False) -> dict[str, Any]:
    """`all_policies`: every policy in `policies`, not only those that applied (--all)."""
    e = explanation
    decision = e.decision
    applied = [p for p in e.policies if p.applied]
    return {
        "allowed": e.allowed,
        "outcome": e.outcome,
        "policyRevision": e.revision,
        "deniedBy": (decision.denied_by or None) if decision is not None else None,
        "violations": [_violation(v) for v in decision.violations] if decision else [],
        "wouldDeny": [_violation(v) for v in decision.would_deny] if decision else [],
        "invalid": [
            {"field": f.field, "reason": f.reason, "description": f.description}
            for f in (e.answer.violations if isinstance(e.answer, Invalid) else ())
        ],
        "caller": e.caller,
        "userPool": e.pool_id,
        "policies": [_policy(p) for p in (e.policies if all_policies else applied)],
        "attributes": [_attribute(a, applied) for a in e.attributes],
        "clientMetadata": [{"key": m.key, "policy": m.policy} for m in e.metadata],
        "pool": {"file": e.pool_file, "stage": e.pool_stage},
        "pendingVerification": list(decision.pending_verification) if decision else [],
        "sms": _sms(e),
    }


def _violation(v: Violation) -> dict[str, str]:
    return {
        "attribute": v.attribute,
        "policy": v.policy,
        "entry": v.entry,
        "reason": str(v.reason),
        "message": v.message,
        "clientMetadataKey": v.client_metadata_key,
    }


def _why(p: PolicyWhy) -> dict[str, Any]:
    """A policy and the globs that applied it (None: that side did not match)."""
    return {
        "name": p.name,
        "mode": p.mode,
        "callerGlob": p.caller_glob,
        "userPoolGlob": p.pool_glob,
    }


def _policy(p: PolicyWhy) -> dict[str, Any]:
    return {**_why(p), "applied": p.applied, "file": p.file, "line": p.line}


def _entry(entry: EntryTrace, audit: bool) -> dict[str, Any]:
    outcome = "wouldDeny" if audit and entry.outcome == "denied" else entry.outcome
    return {
        "policy": entry.policy,
        "entry": entry.entry,
        "matched": entry.matched,
        "outcome": outcome,
        "constraints": [
            {"name": c.name, "passed": c.passed, "why": c.why} for c in entry.constraints
        ],
    }


def _attribute(a: AttributeExplanation, applied: Sequence[PolicyWhy]) -> dict[str, Any]:
    return {
        "name": a.name,
        "policies": [_why(p) for p in applied],
        "entries": [
            *(_entry(entry, audit=False) for entry in a.entries),
            *(_entry(entry, audit=True) for entry in a.audit),
        ],
        "determining": [
            {"policy": d.policy, "entry": d.entry, "outcome": d.outcome} for d in a.determining
        ],
        "allowedByPolicy": a.allowed,
        "schema": _schema(a.schema),
    }


def _schema(schema: AttributeSchema | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    return {
        "dataType": schema.data_type,
        "mutable": schema.mutable,
        "minLength": schema.min_length,
        "maxLength": schema.max_length,
        "minValue": schema.min_value,
        "maxValue": schema.max_value,
    }


def _refusal(r: SmsRefusal) -> dict[str, str]:
    return {"guard": r.guard, "rule": r.rule, "description": r.description}


def _sms(e: Explanation) -> dict[str, Any] | None:
    decision = e.decision
    if decision is None or decision.sms is None:
        return None
    sms = decision.sms
    return {
        "triggersSms": sms.triggers_sms,
        "country": sms.country,
        "refusals": [_refusal(r) for r in sms.refusals],
        "wouldRefuse": [_refusal(r) for r in sms.would_refuse],
        "guards": [
            {
                "name": g.name,
                "mode": "enforce" if g.enforce else "audit",
                "countryRule": country_finding(decision, g),
                "uncounted": uncounted(g),
            }
            for g in e.guards
        ],
    }
