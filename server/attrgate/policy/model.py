"""The policy format, attrgate/v1: the one source of validation (and of the JSON Schema).

Every model forbids unknown keys, so a typo such as `maxLenght` fails instead of being ignored, and
is strict, so a YAML scalar of the wrong type is an error rather than silently coerced.
"""

from __future__ import annotations

from typing import Annotated, Literal

import re2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

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


def compile_pattern(pattern: str) -> re2._Regexp:
    """Compile with RE2: linear time on any input, so no policy pattern can stall the server.

    RE2 has no backreferences or lookaround; such patterns are rejected at load."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        raise ValueError(f"invalid regular expression (RE2 syntax): {text}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AllowEntry(_Strict):
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


class DenyEntry(_Strict):
    attribute: AttributeGlob


class ClientMetadataRules(_Strict):
    allow_keys: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, alias="allowKeys"
    )


class AttributePolicySpec(_Strict):
    mode: Literal["enforce", "audit"] = "enforce"
    callers: Annotated[list[Glob], Field(min_length=1)]
    user_pools: Annotated[list[Glob], Field(min_length=1)] = Field(alias="userPools")
    allow: list[AllowEntry] = Field(default_factory=list)
    deny: list[DenyEntry] = Field(default_factory=list)
    client_metadata: ClientMetadataRules = Field(
        default_factory=ClientMetadataRules, alias="clientMetadata"
    )


class Metadata(_Strict):
    name: PolicyName
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class AttributePolicy(_Strict):
    api_version: Literal["attrgate/v1"] = Field(alias="apiVersion")
    kind: Literal["AttributePolicy"]
    metadata: Metadata
    spec: AttributePolicySpec


# Every kind a policy document may have; later kinds (SmsGuard) register here.
KINDS: dict[str, type[BaseModel]] = {"AttributePolicy": AttributePolicy}
