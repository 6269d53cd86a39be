"""An Explanation as text for a reviewer, or as the JSON object other tools read.

What is printed comes from the command line (caller, pool, attribute names and values,
metadata keys), from the policies (names, globs, constraints as the policy spells them) and from
the pool file's schema settings; never a value from anywhere else. Client-metadata values and the
username are not printed at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from attrgate.domain import (
    AttributeSchema,
    Decision,
    Invalid,
    SmsRefusal,
    Stage,
    Violation,
    ViolationReason,
)
from attrgate.explain.collect import (
    AttributeExplanation,
    Explanation,
    PolicyWhy,
    schema_violations_of,
)
from attrgate.guards.sms import CompiledGuard
from attrgate.policy.trace import EntryTrace

# --- JSON -------------------------------------------------------------------------------------


def to_json(explanation: Explanation, all_policies: bool = False) -> dict[str, Any]:
    """The `--output json` object. The keys of the issue's contract (allowed, policyRevision,
    violations, wouldDeny, attributes[].name/policies/entries/determining) are never renamed."""
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
                "countryRule": _country_finding(decision, g),
                "uncounted": _uncounted(g),
            }
            for g in e.guards
        ],
    }


def _country_finding(decision: Decision, guard: CompiledGuard) -> str | None:
    """The guard's country rule that refused (or would refuse) the number; None: it passed."""
    found = (*decision.violations, *decision.would_deny)
    return next(
        (
            v.entry
            for v in found
            if v.policy == guard.name and v.reason == ViolationReason.SMS_COUNTRY_NOT_ALLOWED
        ),
        None,
    )


def _uncounted(guard: CompiledGuard) -> list[str]:
    """The guard's limits and budget: counted in the servers' store, never offline."""
    found = [
        f"limits[{index}]: at most {most} SMS per {per} in {window}"
        for index, per, most, _, window in guard.limits
    ]
    if guard.budget_text:
        found.append(guard.budget_text)
    return found


# --- text -------------------------------------------------------------------------------------

_SHOWN = 60  # characters of a long value shown before it is cut


def to_text(explanation: Explanation, all_policies: bool = False) -> str:
    e = explanation
    out: list[str] = [
        f"caller {_plain(e.caller)}, user pool {_plain(e.pool_id)}",
        f"policy revision {e.revision}",
        "",
    ]
    if isinstance(e.answer, Invalid):
        out += [
            "The request is INVALID: it breaks Cognito's own limits, so no policy was asked",
            "(CheckUpdateUserAttributes answers INVALID_ARGUMENT):",
        ]
        out += [f"  - {f.field}: {f.reason}: {f.description}" for f in e.answer.violations]
        out += ["", f"Decision: INVALID, policy revision {e.revision}"]
        return "\n".join(out) + "\n"
    decision = e.answer
    out += _policies_text(e.policies, all_policies)
    for attribute in e.attributes:
        out += ["", *_attribute_text(attribute, e)]
    if e.metadata:
        out += ["", "Client metadata:"]
        for m in e.metadata:
            granted = (
                f"allowed by {m.policy} clientMetadata.allowKeys"
                if m.policy
                else "DENIED: not in any applicable enforce policy's allowKeys"
            )
            out.append(f"  {_plain(m.key)}: {granted}")
    out += ["", *_pool_text(e), *_sms_text(e), "", *_decision_text(decision)]
    return "\n".join(out) + "\n"


def _policies_text(policies: Sequence[PolicyWhy], all_policies: bool) -> list[str]:
    applied = [p for p in policies if p.applied]
    out = ["Policies that apply:" if applied else "Policies that apply: none"]
    for p in applied:
        out += [
            f"  {p.name} ({p.mode}) {_where(p)}",
            f"      callers glob {_quote(p.caller_glob)} matches the caller,"
            f" userPools glob {_quote(p.pool_glob)} matches the pool",
        ]
    if not applied and not all_policies:
        out.append("  (no policy's callers and userPools both match; --all shows each policy)")
    others = [p for p in policies if not p.applied]
    if all_policies and others:
        out.append("Policies that do not apply:")
        for p in others:
            caller = (
                f"callers glob {_quote(p.caller_glob)} matches"
                if p.caller_glob is not None
                else "no callers glob matches the caller"
            )
            pool = (
                f"userPools glob {_quote(p.pool_glob)} matches"
                if p.pool_glob is not None
                else "no userPools glob matches the pool"
            )
            out += [f"  {p.name} ({p.mode}) {_where(p)}", f"      {caller}; {pool}"]
    return out


def _where(p: PolicyWhy) -> str:
    return f"{p.file}:{p.line}" if p.line else p.file


def _attribute_text(a: AttributeExplanation, e: Explanation) -> list[str]:
    if a.allowed is None:
        verdict = "not evaluated: no enforce-mode policy applies"
    else:
        verdict = "allowed by policy" if a.allowed else "DENIED by policy"
    out = [f"{_plain(a.name)} = {_show(a.value)}: {verdict}"]
    determining = {(d.policy, d.entry) for d in a.determining}
    for entry in a.entries:
        mark = "  [determining]" if (entry.policy, entry.entry) in determining else ""
        out.append(
            f"  {entry.policy} {entry.entry} ({_plain(entry.matched)}): {_outcome(entry, a)}{mark}"
        )
        for c in entry.constraints:
            name = "(no constraint)" if c.name == "(none)" else c.name
            out.append(f"      {'pass' if c.passed else 'FAIL'}  {name}: {c.why}")
    if a.allowed is False and not a.determining:
        reasons = ", ".join(dict.fromkeys(str(v.reason) for v in a.violations if not v.policy))
        out.append(
            "  no allow entry of an applicable enforce policy may grant it: default deny"
            + (f" ({reasons})" if reasons else "")
        )
    for entry in a.audit:
        if entry.outcome == "denied":
            said = "would deny (audit; the outcome is unchanged)"
        else:
            said = "not asked: the attribute is denied anyway (audit reports on allowed ones)"
        out.append(f"  {entry.policy} {entry.entry} ({_plain(entry.matched)}): {said}")
    if e.pool_stage == "checked":
        out.append(f"  pool schema: {_schema_text(a.schema)}: {_schema_verdict(a)}")
    return out


def _outcome(entry: EntryTrace, a: AttributeExplanation) -> str:
    if entry.outcome == "skipped":
        decided_by_deny = any(d.outcome == "denied" for d in a.determining)
        return "not tried: " + (
            "a deny entry decided" if decided_by_deny else "another entry accepted first"
        )
    if entry.outcome == "excluded":
        return "may not grant a verified flag (only an entry naming it exactly does)"
    if entry.outcome == "refused" and a.allowed:
        return "refused (another entry accepted)"
    return entry.outcome


def _schema_text(schema: AttributeSchema | None) -> str:
    if schema is None:
        return "no such attribute in the pool"
    parts = [schema.data_type, "mutable" if schema.mutable else "immutable"]
    for label, bound in (
        ("MinLength", schema.min_length),
        ("MaxLength", schema.max_length),
        ("MinValue", schema.min_value),
        ("MaxValue", schema.max_value),
    ):
        if bound is not None:
            parts.append(f"{label} {bound}")
    return ", ".join(parts)


def _schema_verdict(a: AttributeExplanation) -> str:
    found = schema_violations_of(a)
    if not found:
        return "pass"
    return "; ".join(f"FAIL {v.reason}: {v.message}" for v in found)


def _pool_text(e: Explanation) -> list[str]:
    stage = e.pool_stage
    if stage == "not-reached":
        return ["Pool stage: not reached (the policy denied the request first)"]
    if stage == "skipped":
        return [
            "Pool stage: skipped (no --pool-file): no schema check and no pending verification;"
            " a phone_number",
            "  write counts as sending an SMS (as a server with --pool-metadata-fail-open when"
            " DescribeUserPool fails)",
        ]
    decision = e.decision
    assert decision is not None
    out = [f"Pool stage: checked against {e.pool_file}"]
    if decision.denied_by == Stage.POOL_SCHEMA:
        out.append("  the pool's schema refuses the request (see the attributes above)")
        return out
    pending = ", ".join(decision.pending_verification) or "none"
    out.append(f"  pending verification (held back until the user verifies): {pending}")
    return out


def _sms_text(e: Explanation) -> list[str]:
    decision = e.decision
    if not e.phone_written:
        return ["SMS guard: no phone number written"]
    if decision is None or decision.sms is None:
        return [f"SMS guard: not reached (denied by {decision.denied_by if decision else '-'})"]
    sms = decision.sms
    trigger = "sends a verification SMS" if sms.triggers_sms else "sends no verification SMS"
    out = [f"SMS guard: the write {trigger}; destination country {sms.country}"]
    if not e.guards:
        out.append("  no SmsGuard applies to this pool")
    for guard in e.guards:
        mode = "enforce" if guard.enforce else "audit"
        refused = _country_finding(decision, guard)
        out.append(
            f"  {guard.name} ({mode}): {_country_rule(guard)}: "
            + (f"REFUSES {sms.country} ({refused})" if refused else "passes")
        )
        uncounted = _uncounted(guard)
        if uncounted:
            out.append("      not checked offline (counted in the servers' store):")
            out += [f"        {rule}" for rule in uncounted]
    return out


def _country_rule(guard: CompiledGuard) -> str:
    if guard.allow is not None:
        return f"countries.allow [{', '.join(sorted(guard.allow))}]"
    if guard.deny is not None:
        return f"countries.deny [{', '.join(sorted(guard.deny))}]"
    return "no country rule (non-geographic numbers, 001, are refused)"


def _decision_text(decision: Decision) -> list[str]:
    if decision.allowed:
        head = "Decision: ALLOWED"
    else:
        head = f"Decision: DENIED (denied by {decision.denied_by})"
    out = [f"{head}, policy revision {decision.policy_revision}"]
    out += _violations_text("violations", decision.violations)
    out += _violations_text("would deny (audit, the outcome is unchanged)", decision.would_deny)
    return out


def _violations_text(title: str, items: Iterable[Violation]) -> list[str]:
    lines = [
        f"    - {_plain(v.subject) if v.attribute or v.client_metadata_key else '(request)'}:"
        f" {v.reason}"
        + (f" [{v.policy} {v.entry}]" if v.policy else f" [{v.entry}]" if v.entry else "")
        + f": {v.message}"
        for v in items
    ]
    return [f"  {title}:", *lines] if lines else []


def _quote(text: str | None) -> str:
    """A string as a JSON literal, with whatever would not print plainly (controls, bidi and
    zero-width characters) escaped, so a terminal or a pull request shows what is there."""
    if text is None:
        return "-"
    return "".join(
        ch if ch.isprintable() else f"\\u{ord(ch):04x}"
        for ch in json.dumps(text, ensure_ascii=False)
    )


def _plain(text: str) -> str:
    """A name, key or glob as it is when it reads unambiguously, else quoted."""
    if text and text.isprintable() and not any(ch.isspace() or ch in "\"'=" for ch in text):
        return text
    return _quote(text)


def _show(value: str) -> str:
    if not value:
        return '"" (empty: deletes the attribute)'
    if len(value) <= _SHOWN:
        return _quote(value)
    return f"{_quote(value[:_SHOWN])}... ({len(value)} characters)"
