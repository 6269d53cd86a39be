"""The PolicyTest kind: table-driven test suites for a policy set (`attrgate test`).

Found in files named `*_test.yaml`/`*_test.yml` (which `serve` never reads as policies) or as
any document of this kind. Strict like every policy model: a typo in a key is an error.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator

from attrgate.domain import ViolationReason
from attrgate.policy.model import Metadata, StrictModel

# Names a test may set: strings only (quote `"true"`), as the RPC carries them.
Attributes = dict[str, str]
CaseName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Expectation = Literal["allow", "deny", "invalid"]
# The stage that denies, as CheckUpdateUserAttributes reports it (Decision.denied_by), among
# those a test can reach: without Cognito no pool is ever "not found" (a suite with pools must
# give every case's pool a fixture) and no user is looked up; without a store nothing is counted.
DeniedBy = Literal["policy", "pool_schema", "sms_country"]

# Violation reasons an offline decision can give; the others need Cognito or a store.
_OFFLINE_ONLY_NOT = {
    ViolationReason.POOL_NOT_FOUND: "no pool is ever not found without Cognito",
    ViolationReason.USER_NOT_FOUND: "attrgate test looks no user up",
    ViolationReason.SMS_LIMIT_EXCEEDED: "attrgate test counts no SMS (that needs a store)",
}
VIOLATION_REASONS = tuple(r.value for r in ViolationReason if r not in _OFFLINE_ONLY_NOT)
# The reasons validate.py gives a malformed field (expect: invalid).
INVALID_REASONS = (
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "BAD_FORMAT",
    "RESERVED_ATTRIBUTE",
    "DUPLICATE",
    "INVALID_PHONE_NUMBER",
)


def _known(known: tuple[str, ...], why: dict[str, str]) -> AfterValidator:
    def check(value: str) -> str:
        if value in why:
            raise ValueError(f"{value} cannot happen in attrgate test: {why[value]}")
        if value not in known:
            raise ValueError(f"unknown reason {value!r} (known: {', '.join(known)})")
        return value

    return AfterValidator(check)


ViolationReasonName = Annotated[
    str,
    _known(VIOLATION_REASONS, {r.value: w for r, w in _OFFLINE_ONLY_NOT.items()}),
    Field(json_schema_extra={"enum": list(VIOLATION_REASONS)}),
]
InvalidReasonName = Annotated[
    str, _known(INVALID_REASONS, {}), Field(json_schema_extra={"enum": list(INVALID_REASONS)})
]


class PoolFixture(StrictModel):
    """A DescribeUserPool answer (JSON or YAML, as Cognito returns it: `{"UserPool": {...}}`),
    read from `file`, relative to the test file."""

    file: Annotated[str, StringConstraints(min_length=1)]
    """The fixture's path, relative to the test file."""


# An entry as decisions name it: a position in a policy (allow[2], deny[0], limits[1]), a part
# of one, the pool's schema, or "" (no policy applies).
_ENTRY = (
    r"^((allow|deny|limits)\[[0-9]+\]|clientMetadata\.allowKeys|countries\.(allow|deny)|budget"
    r"|userPool\.schema|)$"
)


def _entry(value: str) -> str:
    if re.fullmatch(_ENTRY, value) is None:
        raise ValueError(
            f"{value!r} is no entry a decision names (allow[N], deny[N], clientMetadata.allowKeys, "
            "userPool.schema, countries.allow, countries.deny, limits[N], budget)"
        )
    return value


Entry = Annotated[str, AfterValidator(_entry), Field(json_schema_extra={"pattern": _ENTRY})]


class ExpectedFinding(StrictModel):
    """One violation or would-deny finding. Only the keys given are compared."""

    attribute: str | None = None
    """The attribute name."""
    policy: str | None = None
    """The policy's metadata.name."""
    entry: Entry | None = None
    """The entry, as decisions name it (`allow[0]`, `deny[1]`)."""
    reason: ViolationReasonName | None = None
    """The reason code, such as ATTRIBUTE_DENIED or ENUM."""
    client_metadata_key: str | None = Field(default=None, alias="clientMetadataKey")
    """The client metadata key, for a finding about one."""


class ExpectedInvalid(StrictModel):
    """One malformed field (expect: invalid). Only the keys given are compared."""

    field: str | None = None
    """The request field, as the BadRequest detail names it."""
    reason: InvalidReasonName | None = None
    """Why it is malformed."""


class ExpectedSms(StrictModel):
    """The SMS assessment of a write of phone_number. Only the keys given are compared; a
    request that writes no phone_number (or is denied before the SMS guard) sends no SMS."""

    triggers_sms: bool | None = Field(default=None, alias="triggersSms")
    """Whether the write would make Cognito send an SMS."""
    country: Annotated[str, StringConstraints(pattern=r"^([A-Z]{2}|001)$")] | None = None
    """The destination country of the phone_number written (ISO 3166-1 alpha-2, or 001)."""
    refused: bool | None = None
    """An enforcing SmsGuard's country rule refuses it (deniedBy: sms_country)."""


# The cross-field rules of Matrix and TestCase, for the JSON Schema. `errorMessage` is
# yaml-language-server's (VS Code's YAML extension): it shows the validator's own words instead of
# "Missing property"; other JSON Schema tools ignore it.


def _listed(name: str, message: str) -> dict[str, Any]:
    """`name` is given as a list (null counts as not given)."""
    return {"required": [name], "properties": {name: {"type": "array"}}, "errorMessage": message}


def _given(name: str) -> dict[str, Any]:
    """`name` is given and not null."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _absent(name: str, message: str) -> dict[str, Any]:
    """`name` is not given, or null."""
    return {"properties": {name: {"type": "null", "errorMessage": message}}}


def _in_case_or_matrix(key: str) -> dict[str, Any]:
    """`key` is given in the case or listed in its matrix, not both."""
    return {
        "if": _given(key),
        "then": {
            "properties": {
                "matrix": _absent(key, f"{key} is given both in the case and in its matrix")
            }
        },
        "else": {
            "required": ["matrix"],
            "properties": {
                "matrix": {
                    "type": "object",
                    **_listed(key, f"give {key}, in the case or in its matrix"),
                }
            },
            "errorMessage": f"give {key}, in the case or in its matrix",
        },
    }


_MATRIX_KEYS = ("caller", "userPool", "attributes", "clientMetadata")


_MATRIX_EMPTY = "a matrix needs at least one of caller, userPool, attributes, clientMetadata"


class Matrix(StrictModel):
    """Lists whose cross product expands the case: one case per combination, named after it."""

    # Matrix._not_empty, for the JSON Schema.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                _listed(
                    key,
                    "a matrix needs at least one of caller, userPool, attributes, clientMetadata",
                )
                for key in _MATRIX_KEYS
            ],
            "allOf": [
                {
                    "properties": {
                        key: {"minItems": 1, "errorMessage": "a matrix list must not be empty"}
                        for key in _MATRIX_KEYS
                    }
                }
            ],
        }
    )

    caller: list[str] | None = None
    """Callers to try."""
    user_pool: list[str] | None = Field(default=None, alias="userPool")
    """User pools to try."""
    attributes: list[Attributes] | None = None
    """Attribute sets to try, each a mapping of names to string values."""
    client_metadata: list[Attributes] | None = Field(default=None, alias="clientMetadata")
    """Client metadata mappings to try."""

    @model_validator(mode="after")
    def _not_empty(self) -> Matrix:
        lists = [self.caller, self.user_pool, self.attributes, self.client_metadata]
        if all(v is None for v in lists):
            raise ValueError(
                "a matrix needs at least one of caller, userPool, attributes, clientMetadata"
            )
        if any(v is not None and not v for v in lists):
            raise ValueError("a matrix list must not be empty")
        return self


def _case_rules() -> dict[str, Any]:
    """TestCase._complete, for the JSON Schema."""
    deny_only = "violations and deniedBy belong to a case that expects deny"
    return {
        "allOf": [
            *(_in_case_or_matrix(key) for key in _MATRIX_KEYS[:3]),
            {
                "if": {
                    "required": ["clientMetadata"],
                    "properties": {"clientMetadata": {"minProperties": 1}},
                },
                "then": {
                    "properties": {
                        "matrix": _absent(
                            "clientMetadata",
                            "clientMetadata is given both in the case and in its matrix",
                        )
                    }
                },
            },
            {
                "if": {"properties": {"expect": {"const": "deny"}}},
                "else": {
                    "allOf": [_absent("violations", deny_only), _absent("deniedBy", deny_only)]
                },
            },
            {
                "if": {"properties": {"expect": {"const": "invalid"}}},
                "else": _absent("invalid", "invalid belongs to a case that expects invalid"),
            },
            {
                "if": {
                    "anyOf": [
                        {"required": ["triggersSms"], "properties": {"triggersSms": _NOT_NULL}},
                        {"required": ["country"], "properties": {"country": _NOT_NULL}},
                    ]
                },
                "then": _absent("sms", _SMS_TWICE),
            },
        ]
    }


_SMS_TWICE = "give triggersSms and country in the case or in its sms mapping, not both"
_NOT_NULL = {"not": {"type": "null"}}


class TestCase(StrictModel):
    """One request and the decision it must get: caller, userPool and attributes each in the
    case or in its matrix."""

    __test__ = False  # not a pytest class

    model_config = ConfigDict(json_schema_extra=_case_rules())

    name: CaseName
    """What the case shows; expanded matrix cases add their values to it."""
    skip: str | None = None
    """Skip the case, giving the reason."""
    caller: str | None = None
    """The caller's name, as the server identifies it."""
    user_pool: str | None = Field(default=None, alias="userPool")
    """The user pool id."""
    username: str = "policy-test-user"
    """The user to write (only validation looks at it)."""
    attributes: Attributes | None = None
    """The attributes to write: names to string values (quote `"true"`)."""
    client_metadata: Attributes = Field(default_factory=dict, alias="clientMetadata")
    """Client metadata sent with the request."""
    matrix: Matrix | None = None
    """Lists to expand the case over: one case per combination."""
    expect: Expectation
    """allow, deny, or invalid (refused as malformed before any policy is asked)."""
    violations: list[ExpectedFinding] | None = None
    """The violations of a denied request (every one, in any order)."""
    would_deny: list[ExpectedFinding] | None = Field(default=None, alias="wouldDeny")
    """What audit policies would deny (every finding, in any order)."""
    denied_by: DeniedBy | None = Field(default=None, alias="deniedBy")
    """The stage that denies."""
    pending_verification: list[Literal["email", "phone_number"]] | None = Field(
        default=None, alias="pendingVerification"
    )
    """Attributes Cognito would hold back until the user verifies them."""
    triggers_sms: bool | None = Field(default=None, alias="triggersSms")
    """Whether the write would make Cognito send an SMS (or give it under `sms`)."""
    country: Annotated[str, StringConstraints(pattern=r"^([A-Z]{2}|001)$")] | None = None
    """The destination country of the phone_number written (or give it under `sms`)."""
    sms: ExpectedSms | None = None
    """The SMS assessment as one mapping: triggersSms, country, and refused (a country rule
    refuses it)."""
    invalid: list[ExpectedInvalid] | None = None
    """The malformed fields of a request expected invalid."""

    @model_validator(mode="after")
    def _complete(self) -> TestCase:
        for key, value, listed in (
            ("caller", self.caller, self.matrix and self.matrix.caller),
            ("userPool", self.user_pool, self.matrix and self.matrix.user_pool),
            ("attributes", self.attributes, self.matrix and self.matrix.attributes),
        ):
            if value is None and not listed:
                raise ValueError(f"give {key}, in the case or in its matrix")
            if value is not None and listed:
                raise ValueError(f"{key} is given both in the case and in its matrix")
        if self.matrix and self.matrix.client_metadata and self.client_metadata:
            raise ValueError("clientMetadata is given both in the case and in its matrix")
        if self.expect != "deny" and (self.violations is not None or self.denied_by is not None):
            raise ValueError("violations and deniedBy belong to a case that expects deny")
        if self.expect != "invalid" and self.invalid is not None:
            raise ValueError("invalid belongs to a case that expects invalid")
        if self.sms is not None and (self.triggers_sms is not None or self.country is not None):
            raise ValueError(_SMS_TWICE)
        return self

    @property
    def expected_sms(self) -> ExpectedSms | None:
        """The SMS expectation, from `sms` or from the case's own triggersSms and country."""
        if self.triggers_sms is None and self.country is None:
            return self.sms
        given = {"triggersSms": self.triggers_sms, "country": self.country}
        return ExpectedSms.model_validate({k: v for k, v in given.items() if v is not None})


class PolicyTestSpec(StrictModel):
    """The suite: pool fixtures and cases."""

    skip: str | None = None
    """Skip every case of the suite, giving the reason."""
    pools: dict[str, PoolFixture] = Field(default_factory=dict)
    """DescribeUserPool answers by user pool id, for schema checks and pending verification."""
    cases: Annotated[list[TestCase], Field(min_length=1)]
    """The cases."""


class PolicyTest(StrictModel):
    """A table-driven test suite for the policy set (`attrgate test`)."""

    __test__ = False

    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    """The policy format's version: attrgate/v1."""
    kind: Literal["PolicyTest"]
    """The kind of document."""
    metadata: Metadata
    """Name, description and labels."""
    spec: PolicyTestSpec
    """The suite."""
