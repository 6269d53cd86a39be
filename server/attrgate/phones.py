"""Phone numbers as Cognito takes them (E.164) and where they ring: below both validation and the
SMS guard, which both need it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

NON_GEOGRAPHIC = "001"


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    country: str  # ISO 3166-1 alpha-2, or 001 for non-geographic numbers


# Validation parses a number and the SMS guard needs it again moments later: parse once. The
# cache lives in memory only and is bounded.
@lru_cache(maxsize=1024)
def parse_phone(value: str) -> Phone | None:
    """A valid E.164 number and its destination country, or None."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 != value:
        return None  # Cognito takes E.164 only: no spaces, no punctuation
    return Phone(e164, phonenumbers.region_code_for_number(number) or NON_GEOGRAPHIC)
