"""Forward AdminUpdateUserAttributes to Cognito with one boto3 client built at start.

A strict point of cut-off: `update` takes a validated domain request and returns an
UpstreamResult; no protobuf, policy or gRPC crosses it. Cognito's error messages never leave this
module (they may echo values); only its error codes and request ids do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from attrgate.domain import (
    AttributeSchema,
    PoolDescription,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
)
from attrgate.tracing import start_span

# The deadline of the call running in this thread, so the retry hook can stop retrying for a
# caller that has already gone (botocore has no per-call timeout).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# Whether the call in this thread makes Cognito send an SMS: then a retry after a read timeout or
# a 5xx could send a second message under one reservation, so only throttling and connection
# failures are retried.
_sms_write: contextvars.ContextVar[bool] = contextvars.ContextVar("sms_write", default=False)

# Told of every call sent: operation, seconds (retries included), Cognito's error code or "".
CallObserver = Callable[[str, float, str], None]


def _ignore(operation: str, seconds: float, error_code: str) -> None:
    pass


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


@dataclass(frozen=True)
class CognitoSettings:
    region: str
    endpoint_url: str | None = None
    threads: int = 64
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3
    # Static credentials for the local emulator only; production uses the standard chain.
    access_key_id: str | None = None
    secret_access_key: str | None = None


T = TypeVar("T")

# Calls allowed to wait for a free executor thread, per thread.
QUEUE_FACTOR = 4


class UpstreamConfigError(Exception):
    """The client cannot be built: attrgate must not start."""


def classify_client_error(error: botocore.exceptions.ClientError) -> UpstreamResult:
    response: dict[str, Any] = error.response
    code = str(response.get("Error", {}).get("Code", ""))
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode", 0) or 0)
    request_id = str(meta.get("RequestId", ""))
    kind = _BY_CODE.get(code)
    if kind is None:
        # botocore falls back to the HTTP status as the code when it cannot parse the body (an
        # XML 403 from an IAM layer, a proxy's HTML 502): only then does the status decide.
        if status in (401, 403):
            kind = UpstreamError.CREDENTIALS_REJECTED
        elif status == 429:
            kind = UpstreamError.THROTTLED
        elif status >= 500:
            kind = UpstreamError.UNAVAILABLE
        else:
            kind = UpstreamError.UNEXPECTED
    # A 4xx is Cognito refusing the call; after a 5xx nobody knows what happened.
    return UpstreamResult(
        ok=False, request_id=request_id, error=kind, error_code=code, no_effect=status < 500
    )


class MalformedResponse(Exception):
    """Cognito (or something on the way) answered 200 with a body that is not the answer."""


def classify_exception(error: BaseException) -> UpstreamResult:
    if isinstance(error, botocore.exceptions.ClientError):
        return classify_client_error(error)
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


class CognitoUpstream:
    """One boto3 cognito-idp client and the executor its blocking calls run in."""

    def __init__(self, settings: CognitoSettings, observe: CallObserver | None = None) -> None:
        self.settings = settings
        self._observe = observe or _ignore
        config = botocore.config.Config(
            region_name=settings.region,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
            max_pool_connections=settings.threads,
            user_agent_extra="attrgate",
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                region_name=settings.region,
            )
            if session.get_credentials() is None:
                raise UpstreamConfigError(
                    "no AWS credentials found (standard chain: environment, profile, web "
                    "identity, container or instance role)"
                )
            self.client = session.client(
                "cognito-idp", endpoint_url=settings.endpoint_url, config=config
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise UpstreamConfigError(f"cannot build the Cognito client: {exc}") from None
        quiet_botocore_bodies()
        self._known_codes = frozenset(_BY_CODE) | frozenset(
            shape.name for shape in self.client.meta.service_model.error_shapes
        )
        # First, so its False ("do not retry") is seen before the retry handler's delay.
        self.client.meta.events.register_first("needs-retry.cognito-idp", _stop_after_deadline)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="attrgate-cognito"
        )
        # Calls running or waiting for a thread. Past the limit, answer at once rather than
        # queue without bound behind a slow Cognito.
        self.max_pending = settings.threads * QUEUE_FACTOR
        self._pending = 0
        self._pending_lock = threading.Lock()

    def update_user_attributes_blocking(
        self, request: UpdateRequest, deadline: float | None, sms_write: bool = False
    ) -> UpstreamResult:
        if deadline is not None and time.monotonic() >= deadline:
            # The caller gave up while this call waited for a thread: never send a stale write.
            return UpstreamResult(
                ok=False,
                error=UpstreamError.DEADLINE_EXCEEDED,
                error_code="DeadlineExceeded",
                no_effect=True,
            )
        _deadline.set(deadline)
        _sms_write.set(sms_write)
        kwargs: dict[str, Any] = {
            "UserPoolId": request.user_pool_id,
            "Username": request.username,
            "UserAttributes": [{"Name": a.name, "Value": a.value} for a in request.attributes],
        }
        if request.client_metadata:
            kwargs["ClientMetadata"] = dict(request.client_metadata)
        response = self._call(
            "AdminUpdateUserAttributes", self.client.admin_update_user_attributes, **kwargs
        )
        if isinstance(response, UpstreamResult):
            return response
        return UpstreamResult(ok=True, request_id=_request_id(response))

    def describe_user_pool_blocking(self, pool_id: str) -> PoolDescription | UpstreamResult:
        """The pool's schema and verification settings, or the classified error."""

        def send(**kwargs: Any) -> dict[str, Any]:
            response = self.client.describe_user_pool(**kwargs)
            try:  # parsed within the call, so a garbled answer counts as a failed call
                return {"pool": pool_description(pool_id, response["UserPool"])}
            except (KeyError, TypeError, AttributeError, ValueError):
                raise MalformedResponse from None

        response = self._call("DescribeUserPool", send, UserPoolId=pool_id)
        if isinstance(response, UpstreamResult):
            return response
        pool: PoolDescription = response["pool"]
        return pool

    def user_sub_blocking(self, pool_id: str, username: str) -> str | UpstreamResult:
        """The user's immutable `sub` (aliases and spellings of a username share it)."""
        user = self._call(
            "AdminGetUser", self.client.admin_get_user, UserPoolId=pool_id, Username=username
        )
        if isinstance(user, UpstreamResult):
            return user
        for attribute in user.get("UserAttributes", []):
            if attribute.get("Name") == "sub":
                return str(attribute.get("Value", ""))
        return UpstreamResult(ok=False, error=UpstreamError.UNEXPECTED, error_code="NoSub")

    def _call(
        self, operation: str, send: Callable[..., dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any] | UpstreamResult:
        """One Cognito call (retries included) in a client span, timed and reported to
        `observe`: its response, or the classified error."""
        started = time.perf_counter()
        with _span(operation) as span:
            try:
                response = send(**kwargs)
            except Exception as exc:
                failed = classify_exception(exc)
                _annotate(span, failed)
                self._observe(operation, time.perf_counter() - started, self._label(exc, failed))
                return failed
            if request_id := _request_id(response):
                span.set_attribute("aws.request_id", request_id)
        self._observe(operation, time.perf_counter() - started, "")
        return response

    def _label(self, exc: Exception, failed: UpstreamResult) -> str:
        """The error code as a metric label: any endpoint can answer with any code, so codes
        Cognito's API does not define are counted together as `other`."""
        if isinstance(exc, botocore.exceptions.ClientError) and (
            failed.error_code not in self._known_codes
        ):
            return "other"
        return failed.error_code

    async def run(
        self, function: Callable[..., T | UpstreamResult], *args: Any
    ) -> T | UpstreamResult:
        """Run a blocking call of this client in its executor, with this context, within the
        same bound on waiting calls as the updates."""
        if not self._take_slot():
            return _overloaded()
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()

        def work() -> T | UpstreamResult:
            try:
                return function(*args)
            finally:
                self._free_slot()

        return await loop.run_in_executor(self._executor, context.run, work)

    def _take_slot(self) -> bool:
        with self._pending_lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
            return True

    def _free_slot(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def submit(
        self,
        request: UpdateRequest,
        deadline: float | None,
        on_result: Callable[[UpstreamResult], None],
        sms_write: bool = False,
    ) -> asyncio.Future[UpstreamResult]:
        """Start the call in the executor, carrying this context (trace parent) into the thread.

        `on_result` runs in the worker thread once the outcome is known, so an outcome is
        recorded even when the caller has gone or the event loop has closed.
        """
        loop = asyncio.get_running_loop()
        if not self._take_slot():
            future: asyncio.Future[UpstreamResult] = loop.create_future()
            future.set_result(_overloaded())
            return future
        context = contextvars.copy_context()
        return loop.run_in_executor(
            self._executor, context.run, self._run, request, deadline, on_result, sms_write
        )

    def _run(
        self,
        request: UpdateRequest,
        deadline: float | None,
        on_result: Callable[[UpstreamResult], None],
        sms_write: bool,
    ) -> UpstreamResult:
        try:
            result = self.update_user_attributes_blocking(request, deadline, sms_write)
            on_result(result)
            return result
        finally:
            self._free_slot()

    def close(self) -> None:
        """Drop calls still waiting for a thread (never sent); running ones finish and record."""
        self._executor.shutdown(wait=False, cancel_futures=True)


STANDARD_ATTRIBUTES = (
    "address",
    "birthdate",
    "email",
    "email_verified",
    "family_name",
    "gender",
    "given_name",
    "locale",
    "middle_name",
    "name",
    "nickname",
    "phone_number",
    "phone_number_verified",
    "picture",
    "preferred_username",
    "profile",
    "updated_at",
    "website",
    "zoneinfo",
)
# Cognito's own types for the standard attributes it may leave out of SchemaAttributes.
_STANDARD_TYPES = {"email_verified": "Boolean", "phone_number_verified": "Boolean"}
_STANDARD_NUMBERS = {"updated_at"}


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def pool_description(pool_id: str, pool: dict[str, Any]) -> PoolDescription:
    """DescribeUserPool's answer as a plain value. Standard attributes always exist: real
    Cognito lists them with their settings, emulators may not, so the list fills the gaps."""
    attributes: dict[str, AttributeSchema] = {
        name: AttributeSchema(
            name,
            data_type="Number"
            if name in _STANDARD_NUMBERS
            else _STANDARD_TYPES.get(name, "String"),
        )
        for name in STANDARD_ATTRIBUTES
    }
    for raw in pool.get("SchemaAttributes") or []:
        name = str(raw.get("Name", ""))
        if not name:
            continue
        strings = raw.get("StringAttributeConstraints") or {}
        numbers = raw.get("NumberAttributeConstraints") or {}
        attributes[name] = AttributeSchema(
            name,
            data_type=str(raw.get("AttributeDataType", "String")),
            mutable=bool(raw.get("Mutable", True)),
            min_length=_int(strings.get("MinLength")) if "MinLength" in strings else None,
            max_length=_int(strings.get("MaxLength")) if "MaxLength" in strings else None,
            min_value=_int(numbers.get("MinValue")) if "MinValue" in numbers else None,
            max_value=_int(numbers.get("MaxValue")) if "MaxValue" in numbers else None,
        )
    settings = pool.get("UserAttributeUpdateSettings") or {}
    return PoolDescription(
        pool_id=pool_id,
        attributes=attributes,
        auto_verified=frozenset(pool.get("AutoVerifiedAttributes") or ()),
        verify_before_update=frozenset(
            settings.get("AttributesRequireVerificationBeforeUpdate") or ()
        ),
    )


def _span(operation: str) -> AbstractContextManager[Span]:
    """A client span for one Cognito call. It runs in an executor thread whose context was
    copied from the request, so it is parented under the server span."""
    return start_span(
        f"cognito-idp.{operation}",
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "aws-api", "rpc.service": "cognito-idp", "rpc.method": operation},
    )


def _annotate(span: Any, failed: UpstreamResult) -> None:
    if failed.request_id:
        span.set_attribute("aws.request_id", failed.request_id)
    span.set_attribute("attrgate.cognito.error_code", failed.error_code)
    span.set_status(Status(StatusCode.ERROR, failed.error_code))


def _request_id(response: dict[str, Any]) -> str:
    return str(response.get("ResponseMetadata", {}).get("RequestId", ""))


def _overloaded() -> UpstreamResult:
    return UpstreamResult(
        ok=False, error=UpstreamError.OVERLOADED, error_code="TooManyPendingCalls", no_effect=True
    )


def quiet_botocore_bodies() -> None:
    """botocore logs whole requests and responses at DEBUG: attribute values and usernames.
    Drop those records wherever logging is configured, not only from the CLI."""
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropDebug) for f in logger.filters):
            logger.addFilter(_DropDebug())


_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.httpchecksum")


class _DropDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def _stop_after_deadline(
    response: Any = None, caught_exception: BaseException | None = None, **_: Any
) -> bool | None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        return False
    if _sms_write.get() and _maybe_delivered(response, caught_exception):
        return False
    return None


def _maybe_delivered(response: Any, caught_exception: BaseException | None) -> bool:
    """The attempt may have reached Cognito: a 5xx, or a connection lost after sending."""
    if caught_exception is not None:
        return not isinstance(
            caught_exception,
            botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError,
        )
    if response is not None:
        status = int(response[0].status_code) if response[0] is not None else 0
        return status >= 500
    return False
