"""The value constraints of an allow entry, ready to run: lengths, enum, format, pattern."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from attrgate.domain import ViolationReason
from attrgate.policy.model import AllowEntry
from attrgate.policy.patterns import compile_pattern
from attrgate.policy.trace import ConstraintResult

# ASCII addresses only: RFC 5322 atoms in the local part and LDH labels in the domain, so no
# control, bidi or zero-width character makes a look-alike address.
_EMAIL = re.compile(
    r"(?=.{1,254}\Z)(?=[^@]{1,64}@)"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}",
    re.ASCII,
)
_E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_INTEGER = re.compile(r"[-+]?[0-9]+", re.ASCII)


def _is_url(value: str) -> bool:
    # urlsplit silently drops tabs and newlines: refuse anything not plainly printable first.
    if not (value.isascii() and value.isprintable()) or " " in value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "email": lambda v: _EMAIL.fullmatch(v) is not None,
    "e164": lambda v: _E164.fullmatch(v) is not None,
    "boolean": lambda v: v in ("true", "false"),
    "integer": lambda v: _INTEGER.fullmatch(v) is not None,
    "url": _is_url,
}


@dataclass(frozen=True, slots=True)
class Failure:
    reason: ViolationReason
    message: str


class CompiledAllow:
    """One allow entry with its constraints ready to run."""

    __slots__ = (
        "allow_empty",
        "attribute",
        "enum",
        "format",
        "label",
        "max_length",
        "min_length",
        "pattern",
        "pattern_text",
    )

    def __init__(self, entry: AllowEntry, index: int) -> None:
        self.label = f"allow[{index}]"
        self.attribute = entry.attribute  # the name or glob it matches
        self.allow_empty = entry.allow_empty
        self.max_length = entry.max_length
        self.min_length = entry.min_length
        self.enum = frozenset(entry.enum) if entry.enum is not None else None
        self.format = entry.format
        self.pattern_text = entry.pattern
        self.pattern = compile_pattern(entry.pattern) if entry.pattern is not None else None

    def check(self, value: str, record: list[ConstraintResult] | None = None) -> list[Failure]:
        """Every constraint `value` fails; empty when the entry accepts it. `record` (a trace)
        gets every constraint tried, passed or not; without one, no message is built for a
        constraint that passes (the request path)."""
        if not value:
            if self.allow_empty:
                if record is not None:
                    why = "an empty value, and the entry sets allowEmpty"
                    record.append(ConstraintResult("allowEmpty", True, why))
                return []
            failure = Failure(
                ViolationReason.EMPTY_VALUE_NOT_ALLOWED,
                "an empty value deletes the attribute; the entry does not set allowEmpty",
            )
            _failed(record, failure)
            return [failure]
        failures: list[Failure] = []
        if self.max_length is not None:
            if len(value) > self.max_length:
                why = f"longer than maxLength {self.max_length}"
                _fail(failures, record, Failure(ViolationReason.MAX_LENGTH, why))
            elif record is not None:
                record.append(
                    ConstraintResult(
                        "maxLength", True, f"{len(value)} characters, at most {self.max_length}"
                    )
                )
        if self.min_length is not None:
            if len(value) < self.min_length:
                why = f"shorter than minLength {self.min_length}"
                _fail(failures, record, Failure(ViolationReason.MIN_LENGTH, why))
            elif record is not None:
                record.append(
                    ConstraintResult(
                        "minLength", True, f"{len(value)} characters, at least {self.min_length}"
                    )
                )
        if self.enum is not None:
            if value not in self.enum:
                why = "not one of the allowed values"
                _fail(failures, record, Failure(ViolationReason.ENUM, why))
            elif record is not None:
                record.append(ConstraintResult("enum", True, "one of the allowed values"))
        if self.format is not None:
            if not FORMAT_CHECKS[self.format](value):
                why = f"not a valid {self.format}"
                _fail(failures, record, Failure(ViolationReason.FORMAT, why))
            elif record is not None:
                record.append(ConstraintResult("format", True, f"a valid {self.format}"))
        if self.pattern is not None:
            if self.pattern.fullmatch(value) is None:
                why = f"does not match {self.pattern_text!r}"
                _fail(failures, record, Failure(ViolationReason.PATTERN, why))
            elif record is not None:
                record.append(ConstraintResult("pattern", True, f"matches {self.pattern_text!r}"))
        if record is not None and not record:
            record.append(ConstraintResult("(none)", True, "the entry sets no constraint"))
        return failures


# The constraint each failure reason belongs to, as the policy spells it.
CONSTRAINT_OF = {
    ViolationReason.EMPTY_VALUE_NOT_ALLOWED: "allowEmpty",
    ViolationReason.MAX_LENGTH: "maxLength",
    ViolationReason.MIN_LENGTH: "minLength",
    ViolationReason.ENUM: "enum",
    ViolationReason.FORMAT: "format",
    ViolationReason.PATTERN: "pattern",
}


def _failed_result(failure: Failure) -> ConstraintResult:
    return ConstraintResult(CONSTRAINT_OF[failure.reason], False, failure.message)


def _failed(record: list[ConstraintResult] | None, failure: Failure) -> None:
    if record is not None:
        record.append(_failed_result(failure))


def _fail(failures: list[Failure], record: list[ConstraintResult] | None, failure: Failure) -> None:
    """A failed constraint, recorded (when tracing) where it was tried: the trace lists the
    constraints in the order the entry runs them, passed or not."""
    failures.append(failure)
    _failed(record, failure)
