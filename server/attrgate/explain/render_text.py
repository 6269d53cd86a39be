"""An Explanation as text for a reviewer (in a terminal or a pull request).

What is printed comes from the command line (caller, pool, attribute names and values,
metadata keys), from the policies (names, globs, constraints as the policy spells them) and from
the pool file's schema settings; never a value from anywhere else. Client-metadata values and the
username are not printed at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrgate.display import quote
from attrgate.domain import AttributeSchema, Decision, Invalid, Stage, Violation
from attrgate.explain.collect import (
    AttributeExplanation,
    Explanation,
    PolicyWhy,
    country_finding,
    schema_violations_of,
    uncounted,
)
from attrgate.guards.sms import CompiledGuard
from attrgate.policy.trace import EntryTrace

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
        refused = country_finding(decision, guard)
        out.append(
            f"  {guard.name} ({mode}): {_country_rule(guard)}: "
            + (f"REFUSES {sms.country} ({refused})" if refused else "passes")
        )
        rules = uncounted(guard)
        if rules:
            out.append("      not checked offline (counted in the servers' store):")
            out += [f"        {rule}" for rule in rules]
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
    return "-" if text is None else quote(text)


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
