"""Checks against the user pool's own schema, which emulators never enforce: unknown attributes,
immutable custom attributes, types and String/Number constraints. Pure: description in,
violations out; values never appear in messages."""

from __future__ import annotations

import datetime
import re

from attrgate.domain import (
    AttributeSchema,
    PoolDescription,
    UpdateRequest,
    Violation,
    ViolationReason,
)

SCHEMA_ENTRY = "userPool.schema"
DEFAULT_MAX_LENGTH = 2048
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


def schema_violations(pool: PoolDescription, request: UpdateRequest) -> tuple[Violation, ...]:
    found: list[Violation] = []
    for attribute in request.attributes:
        schema = pool.attributes.get(attribute.name)
        if schema is None:
            found.append(
                _violation(
                    attribute.name,
                    ViolationReason.SCHEMA_UNKNOWN_ATTRIBUTE,
                    "the user pool has no such attribute",
                )
            )
            continue
        if not schema.mutable:
            found.append(
                _violation(
                    attribute.name,
                    ViolationReason.SCHEMA_IMMUTABLE,
                    "the attribute is immutable in this user pool",
                )
            )
            continue
        if attribute.value:  # an empty value deletes the attribute: no type to check
            problem = _type_problem(schema, attribute.value)
            if problem is not None:
                found.append(_violation(attribute.name, *problem))
    return tuple(found)


def pending_verification(pool: PoolDescription, request: UpdateRequest) -> tuple[str, ...]:
    """Attributes Cognito will hold back until the user verifies them: listed in
    AttributesRequireVerificationBeforeUpdate, written non-empty, and their verified flag not
    set to true in the same request."""
    return tuple(
        name
        for name in ("email", "phone_number")
        if name in pool.verify_before_update and request.writes_unverified(name)
    )


def _violation(name: str, reason: ViolationReason, message: str) -> Violation:
    return Violation(name, "", SCHEMA_ENTRY, reason, message)


def _type_problem(schema: AttributeSchema, value: str) -> tuple[ViolationReason, str] | None:
    kind = schema.data_type
    if kind == "String":
        longest = schema.max_length if schema.max_length is not None else DEFAULT_MAX_LENGTH
        if len(value) > longest:
            return ViolationReason.SCHEMA_CONSTRAINT, f"longer than the pool's MaxLength {longest}"
        if schema.min_length is not None and len(value) < schema.min_length:
            return (
                ViolationReason.SCHEMA_CONSTRAINT,
                f"shorter than the pool's MinLength {schema.min_length}",
            )
        return None
    if kind == "Number":
        if _INTEGER.fullmatch(value) is None:
            return ViolationReason.SCHEMA_TYPE, "not a Number"
        number = int(value)
        if schema.min_value is not None and number < schema.min_value:
            return (
                ViolationReason.SCHEMA_CONSTRAINT,
                f"below the pool's MinValue {schema.min_value}",
            )
        if schema.max_value is not None and number > schema.max_value:
            return (
                ViolationReason.SCHEMA_CONSTRAINT,
                f"above the pool's MaxValue {schema.max_value}",
            )
        return None
    if kind == "Boolean":
        if value not in ("true", "false"):
            return ViolationReason.SCHEMA_TYPE, "not a Boolean (true or false)"
        return None
    if kind == "DateTime":
        if _INTEGER.fullmatch(value) is not None:
            return None
        try:
            datetime.datetime.fromisoformat(value)
        except ValueError:
            return ViolationReason.SCHEMA_TYPE, "not a DateTime (ISO 8601 or epoch seconds)"
        return None
    return None
