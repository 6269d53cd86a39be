"""The PolicyTest kind: table-driven test suites for a policy set (`attrgate test`).

Found in files named `*_test.yaml`/`*_test.yml` (which `serve` never reads as policies) or as
any document of this kind. Strict like every policy model: a typo in a key is an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from attrgate.policy.model import Metadata, StrictModel

# Names a test may set: strings only (quote `"true"`), as the RPC carries them.
Attributes = dict[str, str]
CaseName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Expectation = Literal["allow", "deny", "invalid"]
# The stage that denies, as CheckUpdateUserAttributes reports it (Decision.denied_by).
DeniedBy = Literal["policy", "pool", "pool_schema", "sms_country"]


class PoolFixture(StrictModel):
    """A DescribeUserPool answer (JSON or YAML, as Cognito returns it: `{"UserPool": {...}}`),
    read from `file`, relative to the test file."""

    file: Annotated[str, StringConstraints(min_length=1)]


class ExpectedFinding(StrictModel):
    """One violation or would-deny finding. Only the keys given are compared."""

    attribute: str | None = None
    policy: str | None = None
    entry: str | None = None
    reason: str | None = None
    client_metadata_key: str | None = Field(default=None, alias="clientMetadataKey")


class ExpectedInvalid(StrictModel):
    """One malformed field (expect: invalid). Only the keys given are compared."""

    field: str | None = None
    reason: str | None = None


class ExpectedSms(StrictModel):
    triggers_sms: bool | None = Field(default=None, alias="triggersSms")
    country: str | None = None  # the destination country of the phone_number written


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
    pending_verification: list[str] | None = Field(default=None, alias="pendingVerification")
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
