from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributeType(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class UpdateUserAttributesRequest(_message.Message):
    __slots__ = ("user_pool_id", "username", "user_attributes", "client_metadata")
    class ClientMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_POOL_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    USER_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_METADATA_FIELD_NUMBER: _ClassVar[int]
    user_pool_id: str
    username: str
    user_attributes: _containers.RepeatedCompositeFieldContainer[AttributeType]
    client_metadata: _containers.ScalarMap[str, str]
    def __init__(self, user_pool_id: _Optional[str] = ..., username: _Optional[str] = ..., user_attributes: _Optional[_Iterable[_Union[AttributeType, _Mapping]]] = ..., client_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("attribute", "policy", "entry", "reason", "message", "client_metadata_key")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_METADATA_KEY_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    policy: str
    entry: str
    reason: str
    message: str
    client_metadata_key: str
    def __init__(self, attribute: _Optional[str] = ..., policy: _Optional[str] = ..., entry: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., client_metadata_key: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("allowed", "violations", "matched_policies", "would_deny", "decision_id", "policy_revision", "denied_by", "sms", "candidate", "shadow", "shadow_allowed")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_POLICIES_FIELD_NUMBER: _ClassVar[int]
    WOULD_DENY_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    DENIED_BY_FIELD_NUMBER: _ClassVar[int]
    SMS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    matched_policies: _containers.RepeatedScalarFieldContainer[str]
    would_deny: _containers.RepeatedCompositeFieldContainer[Violation]
    decision_id: str
    policy_revision: str
    denied_by: str
    sms: SmsAssessment
    candidate: CandidateDecision
    shadow: bool
    shadow_allowed: bool
    def __init__(self, allowed: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., matched_policies: _Optional[_Iterable[str]] = ..., would_deny: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., decision_id: _Optional[str] = ..., policy_revision: _Optional[str] = ..., denied_by: _Optional[str] = ..., sms: _Optional[_Union[SmsAssessment, _Mapping]] = ..., candidate: _Optional[_Union[CandidateDecision, _Mapping]] = ..., shadow: _Optional[bool] = ..., shadow_allowed: _Optional[bool] = ...) -> None: ...

class CandidateDecision(_message.Message):
    __slots__ = ("allowed", "violations", "policy_revision")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    policy_revision: str
    def __init__(self, allowed: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., policy_revision: _Optional[str] = ...) -> None: ...

class SmsRefusal(_message.Message):
    __slots__ = ("guard", "rule", "description", "retry_at_unix_ms")
    GUARD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    guard: str
    rule: str
    description: str
    retry_at_unix_ms: int
    def __init__(self, guard: _Optional[str] = ..., rule: _Optional[str] = ..., description: _Optional[str] = ..., retry_at_unix_ms: _Optional[int] = ...) -> None: ...

class SmsAssessment(_message.Message):
    __slots__ = ("triggers_sms", "country", "refusals", "would_refuse")
    TRIGGERS_SMS_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    WOULD_REFUSE_FIELD_NUMBER: _ClassVar[int]
    triggers_sms: bool
    country: str
    refusals: _containers.RepeatedCompositeFieldContainer[SmsRefusal]
    would_refuse: _containers.RepeatedCompositeFieldContainer[SmsRefusal]
    def __init__(self, triggers_sms: _Optional[bool] = ..., country: _Optional[str] = ..., refusals: _Optional[_Iterable[_Union[SmsRefusal, _Mapping]]] = ..., would_refuse: _Optional[_Iterable[_Union[SmsRefusal, _Mapping]]] = ...) -> None: ...

class UpdateUserAttributesResponse(_message.Message):
    __slots__ = ("decision", "cognito_request_id", "pending_verification")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    COGNITO_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    cognito_request_id: str
    pending_verification: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., cognito_request_id: _Optional[str] = ..., pending_verification: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicySetStatus(_message.Message):
    __slots__ = ("source", "follows", "revision", "loaded_at_unix_ms", "documents", "last_result", "last_attempt_unix_ms", "last_error", "fallback", "source_error", "source_error_since_unix_ms", "source_errors")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ERROR_SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    source: str
    follows: str
    revision: str
    loaded_at_unix_ms: int
    documents: int
    last_result: str
    last_attempt_unix_ms: int
    last_error: str
    fallback: bool
    source_error: str
    source_error_since_unix_ms: int
    source_errors: int
    def __init__(self, source: _Optional[str] = ..., follows: _Optional[str] = ..., revision: _Optional[str] = ..., loaded_at_unix_ms: _Optional[int] = ..., documents: _Optional[int] = ..., last_result: _Optional[str] = ..., last_attempt_unix_ms: _Optional[int] = ..., last_error: _Optional[str] = ..., fallback: _Optional[bool] = ..., source_error: _Optional[str] = ..., source_error_since_unix_ms: _Optional[int] = ..., source_errors: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("policies", "candidate", "shadow", "version")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    policies: PolicySetStatus
    candidate: PolicySetStatus
    shadow: bool
    version: str
    def __init__(self, policies: _Optional[_Union[PolicySetStatus, _Mapping]] = ..., candidate: _Optional[_Union[PolicySetStatus, _Mapping]] = ..., shadow: _Optional[bool] = ..., version: _Optional[str] = ...) -> None: ...
