"""The policy format, attrgate/v1: the one source of validation (and of the JSON Schema).

Every model forbids unknown keys, so a typo such as `maxLenght` fails instead of being ignored, and
is strict, so a YAML scalar of the wrong type is an error rather than silently coerced.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Literal

import phonenumbers
import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

API_VERSION = "attrgate/v1"
VERIFIED_FLAGS = frozenset({"email_verified", "phone_number_verified"})

# Names are what operators grep for in decision logs: keep them plain.
PolicyName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*)$")
]
# An attribute name, or a glob over names where `*` matches any run of characters.
AttributeGlob = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A caller or user-pool glob.
Glob = Annotated[str, StringConstraints(min_length=1, max_length=512)]
AttributeFormat = Literal["email", "e164", "boolean", "integer", "url"]


# RE2 runs in linear time, but compiling costs time and memory with the size of the program a
# pattern becomes (`[^a]{1000}@`: 8,000 instructions, about 0.2 MB; 3,000 of those in a 181 KB
# file took 21 s and 680 MB). One pattern and all of a set's together are bounded.
MAX_PATTERN_PROGRAM = 100_000  # `\p{L}{1,64}` is 77,000
MAX_SET_PROGRAM = 2_000_000
# RE2 stops compiling a pattern once its program passes this much memory (about 120,000
# instructions), so one far past MAX_PATTERN_PROGRAM costs 20 ms to refuse, not seconds.
MAX_PATTERN_MEMORY = 2 << 20


class _Patterns:
    """The patterns of one policy set, each compiled once (validation and compilation share
    them), and their program sizes summed."""

    def __init__(self) -> None:
        self.compiled: dict[str, re2._Regexp] = {}
        self.size = 0


_patterns: contextvars.ContextVar[_Patterns | None] = contextvars.ContextVar(
    "attrgate_patterns", default=None
)


@contextlib.contextmanager
def pattern_scope() -> Iterator[None]:
    """Compile the patterns of one policy set (its load and its compilation) within one
    budget. A scope already open is joined."""
    if _patterns.get() is not None:
        yield
        return
    token = _patterns.set(_Patterns())
    try:
        yield
    finally:
        _patterns.reset(token)


def compile_pattern(pattern: str) -> re2._Regexp:
    """Compile with RE2: linear time on any input, so no policy pattern can stall the server.

    RE2 has no backreferences or lookaround; such patterns are rejected at load, and so are a
    pattern past MAX_PATTERN_PROGRAM instructions and a set past MAX_SET_PROGRAM. A rejected
    pattern is charged to the set too (compiling it cost as much), and once the set's budget is
    spent nothing more is compiled."""
    scope = _patterns.get()
    if scope is not None and pattern in scope.compiled:
        return scope.compiled[pattern]
    if scope is not None and scope.size >= MAX_SET_PROGRAM:
        raise ValueError(_SET_TOO_LARGE)
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        compiled = re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        if text.startswith("pattern too large"):  # past max_mem: RE2 gave up compiling
            _charge(scope, MAX_PATTERN_PROGRAM)
            raise ValueError(_too_large(f"more than {MAX_PATTERN_PROGRAM}")) from None
        raise ValueError(f"invalid regular expression (RE2 syntax): {text}") from None
    size = int(compiled.programsize)
    if size > MAX_PATTERN_PROGRAM:
        del compiled  # its memory goes now, not with the error's traceback
        _charge(scope, size)
        raise ValueError(_too_large(str(size)))
    if scope is not None:
        if scope.size + size > MAX_SET_PROGRAM:
            _charge(scope, size)
            raise ValueError(_SET_TOO_LARGE)
        scope.size += size
        scope.compiled[pattern] = compiled
    return compiled


_SET_TOO_LARGE = (
    f"the set's patterns compile to more than {MAX_SET_PROGRAM} RE2 instructions together: "
    "share patterns or simplify them"
)


def _too_large(instructions: str) -> str:
    return (
        f"pattern too large: it compiles to {instructions} RE2 instructions (at most "
        f"{MAX_PATTERN_PROGRAM}); bound its repetitions"
    )


def _charge(scope: _Patterns | None, size: int) -> None:
    if scope is not None:
        scope.size += size


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AllowEntry(StrictModel):
    attribute: AttributeGlob
    max_length: Annotated[int, Field(ge=0, le=2048)] | None = Field(None, alias="maxLength")
    min_length: Annotated[int, Field(ge=0, le=2048)] | None = Field(None, alias="minLength")
    enum: Annotated[list[str], Field(min_length=1)] | None = None
    format: AttributeFormat | None = None
    pattern: str | None = None
    allow_empty: bool = Field(False, alias="allowEmpty")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value


class DenyEntry(StrictModel):
    attribute: AttributeGlob


class ClientMetadataRules(StrictModel):
    allow_keys: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, alias="allowKeys"
    )


class AttributePolicySpec(StrictModel):
    mode: Literal["enforce", "audit"] = "enforce"
    callers: Annotated[list[Glob], Field(min_length=1)]
    user_pools: Annotated[list[Glob], Field(min_length=1)] = Field(alias="userPools")
    allow: list[AllowEntry] = Field(default_factory=list)
    deny: list[DenyEntry] = Field(default_factory=list)
    client_metadata: ClientMetadataRules = Field(
        default_factory=ClientMetadataRules, alias="clientMetadata"
    )


class Metadata(StrictModel):
    name: PolicyName
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class AttributePolicy(StrictModel):
    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    kind: Literal["AttributePolicy"]
    metadata: Metadata
    spec: AttributePolicySpec


# --- SmsGuard ---------------------------------------------------------------------------------

# ISO 3166-1 alpha-2, or 001 for non-geographic numbers (phonenumbers' region for +800 etc.).
COUNTRY_CODES = frozenset(phonenumbers.SUPPORTED_REGIONS) | {"001"}
MICROS = 1_000_000
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """`90s`, `15m`, `24h`, `30d` in milliseconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 24h or 30d")
    return int(found[1]) * _UNIT_MS[found[2]]


def to_micros(amount: Decimal, what: str) -> int:
    """Money as integer micro-units, exactly, or a ValueError."""
    micros = amount * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"{what} has more than 6 decimal places")
    return int(micros)


def _country(value: str) -> str:
    if value not in COUNTRY_CODES:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (or 001)")
    return value


def _money(value: object) -> object:
    # YAML gives Decimal for 0.10 and int for 50; both are exact. Floats never reach here.
    return Decimal(value) if isinstance(value, int) and not isinstance(value, bool) else value


Country = Annotated[str, AfterValidator(_country)]
Duration = Annotated[str, AfterValidator(lambda v: duration_ms(v) and v)]
# At most 10^12 units: micro-units then stay far below 2^63, exact in every store.
Money = Annotated[Decimal, BeforeValidator(_money), Field(ge=0, le=Decimal(10**12), max_digits=19)]


class SmsCountries(StrictModel):
    allow: list[Country] | None = None
    deny: list[Country] | None = None

    @model_validator(mode="after")
    def _one_list(self) -> SmsCountries:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of allow or deny")
        return self


class SmsLimit(StrictModel):
    per: Literal["phone_number", "user", "caller", "user_pool", "country", "global"]
    max: Annotated[int, Field(ge=1, le=10_000_000)]
    window: Duration


class SmsBudget(StrictModel):
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    amount: Money
    window: Annotated[str, AfterValidator(lambda v: v if v == "month" else duration_ms(v) and v)]
    price_per_message: dict[str, Money] = Field(alias="pricePerMessage")

    @field_validator("amount")
    @classmethod
    def _exact_amount(cls, value: Decimal) -> Decimal:
        to_micros(value, "amount")
        return value

    @field_validator("price_per_message")
    @classmethod
    def _exact_prices(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        if "default" not in value:
            raise ValueError("pricePerMessage needs a `default` price for other countries")
        for key, price in value.items():
            if key != "default":
                _country(key)
            to_micros(price, key)
        return value


class SmsGuardSpec(StrictModel):
    mode: Literal["enforce", "audit"] = "enforce"
    user_pools: Annotated[list[Glob], Field(min_length=1)] = Field(alias="userPools")
    countries: SmsCountries | None = None
    limits: list[SmsLimit] = Field(default_factory=list)
    budget: SmsBudget | None = None


class SmsGuard(StrictModel):
    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    kind: Literal["SmsGuard"]
    metadata: Metadata
    spec: SmsGuardSpec


# Every kind a policy document may have.
KINDS: dict[str, type[BaseModel]] = {"AttributePolicy": AttributePolicy, "SmsGuard": SmsGuard}
