"""Cognito's own input limits, which botocore does not check client-side.

Runs before any policy. Every finding names the field; none echoes a value.
"""

from __future__ import annotations

import regex

from attrgate.domain import FieldViolation, UpdateRequest
from attrgate.phones import parse_phone

POOL_ID_MAX = 55
USERNAME_MAX = 128
ATTRIBUTE_NAME_MAX = 32
ATTRIBUTE_VALUE_MAX = 2048
# Bounds on what one request may carry. They keep a denial's details, which name every offending
# field, inside the 8 KiB trailer gRPC clients accept (see api.errors.TRAILER_BUDGET); no real
# update touches 50 attributes at once or passes 20 metadata keys to a Lambda trigger.
ATTRIBUTES_MAX = 50
METADATA_ENTRIES_MAX = 20
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 2048


class _Visible:
    """One of Cognito's `[\\p{L}\\p{M}\\p{S}\\p{N}\\p{P}]+` patterns (`spaces`: white space
    allowed too), with a shortcut: every printable ASCII character but the space is a letter,
    digit, punctuation or symbol, so printable ASCII (without a space, unless allowed) matches
    without running the regex (about 1 µs each, four or more a request)."""

    def __init__(self, pattern: str, spaces: bool = False) -> None:
        self._regex = regex.compile(pattern)
        self._spaces = spaces

    def fullmatch(self, value: str) -> bool:
        printable = value and value.isascii() and value.isprintable()
        if printable and (self._spaces or " " not in value):
            return True
        return self._regex.fullmatch(value) is not None


# Cognito's patterns are Java regexes, where \w is ASCII.
_POOL_ID = regex.compile(r"[\w-]+_[0-9a-zA-Z]+", regex.ASCII)
_USERNAME = _Visible(r"[\p{L}\p{M}\p{S}\p{N}\p{P}]+")
_ATTRIBUTE_NAME = _Visible(r"[\p{L}\p{M}\p{S}\p{N}\p{P}\t\n\r ]+", spaces=True)
_METADATA_KEY = _Visible(r"[\p{L}\p{M}\p{S}\p{N}\p{P}]+")

# Attributes Cognito manages itself: writing them is never meaningful and never allowed.
RESERVED_NAMES = frozenset({"sub", "identities"})
RESERVED_PREFIX = "cognito:"


def is_reserved(name: str) -> bool:
    folded = name.casefold()
    return folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIX)


def _check_string(
    field: str, value: str, maximum: int, pattern: regex.Pattern[str] | _Visible, what: str
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
            if attribute.name != attribute.name.strip():
                # Cognito's pattern admits white space, but no real attribute name starts or
                # ends with it; " sub" or "custom:role\t" only serve to dodge exact rules.
                found.append(
                    FieldViolation(
                        name_field,
                        "BAD_FORMAT",
                        "attribute name starts or ends with white space",
                    )
                )
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
            phone = attribute.name == "phone_number" and attribute.value
            if phone and parse_phone(attribute.value) is None:
                found.append(
                    FieldViolation(
                        f"user_attributes[{index}].value",
                        "INVALID_PHONE_NUMBER",
                        "phone_number is not a valid number in E.164 form (+14155550100)",
                    )
                )
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
