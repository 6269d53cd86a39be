"""The policy engine: pure. A compiled policy set, a caller and a request in; a Verdict out.

No I/O, no clock, no globals, so decisions are cheap and testable by the thousand.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrgate.domain import Attribute, UpdateRequest, Verdict, Violation, ViolationReason
from attrgate.policy.compile import CompiledPolicy, PolicySet
from attrgate.policy.model import VERIFIED_FLAGS
from attrgate.policy.trace import (
    AttributeTrace,
    EntryTrace,
    MetadataTrace,
    Outcome,
    PolicyTrace,
    Trace,
)


def evaluate(
    policy_set: PolicySet, caller: str, request: UpdateRequest, trace: Trace | None = None
) -> Verdict:
    """The verdict on `request` from `caller`. `trace`, when given, records every step (which
    policies applied and why, each entry tried, each constraint) for explain and coverage."""
    applicable = policy_set.applicable(caller, request.user_pool_id)
    matched, enforce, audit = applicable.names, applicable.enforce, applicable.audit
    if trace is not None and trace.record_policies:
        _trace_policies(trace, policy_set, caller, request.user_pool_id, matched)
    if not enforce:
        reason = (
            "only audit-mode policies apply to this caller and pool; audit never grants"
            if audit
            else "no policy applies to this caller and user pool"
        )
        violation = Violation("", "", "", ViolationReason.NO_APPLICABLE_POLICY, reason)
        return Verdict(False, (violation,), matched, ())

    violations: list[Violation] = []
    would_deny: list[Violation] = []
    for attribute in request.attributes:
        record = trace.attribute(attribute.name) if trace is not None else None
        findings = attribute_findings(enforce, attribute, record)
        if findings:
            violations.extend(findings)
            if record is not None:
                _trace_audit_unasked(record, audit, attribute.name)
        else:
            # Audit policies only tighten: making one enforcing adds allows (which cannot deny)
            # and denies, so what it would deny among allowed attributes is what its deny
            # entries match.
            for policy in audit:
                found = _denials(policy, attribute.name)
                would_deny.extend(found)
                if record is not None:
                    record.audit.extend(_denied(policy, v.entry) for v in found)
    # Sorted: a protobuf map arrives in no particular order, and the same request must get the
    # same answer (and explain the server's) whatever order its keys came in.
    metadata = request.client_metadata
    for key in sorted(metadata) if len(metadata) > 1 else metadata:
        granting = next((p for p in enforce if key in p.metadata_keys), None)
        if trace is not None:
            trace.metadata.append(MetadataTrace(key, granting.name if granting else None))
        if granting is None:
            violations.append(
                Violation(
                    "",
                    "",
                    "clientMetadata.allowKeys",
                    ViolationReason.METADATA_KEY_NOT_ALLOWED,
                    f"client metadata key {key!r} is not in any applicable policy's allowKeys",
                    client_metadata_key=key,
                )
            )
    return Verdict(not violations, tuple(violations), matched, tuple(would_deny))


def attribute_findings(
    policies: Sequence[CompiledPolicy], attribute: Attribute, record: AttributeTrace | None = None
) -> list[Violation]:
    """Why `policies` (all enforcing) deny `attribute`; empty when they allow it.

    A matching deny entry in any policy wins. Otherwise allows add up: one allow entry that
    matches the name and accepts the value is enough. `record` (a trace) gets every entry.
    """
    name = attribute.name
    denied = [v for p in policies for v in _denials(p, name)]
    if denied:
        if record is not None:
            _trace_denied(record, policies, name, denied)
        return denied
    failures: list[Violation] = []
    glob_hit_on_flag = False
    for policy in policies:
        entries, flag_glob = policy.allows_for(name)
        glob_hit_on_flag = glob_hit_on_flag or flag_glob
        for entry in entries:
            if record is None:  # the request path: no trace
                tried, problems = None, entry.check(attribute.value)
            else:
                tried = _tried(record, policy, entry.label, entry.attribute)
                problems = entry.check(attribute.value, tried.constraints)
            if not problems:
                if record is not None and tried is not None:
                    _trace_accepted(record, policies, name, tried)
                return []
            failures.extend(
                Violation(name, policy.name, entry.label, problem.reason, problem.message)
                for problem in problems
            )
    if record is not None:
        _trace_refused(record, policies, name)
    if failures:
        return failures
    if glob_hit_on_flag:
        return [
            Violation(
                name,
                "",
                "",
                ViolationReason.VERIFIED_FLAG_NOT_GRANTED,
                f"{name} is granted only by an allow entry that names it exactly",
            )
        ]
    return [
        Violation(
            name, "", "", ViolationReason.ATTRIBUTE_NOT_ALLOWED, "no applicable policy allows it"
        )
    ]


def _denials(policy: CompiledPolicy, name: str) -> list[Violation]:
    return [
        Violation(name, policy.name, entry, ViolationReason.ATTRIBUTE_DENIED, "denied by policy")
        for entry in policy.denies(name)
    ]


# --- the trace: recorded only when asked for, from what the code above did -------------------


def _trace_policies(
    trace: Trace, policy_set: PolicySet, caller: str, pool: str, matched: Sequence[str]
) -> None:
    for policy in policy_set.policies:
        trace.policies.append(
            PolicyTrace(
                policy.name,
                policy.file,
                "enforce" if policy.enforce else "audit",
                policy.caller_pattern(caller),
                policy.pools.pattern_of(pool),
            )
        )
    applied = [p.name for p in trace.policies if p.applied]
    assert applied == list(matched), "the trace disagrees with the set's index"


def _tried(record: AttributeTrace, policy: CompiledPolicy, label: str, matched: str) -> EntryTrace:
    entry = EntryTrace(policy.name, label, matched, "refused")
    record.entries.append(entry)
    return entry


def _denied(policy: CompiledPolicy, label: str) -> EntryTrace:
    return EntryTrace(policy.name, label, policy.deny_patterns[label], "denied")


def _trace_audit_unasked(
    record: AttributeTrace, audit: Sequence[CompiledPolicy], name: str
) -> None:
    """Audit deny entries that match an attribute the enforcing policies deny: audit findings are
    about allowed attributes only, so these were not asked."""
    for policy in audit:
        for label in policy.denies(name):
            pattern = policy.deny_patterns[label]
            record.audit.append(EntryTrace(policy.name, label, pattern, "skipped"))


def _untried(record: AttributeTrace, policies: Sequence[CompiledPolicy], name: str) -> None:
    """Every allow entry whose name matched but that the loop did not try (or may not grant)."""
    seen = {(e.policy, e.entry) for e in record.entries}
    flag = name.casefold() in VERIFIED_FLAGS
    for policy in policies:
        exact = {id(e) for e in policy.allows_for(name)[0]}
        for entry in policy.all_allows_for(name):
            if (policy.name, entry.label) in seen:
                continue
            outcome: Outcome = "excluded" if flag and id(entry) not in exact else "skipped"
            record.entries.append(EntryTrace(policy.name, entry.label, entry.attribute, outcome))


def _trace_denied(
    record: AttributeTrace,
    policies: Sequence[CompiledPolicy],
    name: str,
    denied: Sequence[Violation],
) -> None:
    by_name = {p.name: p for p in policies}
    record.entries.extend(_denied(by_name[v.policy], v.entry) for v in denied)
    record.determining = list(record.entries)
    _untried(record, policies, name)


def _trace_accepted(
    record: AttributeTrace, policies: Sequence[CompiledPolicy], name: str, accepted: EntryTrace
) -> None:
    accepted.outcome = "accepted"
    record.allowed = True
    record.determining = [accepted]
    _untried(record, policies, name)


def _trace_refused(record: AttributeTrace, policies: Sequence[CompiledPolicy], name: str) -> None:
    record.determining = [e for e in record.entries if e.outcome == "refused"]
    _untried(record, policies, name)
