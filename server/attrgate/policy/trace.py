"""What the engine did for one request, recorded on request (`evaluate(..., trace=Trace())`).

`attrgate explain` prints it and `attrgate test` counts coverage from it: both read what the
engine did, never a second implementation of the rules. The serving path passes no trace and
pays one `is None` test per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What an entry did for an attribute:
# accepted  an allow entry whose constraints all passed: it decided the attribute (allowed)
# refused   an allow entry whose constraints failed: it decided the attribute (denied) unless
#           another entry accepted
# denied    a deny entry that matched: it decided the attribute (denied)
# skipped   an allow entry whose name matched but was not tried (an earlier one accepted, or a
#           deny entry decided first); an audit policy's deny entry matching an attribute the
#           enforcing policies deny (audit findings are about allowed attributes only)
# excluded  a glob allow entry that matched a verified flag: only an exact entry grants one
Outcome = Literal["accepted", "refused", "denied", "skipped", "excluded"]


@dataclass(slots=True)
class ConstraintResult:
    name: str  # allowEmpty, maxLength, minLength, enum, format, pattern, (none)
    passed: bool
    why: str  # never the value itself


@dataclass(slots=True)
class EntryTrace:
    policy: str
    entry: str  # allow[0], deny[1]
    matched: str  # the entry's attribute name or glob that matched the attribute's name
    outcome: Outcome
    constraints: list[ConstraintResult] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return self.outcome in ("accepted", "refused", "denied")


@dataclass(slots=True)
class AttributeTrace:
    name: str
    entries: list[EntryTrace] = field(default_factory=list)
    allowed: bool = False
    # The entries that decided: the one allow entry that accepted, or every deny entry that
    # matched, or every allow entry that refused. Empty: no entry matched the name.
    determining: list[EntryTrace] = field(default_factory=list)
    # Deny entries of audit policies that matched: denied (a would-deny finding) or skipped.
    audit: list[EntryTrace] = field(default_factory=list)


@dataclass(slots=True)
class PolicyTrace:
    name: str
    file: str
    mode: str  # enforce | audit
    caller_glob: str | None  # the callers entry that matched the caller, None: none did
    pool_glob: str | None  # the userPools entry that matched the pool, None: none did

    @property
    def applied(self) -> bool:
        return self.caller_glob is not None and self.pool_glob is not None


@dataclass(slots=True)
class MetadataTrace:
    key: str
    policy: str | None  # the first applicable enforce policy whose allowKeys has it


@dataclass(slots=True)
class Trace:
    policies: list[PolicyTrace] = field(default_factory=list)
    attributes: list[AttributeTrace] = field(default_factory=list)
    metadata: list[MetadataTrace] = field(default_factory=list)
    # False: leave `policies` empty. Which policies applied and why costs a glob match per policy
    # of the set, and test coverage only needs what decided (10,000 cases: ~0.3 s less).
    record_policies: bool = True

    def attribute(self, name: str) -> AttributeTrace:
        found = AttributeTrace(name)
        self.attributes.append(found)
        return found
