"""Forward AdminUpdateUserAttributes to Cognito with one boto3 client built at start.

A strict point of cut-off: `submit` takes a validated domain request and hands back an
UpstreamResult; no protobuf, policy or gRPC crosses it. Cognito's error messages never leave this
package (they may echo values); only documented error codes and request ids do (classify.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore
import botocore.config
import botocore.exceptions
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from attrgate.domain import (
    PendingCall,
    PoolDescription,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
)
from attrgate.tracing import start_span
from attrgate.upstream.classify import (
    MalformedResponse,
    blank_undecodable_error_body,
    classify_exception,
    documented_codes,
    public_request_id,
)
from attrgate.upstream.describe import pool_description
from attrgate.upstream.executor import BoundedExecutor
from attrgate.upstream.retries import CallScope, RetryGate, botocore_too_old, enter_scope

# Told of every call sent: operation, seconds (retries included), its public error code or "".
CallObserver = Callable[[str, float, str], None]
OPERATIONS = ("AdminUpdateUserAttributes", "DescribeUserPool", "AdminGetUser")


def _ignore(operation: str, seconds: float, error_code: str) -> None:
    pass


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


class CognitoUpstream:
    """One boto3 cognito-idp client and the executor its blocking calls run in."""

    def __init__(self, settings: CognitoSettings, observe: CallObserver | None = None) -> None:
        too_old = botocore_too_old(botocore.__version__)
        if too_old:
            raise UpstreamConfigError(too_old)
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
        model = self.client.meta.service_model
        self._documented = {op: documented_codes(model, op) for op in OPERATIONS}
        events = self.client.meta.events
        events.register("before-parse.cognito-idp", blank_undecodable_error_body)
        self.retries = RetryGate(settings.max_attempts)
        self.retries.register(events)
        self._executor = BoundedExecutor(
            settings.threads, settings.threads * QUEUE_FACTOR, "attrgate-cognito"
        )

    def _update_blocking(self, request: UpdateRequest) -> UpstreamResult:
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
                failed = classify_exception(exc, self._documented[operation])
                _annotate(span, failed)
                self._observe(operation, time.perf_counter() - started, failed.error_code)
                return failed
            if request_id := _request_id(response):
                span.set_attribute("aws.request_id", request_id)
        self._observe(operation, time.perf_counter() - started, "")
        return response

    async def run(
        self, function: Callable[..., T | UpstreamResult], *args: Any
    ) -> T | UpstreamResult:
        """Run a blocking call of this client (DescribeUserPool, AdminGetUser) in its executor,
        with this context, within the same bound on waiting calls as the updates. A caller
        giving up cancels the call if it still waits for a thread, and stops its retries if it
        runs."""
        gone = threading.Event()
        future = self._executor.submit(
            contextvars.copy_context().run,
            _scoped,
            CallScope(gone=gone.is_set, lookup=True),
            function,
            *args,
        )
        if future is None:
            return _overloaded()
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            gone.set()
            raise

    def submit(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> asyncio.Future[UpstreamResult]:
        """Start the update in the executor, carrying this context (trace parent) into the
        thread. `call.complete` hears the outcome in the worker thread, so it is recorded even
        when the caller has gone or the event loop has closed; a call dropped while waiting for
        a thread (the server closing) completes as never sent."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = self._executor.submit(context.run, self._run, request, deadline, call, sms_write)
        if future is None:
            done: asyncio.Future[UpstreamResult] = loop.create_future()
            done.set_result(_overloaded())
            return done
        future.add_done_callback(lambda f: call.complete(_NOT_SENT) if f.cancelled() else None)
        return asyncio.wrap_future(future, loop=loop)

    def _run(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> UpstreamResult:
        if deadline is not None and time.monotonic() >= deadline:
            # The caller gave up while this call waited for a thread: never send a stale write.
            result = _DEADLINE_PASSED
        elif call.gone():
            result = _NOT_SENT
        else:
            enter_scope(
                CallScope(
                    deadline,
                    sms_write,
                    call.gone,
                    retry_token=call.retry_token,
                    throttled=call.throttled,
                )
            )
            result = self._update_blocking(request)
        call.complete(result)
        return result

    def close(self, wait: bool = False) -> None:
        """No retry starts any more; calls still waiting for a thread are dropped (never sent);
        running ones finish and record their outcome (`wait`: and are waited for; each is one
        attempt at most, bounded by the connect and read timeouts)."""
        self.retries.stop()
        self._executor.shutdown(wait)


def _scoped(scope: CallScope, function: Callable[..., T], *args: Any) -> T:
    enter_scope(scope)
    return function(*args)


_NOT_SENT = UpstreamResult(
    ok=False, error=UpstreamError.DEADLINE_EXCEEDED, error_code="CallerGone", no_effect=True
)
_DEADLINE_PASSED = UpstreamResult(
    ok=False, error=UpstreamError.DEADLINE_EXCEEDED, error_code="DeadlineExceeded", no_effect=True
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
    return public_request_id(str(response.get("ResponseMetadata", {}).get("RequestId", "")))


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
