"""Findings: a stable code, a severity, where, one line of explanation, and (where the finding
claims a behaviour) the counterexample request that shows it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from attrgate.analyze.counterexample import Claim, Counterexample


class Code(enum.StrEnum):
    # Entries and policies: exact for names and globs, certain-only for patterns.
    ALLOW_ALWAYS_DENIED = "ALLOW_ALWAYS_DENIED"
    ALLOW_SHADOWED = "ALLOW_SHADOWED"
    ALLOW_UNREACHABLE_NAME = "ALLOW_UNREACHABLE_NAME"
    VERIFIED_FLAG_BY_GLOB = "VERIFIED_FLAG_BY_GLOB"
    POLICY_UNREACHABLE = "POLICY_UNREACHABLE"
    POOL_GLOB_UNREACHABLE = "POOL_GLOB_UNREACHABLE"
    AUDIT_EQUALS_ENFORCE = "AUDIT_EQUALS_ENFORCE"
    DENY_UNREACHABLE_NAME = "DENY_UNREACHABLE_NAME"
    # Against a user pool's schema (--pool-file).
    POOL_UNKNOWN_ATTRIBUTE = "POOL_UNKNOWN_ATTRIBUTE"
    POOL_IMMUTABLE_ATTRIBUTE = "POOL_IMMUTABLE_ATTRIBUTE"
    POOL_VALUE_REFUSED = "POOL_VALUE_REFUSED"


class Severity(enum.StrEnum):
    WARNING = "warning"  # the policy does not do what it reads as doing
    INFO = "info"  # redundant: removing it changes nothing


SEVERITY = {code: Severity.WARNING for code in Code} | {Code.ALLOW_SHADOWED: Severity.INFO}


@dataclass(frozen=True)
class Finding:
    code: Code
    file: str
    line: int
    message: str
    counterexample: Counterexample | None = None
    # What the counterexample shows, checked against the pipeline's decision before printing.
    claim: Claim | None = None

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.code]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code.value,
            "severity": self.severity.value,
            "file": self.file,
            "line": self.line,
            "message": self.message,
        }
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample.as_json()
        return out
