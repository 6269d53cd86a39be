"""Cognito's answers as UpstreamResults: classified by Cognito's error code, or by the HTTP status
when no code could be read, never by message.

Every endpoint on the way can answer with any code: a code is passed on (status message,
ErrorInfo, decision log, log lines, spans, metrics) only when the operation documents it, else as
`other`, so nothing Cognito (or a proxy) writes into a code can forge a log line or mint a series.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import botocore.exceptions

from attrgate.domain import UpstreamError, UpstreamResult
from attrgate.upstream.retries import AttemptWithdrawn
from attrgate.upstream.signing import CredentialsUnavailable

OTHER = "other"

_BY_CODE: dict[str, UpstreamError] = {
    "UserNotFoundException": UpstreamError.USER_NOT_FOUND,
    "ResourceNotFoundException": UpstreamError.RESOURCE_NOT_FOUND,
    "AliasExistsException": UpstreamError.ALIAS_EXISTS,
    "InvalidParameterException": UpstreamError.INVALID_PARAMETER,
    "TooManyRequestsException": UpstreamError.THROTTLED,
    "ThrottlingException": UpstreamError.THROTTLED,
    "LimitExceededException": UpstreamError.THROTTLED,
    "InternalErrorException": UpstreamError.UNAVAILABLE,
    "ServiceUnavailableException": UpstreamError.UNAVAILABLE,
    "UserLambdaValidationException": UpstreamError.LAMBDA_REJECTED,
    "UnexpectedLambdaException": UpstreamError.LAMBDA_REJECTED,
    "InvalidLambdaResponseException": UpstreamError.LAMBDA_REJECTED,
    "InvalidSmsRoleAccessPolicyException": UpstreamError.POOL_MISCONFIGURED,
    "InvalidSmsRoleTrustRelationshipException": UpstreamError.POOL_MISCONFIGURED,
    "InvalidEmailRoleAccessPolicyException": UpstreamError.POOL_MISCONFIGURED,
    "OperationNotEnabledException": UpstreamError.OPERATION_NOT_ENABLED,
    # attrgate's own credentials or IAM rights are wrong: never a policy denial.
    "NotAuthorizedException": UpstreamError.CREDENTIALS_REJECTED,
    "AccessDeniedException": UpstreamError.CREDENTIALS_REJECTED,
    "AccessDenied": UpstreamError.CREDENTIALS_REJECTED,
    "UnrecognizedClientException": UpstreamError.CREDENTIALS_REJECTED,
    "InvalidSignatureException": UpstreamError.CREDENTIALS_REJECTED,
    "SignatureDoesNotMatch": UpstreamError.CREDENTIALS_REJECTED,
    "InvalidClientTokenId": UpstreamError.CREDENTIALS_REJECTED,
    "ExpiredTokenException": UpstreamError.CREDENTIALS_REJECTED,
    "MissingAuthenticationTokenException": UpstreamError.CREDENTIALS_REJECTED,
    "IncompleteSignatureException": UpstreamError.CREDENTIALS_REJECTED,
}

# What any AWS API may answer, whatever the operation documents: AWS's common errors
# (authentication, signing, throttling at the front door).
COMMON_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "ThrottlingException",
        "ServiceUnavailableException",
    }
)

# botocore's own code when the body held none it could read: the HTTP status ("403", "502").
_HTTP_STATUS = re.compile(r"[1-5][0-9]{2}")
# Cognito's request ids are UUIDs; anything else is not passed on.
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def documented_codes(service_model: Any, operation: str) -> frozenset[str]:
    """The error codes `operation` may answer with: its modelled error shapes and the common
    ones."""
    shapes = service_model.operation_model(operation).error_shapes
    return frozenset(shape.name for shape in shapes) | COMMON_CODES


def public_code(code: str, documented: Collection[str]) -> str:
    """`code` if the operation documents it (or it is botocore's HTTP-status fallback), else
    `other`."""
    if code in documented or _HTTP_STATUS.fullmatch(code):
        return code
    return OTHER


def public_request_id(request_id: str) -> str:
    return request_id if _REQUEST_ID.fullmatch(request_id) else ""


def classify_client_error(
    error: botocore.exceptions.ClientError, documented: Collection[str]
) -> UpstreamResult:
    response: dict[str, Any] = error.response
    code = str(response.get("Error", {}).get("Code", ""))
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode", 0) or 0)
    kind = _BY_CODE.get(code)
    if kind is None:
        # Only an unknown code (or none: botocore then uses the HTTP status, as for an IAM
        # layer's XML 403 or a proxy's HTML 502) lets the status decide.
        if status in (401, 403):
            kind = UpstreamError.CREDENTIALS_REJECTED
        elif status == 429:
            kind = UpstreamError.THROTTLED
        elif status >= 500:
            kind = UpstreamError.UNAVAILABLE
        elif status >= 400 and code in ("", str(status)):
            kind = UpstreamError.REFUSED  # a 4xx whose body was not Cognito's
        else:
            kind = UpstreamError.UNEXPECTED
    # A 4xx is Cognito refusing the call; after a 5xx nobody knows what happened.
    return UpstreamResult(
        ok=False,
        request_id=public_request_id(str(meta.get("RequestId", ""))),
        error=kind,
        error_code=public_code(code, documented),
        no_effect=status < 500,
    )


class MalformedResponse(Exception):
    """Cognito (or something on the way) answered 200 with a body that is not the answer."""


def classify_exception(error: BaseException, documented: Collection[str]) -> UpstreamResult:
    """Any failure of a call as an UpstreamResult; attrgate's own codes are class names."""
    if isinstance(error, botocore.exceptions.ClientError):
        return classify_client_error(error, documented)
    if isinstance(error, AttemptWithdrawn):
        # Its caller was told already (a deadline, a cancel) or the server is stopping.
        return UpstreamResult(
            ok=False,
            error=UpstreamError.DEADLINE_EXCEEDED if error.deadline else UpstreamError.UNAVAILABLE,
            error_code="DeadlineExceeded" if error.deadline else "RetryWithdrawn",
            no_effect=error.no_effect,
        )
    if isinstance(error, CredentialsUnavailable):
        return UpstreamResult(
            ok=False,
            error=UpstreamError.CREDENTIALS_REJECTED,
            error_code="CredentialsUnavailable",
            no_effect=error.no_effect,
        )
    if isinstance(error, MalformedResponse):
        return UpstreamResult(
            ok=False, error=UpstreamError.UNEXPECTED, error_code="MalformedResponse"
        )
    if isinstance(
        error,
        botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError,
    ):
        return UpstreamResult(
            ok=False, error=UpstreamError.UNAVAILABLE, error_code="ConnectionFailed", no_effect=True
        )
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return UpstreamResult(
            ok=False,
            error=UpstreamError.CREDENTIALS_REJECTED,
            error_code="NoCredentials",
            no_effect=True,
        )
    if isinstance(error, botocore.exceptions.ReadTimeoutError):
        return UpstreamResult(ok=False, error=UpstreamError.UNAVAILABLE, error_code="ReadTimeout")
    if isinstance(error, botocore.exceptions.HTTPClientError | OSError):
        # The connection broke somewhere along the way: whether Cognito acted is unknown.
        return UpstreamResult(
            ok=False, error=UpstreamError.UNAVAILABLE, error_code=type(error).__name__
        )
    if isinstance(error, botocore.exceptions.ParamValidationError):
        # botocore refused the request before sending it: nothing to retry, nothing sent.
        return UpstreamResult(
            ok=False, error=UpstreamError.UNEXPECTED, error_code="ParamValidation", no_effect=True
        )
    return UpstreamResult(ok=False, error=UpstreamError.UNEXPECTED, error_code=type(error).__name__)


def blank_undecodable_error_body(response_dict: dict[str, Any], **_: Any) -> None:
    """botocore's `before-parse` hook: an error answer whose body is not UTF-8 (a proxy's binary
    page, garbage) makes botocore's parser raise UnicodeDecodeError, which loses the HTTP status
    and skips the retry decision. Without its body the answer is classified by its status like
    any other unreadable error (a 4xx: Cognito refused, nothing happened)."""
    if int(response_dict.get("status_code", 0) or 0) < 300:
        return
    body = response_dict.get("body")
    if isinstance(body, bytes):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            response_dict["body"] = b""
