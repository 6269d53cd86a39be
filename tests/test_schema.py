"""Checks against the user pool's schema (pure)."""

from __future__ import annotations

import pytest

from attrgate.domain import Attribute, AttributeSchema, PoolDescription, UpdateRequest
from attrgate.schema import pending_verification, schema_violations

POOL = PoolDescription(
    "us-east-1_P",
    {
        "email": AttributeSchema("email"),
        "phone_number": AttributeSchema("phone_number"),
        "email_verified": AttributeSchema("email_verified", "Boolean"),
        "custom:code": AttributeSchema("custom:code", min_length=3, max_length=5),
        "custom:when": AttributeSchema("custom:when", "DateTime"),
        "custom:n": AttributeSchema("custom:n", "Number", min_value=-5, max_value=5),
        "custom:flag": AttributeSchema("custom:flag", "Boolean"),
        "custom:fixed": AttributeSchema("custom:fixed", mutable=False),
    },
    frozenset({"email"}),
    frozenset({"email", "phone_number"}),
)


def request(*pairs: tuple[str, str]) -> UpdateRequest:
    return UpdateRequest("us-east-1_P", "ada", tuple(Attribute(n, v) for n, v in pairs))


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("custom:code", "ab", "SCHEMA_CONSTRAINT"),
        ("custom:code", "abcdef", "SCHEMA_CONSTRAINT"),
        ("custom:code", "abc", None),
        ("custom:when", "2026-12-01T10:00:00+00:00", None),
        ("custom:when", "1796177877", None),
        ("custom:when", "next tuesday", "SCHEMA_TYPE"),
        ("custom:n", "-5", None),
        ("custom:n", "6", "SCHEMA_CONSTRAINT"),
        ("custom:n", "1.5", "SCHEMA_TYPE"),
        ("custom:flag", "true", None),
        ("custom:flag", "yes", "SCHEMA_TYPE"),
        ("custom:fixed", "x", "SCHEMA_IMMUTABLE"),
        ("custom:nope", "x", "SCHEMA_UNKNOWN_ATTRIBUTE"),
        ("custom:code", "", None),  # an empty value deletes: no type to check
    ],
)
def test_schema(name: str, value: str, reason: str | None) -> None:
    found = schema_violations(POOL, request((name, value)))
    assert [v.reason for v in found] == ([reason] if reason else [])
    assert all(value not in v.message for v in found if value)


def test_pending_verification_for_email_and_phone() -> None:
    assert pending_verification(
        POOL, request(("email", "a@b.co"), ("phone_number", "+14155550100"))
    ) == ("email", "phone_number")
    assert (
        pending_verification(POOL, request(("email", "a@b.co"), ("email_verified", "true"))) == ()
    )
    assert pending_verification(POOL, request(("email", ""))) == ()
