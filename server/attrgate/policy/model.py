"""The policy format, attrgate/v1: the one source of validation (and of the JSON Schema).

Every model forbids unknown keys, so a typo such as `maxLenght` fails instead of being ignored, and
is strict, so a YAML scalar of the wrong type is an error rather than silently coerced.

The JSON Schema (`attrgate schema`, policy/jsonschema.py) is generated from these models: class
and field docstrings become its descriptions (editors show them on hover), and what a validator
checks that pydantic cannot export (country codes, durations, money, "one of allow or deny") is
declared beside it with WithJsonSchema or json_schema_extra. The agreement test
(tests/test_schema_agreement.py) holds both to the same verdicts.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from typing_extensions import TypeAliasType

from attrgate.policy.patterns import compile_pattern

API_VERSION = "attrgate/v1"
VERIFIED_FLAGS = frozenset({"email_verified", "phone_number_verified"})

# Names are what operators grep for in decision logs: keep them plain.
PolicyName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*)$"),
    # patternErrorMessage and errorMessage: what yaml-language-server (VS Code's YAML extension)
    # says instead of its generic text; other JSON Schema tools ignore them.
    Field(
        json_schema_extra={
            "patternErrorMessage": "letters, digits, `.`, `_` and `-`, starting with a letter or "
            "a digit"
        }
    ),
]
# An attribute name, or a glob over names where `*` matches any run of characters.
AttributeGlob = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A caller or user-pool glob.
Glob = Annotated[str, StringConstraints(min_length=1, max_length=512)]
AttributeFormat = Literal["email", "e164", "boolean", "integer", "url"]


class StrictModel(BaseModel):
    # Docstrings under fields are their descriptions in the JSON Schema.
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )


class AllowEntry(StrictModel):
    """Lets the policy's callers write the attributes this entry names, with values that pass
    every constraint given. Allows add up across applicable policies; denies win."""

    attribute: AttributeGlob
    """An attribute name (`given_name`, `custom:tier`), or a glob where `*` matches any run of
    characters. Verified flags are granted only by their exact name, never by a glob."""
    max_length: Annotated[int, Field(ge=0, le=2048)] | None = Field(None, alias="maxLength")
    """At most this many characters."""
    min_length: Annotated[int, Field(ge=0, le=2048)] | None = Field(None, alias="minLength")
    """At least this many characters (an empty value is governed by allowEmpty)."""
    enum: Annotated[list[str], Field(min_length=1)] | None = None
    """The only values allowed (strings: quote `"true"` or `"1"`)."""
    format: AttributeFormat | None = None
    """email (ASCII addresses), e164 (+ and up to 15 digits), boolean (`true`/`false`),
    integer, or url (http or https)."""
    pattern: str | None = None
    """A regular expression in RE2 syntax (no backreferences or lookaround) that must match the
    whole value."""
    allow_empty: bool = Field(False, alias="allowEmpty")
    """Accept an empty value, which deletes the attribute in Cognito."""

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value


class DenyEntry(StrictModel):
    """Denies writing the attributes this entry names, whatever any allow entry says."""

    attribute: AttributeGlob
    """An attribute name or a glob (`*` matches any run of characters), matched
    case-insensitively: `custom:role` also stops `custom:Role`."""


class ClientMetadataRules(StrictModel):
    """Client metadata (passed on to Lambda triggers) the policy's callers may send."""

    allow_keys: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, alias="allowKeys"
    )
    """Keys a request may carry; a request with any other key is denied, not trimmed."""


class AttributePolicySpec(StrictModel):
    """Who the policy applies to, and what it allows and denies them."""

    mode: Literal["enforce", "audit"] = "enforce"
    """enforce decides; audit only reports what it would deny (`wouldDeny`), never grants."""
    callers: Annotated[list[Glob], Field(min_length=1)]
    """Caller names or globs (`*` = any run of characters): a SPIFFE id, a certificate name or,
    on an insecure listener, the caller header."""
    user_pools: Annotated[list[Glob], Field(min_length=1)] = Field(alias="userPools")
    """User pool ids or globs, such as `us-east-1_*`."""
    allow: list[AllowEntry] = Field(default_factory=list)
    """Attributes the callers may write, and with which values."""
    deny: list[DenyEntry] = Field(default_factory=list)
    """Attributes the callers may never write; a deny wins over every allow."""
    client_metadata: ClientMetadataRules = Field(
        default_factory=ClientMetadataRules, alias="clientMetadata"
    )
    """Client metadata keys the callers may send."""


class Metadata(StrictModel):
    """The document's name and labels."""

    name: PolicyName
    """Unique among the documents of its kind in the policy set; decision logs name it."""
    description: str | None = None
    """What the document is for, in a sentence."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form string labels."""


class AttributePolicy(StrictModel):
    """Which callers may write which Cognito user attributes, with which values, in which user
    pools."""

    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    """The policy format's version: attrgate/v1."""
    kind: Literal["AttributePolicy"]
    """The kind of document."""
    metadata: Metadata
    """Name, description and labels."""
    spec: AttributePolicySpec
    """The policy itself."""


# --- SmsGuard ---------------------------------------------------------------------------------

# ISO 3166-1 alpha-2, or 001 for non-geographic numbers (phonenumbers' region for +800 etc.).
COUNTRY_CODES = frozenset(phonenumbers.SUPPORTED_REGIONS) | {"001"}
MICROS = 1_000_000
MAX_MONEY = 10**12
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])")
# The same durations as a JSON Schema pattern (anchored: a JSON Schema pattern may match anywhere).
_DURATION_PATTERN = f"^{_DURATION.pattern}$"
_NOT_DURATION = "not a duration such as 90s, 15m, 24h or 30d"
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """`90s`, `15m`, `24h`, `30d` in milliseconds."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is {_NOT_DURATION}")
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


# Named type aliases become named definitions ($defs) in the JSON Schema, shared by every use.
Country = TypeAliasType(
    "Country",
    Annotated[
        str,
        AfterValidator(_country),
        WithJsonSchema(
            {
                "type": "string",
                "enum": sorted(COUNTRY_CODES),
                "description": "An ISO 3166-1 alpha-2 country code in capitals (US, GB), or 001 "
                "for non-geographic numbers (+800 and the like).",
                "errorMessage": "not an ISO 3166-1 alpha-2 country code (or 001)",
            }
        ),
    ],
)
Duration = Annotated[
    str,
    AfterValidator(lambda v: duration_ms(v) and v),
    Field(json_schema_extra={"pattern": _DURATION_PATTERN, "patternErrorMessage": _NOT_DURATION}),
]
# At most 10^12 units: micro-units then stay far below 2^63, exact in every store. A JSON Schema
# cannot hold "at most 6 decimal places" faithfully (validators compute multipleOf in binary
# floating point), so that rule is the loader's alone.
Money = TypeAliasType(
    "Money",
    Annotated[
        Decimal,
        BeforeValidator(_money),
        Field(ge=0, le=Decimal(MAX_MONEY), max_digits=19),
        WithJsonSchema(
            {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_MONEY,
                "description": "An amount of money with at most 6 decimal places (counted "
                "exactly, in micro-units).",
            }
        ),
    ],
)


PriceKey = TypeAliasType("PriceKey", Country | Literal["default"])


class _PriceKeySchema:
    """A pricePerMessage key: a Country or `default`. The loader's (Python) input is a plain
    string here, checked by SmsBudget._exact_prices with messages that name the key; the JSON
    Schema (and JSON input) state the same rule as a type."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.json_or_python_schema(
            json_schema=handler.generate_schema(PriceKey),
            python_schema=core_schema.str_schema(strict=True),
        )


def _exactly_one_list(first: str, second: str) -> dict[str, Any]:
    """JSON Schema: exactly one of `first` and `second` is given as a list (null counts as not
    given). Said with if/then/else rather than oneOf so that an editor can show the validator's
    words (`errorMessage`: yaml-language-server's, ignored by other tools)."""
    message = f"give exactly one of {first} or {second}"
    return {
        "if": {"required": [first], "properties": {first: {"type": "array"}}},
        "then": {"properties": {second: {"type": "null", "errorMessage": message}}},
        "else": {
            "required": [second],
            "properties": {second: {"type": "array", "errorMessage": message}},
            "errorMessage": message,
        },
    }


class SmsCountries(StrictModel):
    """Countries that phone numbers may be in: give exactly one of allow or deny."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_list("allow", "deny"))

    allow: list[Country] | None = None
    """Only these countries (the destination of the phone number written)."""
    deny: list[Country] | None = None
    """Every country but these."""

    @model_validator(mode="after")
    def _one_list(self) -> SmsCountries:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of allow or deny")  # as _exactly_one_list says
        return self


class SmsLimit(StrictModel):
    """At most `max` SMS-triggering writes per `per` key in any sliding `window`."""

    per: Literal["phone_number", "user", "caller", "user_pool", "country", "global"]
    """What is counted separately: each phone number, user, caller, user pool, destination
    country, or everything together (global)."""
    max: Annotated[int, Field(ge=1, le=10_000_000)]
    """Writes allowed per window."""
    window: Duration
    """A duration such as 90s, 15m, 24h or 30d."""


class SmsBudget(StrictModel):
    """A spending limit on the SMS messages that writes trigger."""

    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    """An ISO 4217 code such as USD (a label: prices and amount are in it)."""
    amount: Money
    """The most the messages of one window may cost."""
    window: Annotated[
        str,
        AfterValidator(lambda v: v if v == "month" else duration_ms(v) and v),
        Field(
            json_schema_extra={
                "pattern": f"^(month|{_DURATION.pattern})$",
                "patternErrorMessage": "neither month nor a duration such as 24h or 30d",
            }
        ),
    ]
    """month (the calendar month, UTC) or a sliding duration such as 24h or 30d."""
    price_per_message: dict[Annotated[str, _PriceKeySchema], Money] = Field(
        alias="pricePerMessage", json_schema_extra={"required": ["default"]}
    )
    """The price of one message by destination country; `default` prices every other country."""

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
    """Where the guard applies, and its country rule, counted limits and budget."""

    mode: Literal["enforce", "audit"] = "enforce"
    """enforce refuses; audit only reports what it would refuse."""
    user_pools: Annotated[list[Glob], Field(min_length=1)] = Field(alias="userPools")
    """User pool ids or globs (`*` = any run of characters)."""
    countries: SmsCountries | None = None
    """Countries that phone numbers may be in."""
    limits: list[SmsLimit] = Field(default_factory=list)
    """Counted limits on SMS-triggering writes."""
    budget: SmsBudget | None = None
    """A spending limit."""


class SmsGuard(StrictModel):
    """Guards the SMS messages that attribute writes make Cognito send (a new phone_number, a
    verification): countries, counted limits and a budget."""

    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    """The policy format's version: attrgate/v1."""
    kind: Literal["SmsGuard"]
    """The kind of document."""
    metadata: Metadata
    """Name, description and labels."""
    spec: SmsGuardSpec
    """The guard itself."""


# --- CognitoQuota -----------------------------------------------------------------------------

_WAIT = re.compile(r"(0|[1-9][0-9]{0,5})(ms|s)")
_NOT_WAIT = "not a wait such as 2s, 500ms or 0s (at most 60s)"
MAX_WAIT_MS = 60_000


def wait_ms(text: str) -> int:
    """`2s`, `500ms`, `0s` in milliseconds, at most a minute."""
    found = _WAIT.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is {_NOT_WAIT}")
    ms = int(found[1]) * (1 if found[2] == "ms" else 1_000)
    if ms > MAX_WAIT_MS:
        raise ValueError(f"{text!r} is {_NOT_WAIT}")
    return ms


Wait = Annotated[
    str,
    AfterValidator(lambda v: (wait_ms(v), v)[1]),
    Field(json_schema_extra={"pattern": f"^{_WAIT.pattern}$", "patternErrorMessage": _NOT_WAIT}),
]


# Requests per second, weights and fractions: a decimal (YAML's 2.5 is exact) or an integer.
Rate = Annotated[
    Decimal,
    BeforeValidator(_money),
    Field(ge=Decimal("0.001"), le=100_000),
    WithJsonSchema({"type": "number", "minimum": 0.001, "maximum": 100_000}),
]
Weight = Annotated[
    Decimal,
    BeforeValidator(_money),
    Field(gt=0, le=1_000),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1_000}),
]
Fraction = Annotated[
    Decimal,
    BeforeValidator(_money),
    Field(ge=0, le=1),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]


class QuotaClass(StrictModel):
    """How one class of callers shares the quota."""

    weight: Weight = Decimal(1)
    """Its weight in the fair share: under contention, classes that want more than they get
    receive the free rate in proportion to their weights (weighted max-min fairness)."""
    reserved: Fraction = Decimal(0)
    """A fraction of the rate (0.2 = 20 %) kept for this class, even when the others want
    everything; the others never borrow it."""
    max_rate: Rate | None = Field(None, alias="maxRate")
    """A ceiling in requests per second, however much is free."""
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] | None = Field(None, alias="maxInFlight")
    """The most calls of this class holding a slot at once: waiting for their token, or under
    way at Cognito (a bulkhead: calls that hang cannot take every upstream slot). Default: half
    of --executor-threads."""


class QuotaShare(QuotaClass):
    """A class of callers named by globs."""

    name: PolicyName | None = None
    """The share's name in metrics, errors and logs (default: its first callers entry)."""
    callers: Annotated[list[Glob], Field(min_length=1)]
    """Caller names or globs (`*` = any run of characters). A caller belongs to the first share
    that names it; callers no share names belong to `others`."""


class PerUserRate(StrictModel):
    """Pacing of the writes to one user (Cognito allows each user about 10 per second)."""

    rate: Rate
    """Writes per second to one user (keyed by user pool and a hash of the username)."""
    burst: Annotated[int, Field(ge=1, le=1_000)] = 1
    """Writes to one user that may go out at once before the pacing applies."""


class QuotaQueue(StrictModel):
    """How long a call over its share waits for a token."""

    max_wait: Wait = Field("2s", alias="maxWait")
    """At most this long (and never past the call's own gRPC deadline); 0s refuses at once."""


class CognitoQuotaSpec(StrictModel):
    """The account's UserUpdate quota and how callers share it."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True
    )

    rate: Rate
    """Requests per second the whole fleet may send to Cognito's UserUpdate category
    (AdminUpdateUserAttributes): 25 by default in every account and region."""
    burst: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Requests that may go out at once above the rate (default: the rate, rounded up)."""
    shares: list[QuotaShare] = Field(default_factory=list, max_length=64)
    """Classes of callers with their weights, reserved floors and ceilings."""
    others: QuotaClass = Field(default_factory=lambda: QuotaClass.model_validate({}))
    """The class of every caller no share names."""
    per_user: PerUserRate | None = Field(None, alias="perUser")
    """Pacing of the writes to one user."""
    queue: QuotaQueue = Field(default_factory=lambda: QuotaQueue.model_validate({}))
    """How long a call over its share may wait."""

    @model_validator(mode="after")
    def _consistent(self) -> CognitoQuotaSpec:
        classes = [*self.shares, self.others]
        if sum(c.reserved for c in classes) > 1:
            raise ValueError("the reserved fractions of all shares add up to more than 1")
        for c in classes:
            if c.max_rate is not None and c.max_rate < c.reserved * self.rate:
                raise ValueError(
                    f"a share's maxRate {c.max_rate} is below its reserved "
                    f"{c.reserved} x rate {self.rate}"
                )
        names = [s.name or s.callers[0] for s in self.shares]
        for name in names:
            if names.count(name) > 1 or name == OTHERS:
                raise ValueError(f"two shares are named {name!r} (give each a distinct name)")
        return self


OTHERS = "others"


class CognitoQuota(StrictModel):
    """The fleet-wide budget of calls to Cognito's UserUpdate category (shared by every user
    pool and service of one account and region), how callers share it, and per-user pacing.
    At most one per policy set."""

    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    """The policy format's version: attrgate/v1."""
    kind: Literal["CognitoQuota"]
    """The kind of document."""
    metadata: Metadata
    """Name, description and labels."""
    spec: CognitoQuotaSpec
    """The quota itself."""


# Every kind a policy document may have.
KINDS: dict[str, type[BaseModel]] = {
    "AttributePolicy": AttributePolicy,
    "SmsGuard": SmsGuard,
    "CognitoQuota": CognitoQuota,
}
