"""The policy engine: pure. A compiled policy set, a caller and a request in; a Verdict out.

No I/O, no clock, no globals, so decisions are cheap and testable by the thousand.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrgate.domain import Attribute, UpdateRequest, Verdict, Violation, ViolationReason
from attrgate.policy.compile import CompiledPolicy, PolicySet


def evaluate(policy_set: PolicySet, caller: str, request: UpdateRequest) -> Verdict:
    applicable = policy_set.applicable(caller, request.user_pool_id)
    matched, enforce, audit = applicable.names, applicable.enforce, applicable.audit
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
        findings = attribute_findings(enforce, attribute)
        if findings:
            violations.extend(findings)
        else:
            # Audit policies only tighten: making one enforcing adds allows (which cannot deny)
            # and denies, so what it would deny among allowed attributes is what its deny
            # entries match.
            for policy in audit:
                would_deny.extend(_denials(policy, attribute.name))
    for key in request.client_metadata:
        if not any(key in p.metadata_keys for p in enforce):
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


def attribute_findings(policies: Sequence[CompiledPolicy], attribute: Attribute) -> list[Violation]:
    """Why `policies` (all enforcing) deny `attribute`; empty when they allow it.

    A matching deny entry in any policy wins. Otherwise allows add up: one allow entry that
    matches the name and accepts the value is enough.
    """
    name = attribute.name
    denied = [v for p in policies for v in _denials(p, name)]
    if denied:
        return denied
    failures: list[Violation] = []
    glob_hit_on_flag = False
    for policy in policies:
        entries, flag_glob = policy.allows_for(name)
        glob_hit_on_flag = glob_hit_on_flag or flag_glob
        for entry in entries:
            problems = entry.check(attribute.value)
            if not problems:
                return []
            failures.extend(
                Violation(name, policy.name, entry.label, problem.reason, problem.message)
                for problem in problems
            )
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
