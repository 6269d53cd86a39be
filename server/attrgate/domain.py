"""The plain values that travel along the request path.

Only `api` knows protobuf, only `upstream` knows boto3; every stage in between hands the next one
of these frozen values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a SPIFFE id, DNS name or CN from mTLS, or the dev header."""

    name: str
    source: str  # "mtls" | "header"


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    user_pool_id: str
    username: str
    attributes: tuple[Attribute, ...]
    client_metadata: Mapping[str, str] = field(default_factory=dict)

    def value_of(self, name: str) -> str:
        """The value written to `name`; "" when the request does not write it (or empties it)."""
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute.value
        return ""

    def writes_unverified(self, name: str) -> bool:
        """Writes a non-empty `name` (email, phone_number) without setting its verified flag to
        true in the same request: Cognito then verifies it (an email, an SMS)."""
        return bool(self.value_of(name)) and self.value_of(f"{name}_verified") != "true"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A malformed field of the request. `field` is a path such as `user_attributes[2].value`."""

    field: str
    reason: str
    description: str


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason a policy denies (or, in audit mode, would deny) a request. Never a value."""

    attribute: str  # attribute name; "" for a metadata key or the whole request
    policy: str  # "" when no policy applies
    entry: str  # "allow[2]", "deny[0]", "clientMetadata.allowKeys", ""
    reason: str  # stable code, see ViolationReason
    message: str
    client_metadata_key: str = ""  # set (and attribute "") for a client-metadata finding

    @property
    def subject(self) -> str:
        """What the finding is about, for messages: an attribute, a metadata key or the request."""
        if self.attribute:
            return self.attribute
        if self.client_metadata_key:
            return f"client_metadata.{self.client_metadata_key}"
        return "request"


class ViolationReason(enum.StrEnum):
    NO_APPLICABLE_POLICY = "NO_APPLICABLE_POLICY"
    ATTRIBUTE_NOT_ALLOWED = "ATTRIBUTE_NOT_ALLOWED"
    ATTRIBUTE_DENIED = "ATTRIBUTE_DENIED"
    VERIFIED_FLAG_NOT_GRANTED = "VERIFIED_FLAG_NOT_GRANTED"
    EMPTY_VALUE_NOT_ALLOWED = "EMPTY_VALUE_NOT_ALLOWED"
    MAX_LENGTH = "MAX_LENGTH"
    MIN_LENGTH = "MIN_LENGTH"
    ENUM = "ENUM"
    FORMAT = "FORMAT"
    PATTERN = "PATTERN"
    METADATA_KEY_NOT_ALLOWED = "METADATA_KEY_NOT_ALLOWED"
    # The user pool's schema (after policy):
    SCHEMA_UNKNOWN_ATTRIBUTE = "SCHEMA_UNKNOWN_ATTRIBUTE"
    SCHEMA_IMMUTABLE = "SCHEMA_IMMUTABLE"
    SCHEMA_TYPE = "SCHEMA_TYPE"
    SCHEMA_CONSTRAINT = "SCHEMA_CONSTRAINT"
    POOL_NOT_FOUND = "POOL_NOT_FOUND"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    # The SMS guard:
    SMS_COUNTRY_NOT_ALLOWED = "SMS_COUNTRY_NOT_ALLOWED"
    SMS_LIMIT_EXCEEDED = "SMS_LIMIT_EXCEEDED"


class Stage(enum.StrEnum):
    """The stage that denied a request (after validation, which has its own outcome)."""

    POLICY = "policy"
    POOL = "pool"  # the user pool does not exist
    USER = "user"  # the user does not exist (looked up for per-user SMS limits)
    POOL_SCHEMA = "pool_schema"
    SMS_COUNTRY = "sms_country"
    SMS_LIMIT = "sms_limit"


@dataclass(frozen=True, slots=True)
class SmsRefusal:
    """A limit or budget that refuses (or, for an audit guard, would refuse) an SMS."""

    guard: str
    rule: str  # "limits[0]", "budget"
    description: str
    retry_at_ms: int  # when the window frees enough; 0 when unknown (CheckUpdateUserAttributes)


# One place reserved in an SMS limit or budget: (guard, rule, amount; micro-units for a budget).
Reserved = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class SmsAssessment:
    triggers_sms: bool
    country: str  # destination of the phone_number written; "" when none is written
    refusals: tuple[SmsRefusal, ...] = ()
    would_refuse: tuple[SmsRefusal, ...] = ()  # audit-mode guards
    # What enforcing guards reserved.
    reserved: tuple[Reserved, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy engine concluded; pure, without identifiers."""

    allowed: bool
    violations: tuple[Violation, ...]
    matched_policies: tuple[str, ...]
    would_deny: tuple[Violation, ...]


@dataclass(frozen=True, slots=True)
class CandidateVerdict:
    """What the candidate policy set (serve --candidate-policies) says of a request: its policy
    engine only, beside the serving set's, never deciding."""

    allowed: bool
    violations: tuple[Violation, ...]
    policy_revision: str
    # How it differs from the serving set's policy verdict (attrgate.candidate.Disagreement);
    # "" when the two agree.
    disagreement: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    policy_revision: str
    allowed: bool
    violations: tuple[Violation, ...] = ()
    matched_policies: tuple[str, ...] = ()
    would_deny: tuple[Violation, ...] = ()
    denied_by: str = ""  # a Stage when denied
    pending_verification: tuple[str, ...] = ()
    sms: SmsAssessment | None = None
    candidate: CandidateVerdict | None = None  # None without a candidate set
    shadow: bool = False  # the server runs in shadow mode (serve --shadow)
    # The policies deny the request; shadow mode let it past them (their findings are in
    # would_deny). A later stage may still deny it.
    shadow_allowed: bool = False

    @property
    def sms_outcome(self) -> str:
        """refused (by an SmsGuard's country rule or a limit), denied (by another stage) or
        allowed."""
        if self.denied_by in (Stage.SMS_COUNTRY, Stage.SMS_LIMIT):
            return "refused"
        return "allowed" if self.allowed else "denied"

    @property
    def outcome(self) -> str:
        """allowed, denied, or shadow_allowed: forwarded only because of shadow mode."""
        if not self.allowed:
            return "denied"
        return "shadow_allowed" if self.shadow_allowed else "allowed"


class UpstreamError(enum.Enum):
    """How a Cognito call failed, classified by Cognito's error code (never its message)."""

    USER_NOT_FOUND = "USER_NOT_FOUND"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    ALIAS_EXISTS = "ALIAS_EXISTS"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    THROTTLED = "THROTTLED"
    UNAVAILABLE = "UNAVAILABLE"
    LAMBDA_REJECTED = "LAMBDA_REJECTED"
    CREDENTIALS_REJECTED = "CREDENTIALS_REJECTED"
    POOL_MISCONFIGURED = "POOL_MISCONFIGURED"
    OPERATION_NOT_ENABLED = "OPERATION_NOT_ENABLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    # An HTTP 4xx without an error code attrgate could read (a proxy's page, an undecodable
    # body): refused, so nothing was changed.
    REFUSED = "REFUSED"
    UNEXPECTED = "UNEXPECTED"


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """The outcome of one forwarded call: ok with Cognito's request id, or a classified error.

    `error_code` is Cognito's error code when the operation documents it (e.g.
    "AliasExistsException"), the HTTP status when no code could be read, `other` for any other
    code, or attrgate's own name for a failure (e.g. "ReadTimeout"): safe to expose and log.
    Cognito's message is dropped because it may echo values.
    """

    ok: bool
    request_id: str = ""
    error: UpstreamError | None = None
    error_code: str = ""
    # True only when Cognito's answer proves the call changed nothing and sent nothing: an error
    # response Cognito returned itself, or a connection never established. When in doubt, False.
    no_effect: bool = False


class PendingCall(Protocol):
    """The caller's side of one forwarded call, as the upstream's task sees it."""

    def complete(self, result: UpstreamResult) -> None:
        """The outcome, once known (even after the caller has gone)."""

    def gone(self) -> bool:
        """The caller has given up: send nothing more for it (no first attempt, no retry)."""

    def retry_token(self) -> bool:
        """May a retry go out (the quota governor's token)? False: no retry."""

    def throttled(self) -> None:
        """Cognito answered an attempt with a throttle."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """The request is malformed; nothing was decided or forwarded."""

    decision_id: str
    policy_revision: str
    violations: tuple[FieldViolation, ...]


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A dependency the decision needs could not answer: fail closed."""

    decision_id: str
    policy_revision: str
    dependency: str  # "pool_metadata", "user_lookup", "sms_store"
    upstream: UpstreamResult | None = None


@dataclass(frozen=True, slots=True)
class LookupLimited:
    """A Cognito metadata lookup the caller's lookup budget does not cover: refused before any
    call was sent."""

    decision_id: str
    policy_revision: str
    lookup: str  # "pool_metadata", "user_lookup"
    retry_after: float  # seconds until the caller's budget covers another lookup


@dataclass(frozen=True, slots=True)
class QuotaLimited:
    """The decision allowed the call, but the Cognito quota (CognitoQuota) gave it no token
    within the time it could wait: nothing was sent, and no SMS reservation is kept."""

    decision: Decision
    quota: str  # the CognitoQuota's name
    share: str
    scope: str  # "share" (its rate), "user" (per-user pacing), "in_flight" (its bulkhead)
    retry_after: float  # seconds


@dataclass(frozen=True, slots=True)
class Forwarded:
    decision: Decision
    upstream: UpstreamResult
    decided_at: float  # time.perf_counter() when the decision was made, before forwarding


Outcome = Invalid | Unavailable | LookupLimited | Decision | QuotaLimited | Forwarded


@dataclass(frozen=True, slots=True)
class AttributeSchema:
    """One attribute as the user pool describes it."""

    name: str
    data_type: str = "String"  # String | Number | Boolean | DateTime
    mutable: bool = True
    min_length: int | None = None
    max_length: int | None = None
    min_value: int | None = None
    max_value: int | None = None


@dataclass(frozen=True, slots=True)
class PoolDescription:
    """What attrgate needs to know of a user pool (from DescribeUserPool)."""

    pool_id: str
    attributes: Mapping[str, AttributeSchema]
    auto_verified: frozenset[str]
    verify_before_update: frozenset[str]
