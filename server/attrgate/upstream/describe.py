"""DescribeUserPool's answer as a plain PoolDescription."""

from __future__ import annotations

from typing import Any

from attrgate.domain import AttributeSchema, PoolDescription

STANDARD_ATTRIBUTES = (
    "address",
    "birthdate",
    "email",
    "email_verified",
    "family_name",
    "gender",
    "given_name",
    "locale",
    "middle_name",
    "name",
    "nickname",
    "phone_number",
    "phone_number_verified",
    "picture",
    "preferred_username",
    "profile",
    "updated_at",
    "website",
    "zoneinfo",
)
# Cognito's own types for the standard attributes it may leave out of SchemaAttributes.
_STANDARD_TYPES = {"email_verified": "Boolean", "phone_number_verified": "Boolean"}
_STANDARD_NUMBERS = {"updated_at"}


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def pool_description(pool_id: str, pool: dict[str, Any]) -> PoolDescription:
    """DescribeUserPool's answer as a plain value. Standard attributes always exist: real
    Cognito lists them with their settings, emulators may not, so the list fills the gaps."""
    attributes: dict[str, AttributeSchema] = {
        name: AttributeSchema(
            name,
            data_type="Number"
            if name in _STANDARD_NUMBERS
            else _STANDARD_TYPES.get(name, "String"),
        )
        for name in STANDARD_ATTRIBUTES
    }
    for raw in pool.get("SchemaAttributes") or []:
        name = str(raw.get("Name", ""))
        if not name:
            continue
        strings = raw.get("StringAttributeConstraints") or {}
        numbers = raw.get("NumberAttributeConstraints") or {}
        attributes[name] = AttributeSchema(
            name,
            data_type=str(raw.get("AttributeDataType", "String")),
            mutable=bool(raw.get("Mutable", True)),
            min_length=_int(strings.get("MinLength")) if "MinLength" in strings else None,
            max_length=_int(strings.get("MaxLength")) if "MaxLength" in strings else None,
            min_value=_int(numbers.get("MinValue")) if "MinValue" in numbers else None,
            max_value=_int(numbers.get("MaxValue")) if "MaxValue" in numbers else None,
        )
    settings = pool.get("UserAttributeUpdateSettings") or {}
    return PoolDescription(
        pool_id=pool_id,
        attributes=attributes,
        auto_verified=frozenset(pool.get("AutoVerifiedAttributes") or ()),
        verify_before_update=frozenset(
            settings.get("AttributesRequireVerificationBeforeUpdate") or ()
        ),
    )
