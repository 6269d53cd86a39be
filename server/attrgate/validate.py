"""Cognito's own input limits, which botocore does not check client-side.

Runs before any policy. Every finding names the field; none echoes a value.
"""

from __future__ import annotations

import regex

from attrgate.domain import FieldViolation, UpdateRequest

POOL_ID_MAX = 55
USERNAME_MAX = 128
ATTRIBUTE_NAME_MAX = 32
ATTRIBUTE_VALUE_MAX = 2048
# Cognito pools have at most 50 custom attributes beside ~20 standard ones: 100 bounds any real
# request and the work one request can cost.
ATTRIBUTES_MAX = 100
METADATA_ENTRIES_MAX = 50
METADATA_KEY_MAX = 128
METADATA_VALUE_MAX = 2048

_POOL_ID = regex.compile(r"[\w-]+_[0-9a-zA-Z]+")
_USERNAME = regex.compile(r"[\p{L}\p{M}\p{S}\p{N}\p{P}]+")
_ATTRIBUTE_NAME = regex.compile(r"[\p{L}\p{M}\p{S}\p{N}\p{P}\t\n\r ]+")
_METADATA_KEY = regex.compile(r"[\p{L}\p{M}\p{S}\p{N}\p{P}]+")

# Attributes Cognito manages itself: writing them is never meaningful and never allowed.
RESERVED_NAMES = frozenset({"sub", "identities"})
RESERVED_PREFIX = "cognito:"


def is_reserved(name: str) -> bool:
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX)


def _check_string(
    field: str, value: str, maximum: int, pattern: regex.Pattern[str], what: str
) -> FieldViolation | None:
    if not value:
        return FieldViolation(field, "REQUIRED", f"{what} is required")
    if len(value) > maximum:
        return FieldViolation(field, "TOO_LONG", f"{what} is longer than {maximum} characters")
    if not pattern.fullmatch(value):
        return FieldViolation(field, "BAD_FORMAT", f"{what} contains characters Cognito rejects")
    return None


def validate_request(request: UpdateRequest) -> tuple[FieldViolation, ...]:
    """Every way `request` breaks Cognito's limits; empty when it is well-formed."""
    found: list[FieldViolation | None] = [
        _check_string("user_pool_id", request.user_pool_id, POOL_ID_MAX, _POOL_ID, "user pool id"),
        _check_string("username", request.username, USERNAME_MAX, _USERNAME, "username"),
    ]
    attributes = request.attributes
    if not attributes:
        found.append(
            FieldViolation("user_attributes", "REQUIRED", "at least one attribute is required")
        )
    elif len(attributes) > ATTRIBUTES_MAX:
        found.append(
            FieldViolation(
                "user_attributes",
                "TOO_MANY",
                f"more than {ATTRIBUTES_MAX} attributes in one request",
            )
        )
    else:
        seen: set[str] = set()
        for index, attribute in enumerate(attributes):
            name_field = f"user_attributes[{index}].name"
            bad_name = _check_string(
                name_field, attribute.name, ATTRIBUTE_NAME_MAX, _ATTRIBUTE_NAME, "attribute name"
            )
            if bad_name is not None:
                # The name itself is malformed: refer to it by position only.
                found.append(bad_name)
                continue
            if is_reserved(attribute.name):
                found.append(
                    FieldViolation(
                        name_field,
                        "RESERVED_ATTRIBUTE",
                        f"attribute {attribute.name!r} is managed by Cognito and cannot be written",
                    )
                )
            if attribute.name in seen:
                found.append(
                    FieldViolation(
                        name_field, "DUPLICATE", f"attribute {attribute.name!r} is named twice"
                    )
                )
            seen.add(attribute.name)
            if len(attribute.value) > ATTRIBUTE_VALUE_MAX:
                found.append(
                    FieldViolation(
                        f"user_attributes[{index}].value",
                        "TOO_LONG",
                        f"value of attribute {attribute.name!r} is longer than "
                        f"{ATTRIBUTE_VALUE_MAX} characters",
                    )
                )
    found.extend(_validate_metadata(request))
    return tuple(v for v in found if v is not None)


def _validate_metadata(request: UpdateRequest) -> list[FieldViolation]:
    metadata = request.client_metadata
    if len(metadata) > METADATA_ENTRIES_MAX:
        return [
            FieldViolation(
                "client_metadata",
                "TOO_MANY",
                f"more than {METADATA_ENTRIES_MAX} client metadata entries",
            )
        ]
    found: list[FieldViolation] = []
    for key, value in metadata.items():
        bad_key = _check_string(
            "client_metadata", key, METADATA_KEY_MAX, _METADATA_KEY, "client metadata key"
        )
        if bad_key is not None:
            found.append(bad_key)
            continue
        if len(value) > METADATA_VALUE_MAX:
            found.append(
                FieldViolation(
                    f"client_metadata.{key}",
                    "TOO_LONG",
                    f"client metadata value of {key!r} is longer than {METADATA_VALUE_MAX} "
                    "characters",
                )
            )
    return found
