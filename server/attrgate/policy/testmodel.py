"""The PolicyTest kind: table-driven test suites for a policy set (`attrgate test`).

Found in files named `*_test.yaml`/`*_test.yml` (which `serve` never reads as policies) or as
any document of this kind. Strict like every policy model: a typo in a key is an error.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

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
    policy: str | None = None
    entry: Entry | None = None
    reason: ViolationReasonName | None = None
    client_metadata_key: str | None = Field(default=None, alias="clientMetadataKey")


class ExpectedInvalid(StrictModel):
    """One malformed field (expect: invalid). Only the keys given are compared."""

    field: str | None = None
    reason: InvalidReasonName | None = None


class ExpectedSms(StrictModel):
    """The SMS assessment of a write of phone_number. Only the keys given are compared; a
    request that writes no phone_number (or is denied before the SMS guard) sends no SMS."""

    triggers_sms: bool | None = Field(default=None, alias="triggersSms")
    # The destination country of the phone_number written (ISO 3166-1 alpha-2, or 001).
    country: Annotated[str, StringConstraints(pattern=r"^([A-Z]{2}|001)$")] | None = None
    # An enforcing SmsGuard's country rule refuses it (deniedBy: sms_country).
    refused: bool | None = None


class Matrix(StrictModel):
    """Lists whose cross product expands the case: one case per combination, named after it."""

    caller: list[str] | None = None
    user_pool: list[str] | None = Field(default=None, alias="userPool")
    attributes: list[Attributes] | None = None
    client_metadata: list[Attributes] | None = Field(default=None, alias="clientMetadata")

    @model_validator(mode="after")
    def _not_empty(self) -> Matrix:
        lists = [self.caller, self.user_pool, self.attributes, self.client_metadata]
        if all(v is None for v in lists):
            raise ValueError("a matrix needs at least one of caller, userPool, attributes")
        if any(v is not None and not v for v in lists):
            raise ValueError("a matrix list must not be empty")
        return self


class TestCase(StrictModel):
    __test__ = False  # not a pytest class

    name: CaseName
    skip: str | None = None  # the reason
    caller: str | None = None
    user_pool: str | None = Field(default=None, alias="userPool")
    username: str = "policy-test-user"
    attributes: Attributes | None = None
    client_metadata: Attributes = Field(default_factory=dict, alias="clientMetadata")
    matrix: Matrix | None = None
    expect: Expectation
    violations: list[ExpectedFinding] | None = None
    would_deny: list[ExpectedFinding] | None = Field(default=None, alias="wouldDeny")
    denied_by: DeniedBy | None = Field(default=None, alias="deniedBy")
    pending_verification: list[Literal["email", "phone_number"]] | None = Field(
        default=None, alias="pendingVerification"
    )
    sms: ExpectedSms | None = None
    invalid: list[ExpectedInvalid] | None = None

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
        return self


class PolicyTestSpec(StrictModel):
    skip: str | None = None  # the reason: every case of the suite is skipped
    pools: dict[str, PoolFixture] = Field(default_factory=dict)
    cases: Annotated[list[TestCase], Field(min_length=1)]


class PolicyTest(StrictModel):
    __test__ = False

    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    kind: Literal["PolicyTest"]
    metadata: Metadata
    spec: PolicyTestSpec
