"""What `attrgate explain` reports for one request: the server's own answer (the offline
pipeline, Pipeline.check, as CheckUpdateUserAttributes decides) and what the engine recorded
while deciding it (its trace). Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attrgate.domain import (
    AttributeSchema,
    Decision,
    Invalid,
    PoolDescription,
    Stage,
    UpdateRequest,
    Violation,
    ViolationReason,
)
from attrgate.guards.sms import CompiledGuard
from attrgate.offline import decide, offline_pipeline
from attrgate.policy.compile import PolicySet, load_and_compile
from attrgate.policy.load import PolicyError
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.policy.trace import AttributeTrace, EntryTrace, MetadataTrace, Trace
from attrgate.schema import SCHEMA_ENTRY


@dataclass(frozen=True, slots=True)
class LoadedSet:
    policy_set: PolicySet
    lines: Mapping[str, int]  # where each policy document starts, by name


def load(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedSet | list[PolicyError]:
    """The policy set at `path` compiled as `serve` compiles it, or every error in it."""
    loaded, policy_set = load_and_compile(path, max_bytes)
    if policy_set is None:
        return loaded.errors
    lines = {  # the line of its name, as analyze and test coverage point at a policy
        p.document.metadata.name: (  # type: ignore[attr-defined]
            p.source.line_of(("metadata", "name")) if p.source is not None else p.line
        )
        for p in loaded.policies
    }
    return LoadedSet(policy_set, lines)


@dataclass(frozen=True, slots=True)
class PolicyWhy:
    """One policy of the set and why it applied to (caller, pool), or which side did not match."""

    name: str
    mode: str  # enforce | audit
    file: str
    line: int  # where the document starts; 0 when unknown
    caller_glob: str | None  # the callers glob that matched the caller; None: none did
    pool_glob: str | None  # the userPools glob that matched the pool; None: none did

    @property
    def applied(self) -> bool:
        return self.caller_glob is not None and self.pool_glob is not None


@dataclass(frozen=True, slots=True)
class AttributeExplanation:
    name: str
    value: str  # as given on the command line
    # The engine's verdict on this attribute; None when it did not evaluate it (an invalid
    # request, or no enforce-mode policy applies).
    allowed: bool | None
    entries: tuple[EntryTrace, ...]  # enforce policies' entries whose name matched
    determining: tuple[EntryTrace, ...]  # the entries that decided (empty: none matched)
    audit: tuple[EntryTrace, ...]  # audit policies' deny entries whose name matched
    # The pool's description of the attribute (None: no pool file, or the pool has none).
    schema: AttributeSchema | None
    violations: tuple[Violation, ...]  # the final decision's violations about this attribute


@dataclass(frozen=True, slots=True)
class Explanation:
    caller: str
    pool_id: str
    revision: str
    answer: Invalid | Decision  # what CheckUpdateUserAttributes answers
    policies: tuple[PolicyWhy, ...]  # every policy of the set (empty when nothing was decided)
    attributes: tuple[AttributeExplanation, ...]
    metadata: tuple[MetadataTrace, ...]  # client-metadata keys and the policy granting each
    pool_file: str | None
    pool: PoolDescription | None
    guards: tuple[CompiledGuard, ...]  # the SmsGuards that apply to the pool
    phone_written: bool  # a non-empty phone_number is written: the SMS guard's business

    @property
    def decision(self) -> Decision | None:
        return self.answer if isinstance(self.answer, Decision) else None

    @property
    def allowed(self) -> bool:
        return isinstance(self.answer, Decision) and self.answer.allowed

    @property
    def outcome(self) -> str:
        """allowed | denied | invalid"""
        if isinstance(self.answer, Invalid):
            return "invalid"
        return "allowed" if self.answer.allowed else "denied"

    @property
    def pool_stage(self) -> str:
        """checked: the pool's schema was checked against the pool file; skipped: no pool file
        (as a server with --pool-metadata-fail-open whose DescribeUserPool fails); not-reached:
        the request was invalid or the policy denied it first."""
        decision = self.decision
        if decision is None or decision.denied_by == Stage.POLICY:
            return "not-reached"
        return "checked" if self.pool is not None else "skipped"


async def explain(
    policy_set: PolicySet,
    caller: str,
    request: UpdateRequest,
    pool: PoolDescription | None = None,
    pool_file: str | None = None,
    lines: Mapping[str, int] | None = None,
) -> Explanation:
    """Decide `request` from `caller` as the server's CheckUpdateUserAttributes would, with
    `pool` as the DescribeUserPool answer for its pool (None: the pool stage is skipped), and
    gather what the engine did. `lines`: where each policy document starts, by name."""
    pools = {request.user_pool_id: pool} if pool is not None else {}
    trace = Trace()
    answer = await decide(offline_pipeline(policy_set, pools), caller, request, trace)
    violations = answer.violations if isinstance(answer, Decision) else ()
    return Explanation(
        caller=caller,
        pool_id=request.user_pool_id,
        revision=answer.policy_revision,
        answer=answer,
        policies=tuple(
            PolicyWhy(
                p.name,
                p.mode,
                p.file,
                (lines or {}).get(p.name, 0),
                p.caller_glob,
                p.pool_glob,
            )
            for p in trace.policies
        ),
        attributes=_attributes(request, trace, pool, violations),
        metadata=tuple(trace.metadata),
        pool_file=pool_file,
        pool=pool,
        guards=policy_set.guards.applicable(request.user_pool_id),
        phone_written=bool(request.value_of("phone_number")),
    )


def _attributes(
    request: UpdateRequest,
    trace: Trace,
    pool: PoolDescription | None,
    violations: tuple[Violation, ...],
) -> tuple[AttributeExplanation, ...]:
    # Names are unique once validation passed; an invalid request has no trace at all.
    traced = {record.name: record for record in trace.attributes}
    found = []
    for attribute in request.attributes:
        record: AttributeTrace | None = traced.get(attribute.name)
        found.append(
            AttributeExplanation(
                name=attribute.name,
                value=attribute.value,
                allowed=record.allowed if record is not None else None,
                entries=tuple(record.entries) if record is not None else (),
                determining=tuple(record.determining) if record is not None else (),
                audit=tuple(record.audit) if record is not None else (),
                schema=pool.attributes.get(attribute.name) if pool is not None else None,
                violations=tuple(v for v in violations if v.attribute == attribute.name),
            )
        )
    return tuple(found)


def schema_violations_of(attribute: AttributeExplanation) -> tuple[Violation, ...]:
    """The pool-schema findings of the final decision about `attribute`."""
    return tuple(v for v in attribute.violations if v.entry == SCHEMA_ENTRY)


def country_finding(decision: Decision, guard: CompiledGuard) -> str | None:
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


def uncounted(guard: CompiledGuard) -> list[str]:
    """The guard's limits and budget: counted in the servers' store, never offline."""
    found = [
        f"limits[{index}]: at most {most} SMS per {per} in {window}"
        for index, per, most, _, window in guard.limits
    ]
    if guard.budget_text:
        found.append(guard.budget_text)
    return found
