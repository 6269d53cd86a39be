"""Forward AdminUpdateUserAttributes (and the metadata lookups) to Cognito on the event loop.

A strict point of cut-off: `submit` takes a validated domain request and hands back an
UpstreamResult; no protobuf, policy or gRPC crosses it. Cognito's error messages never leave this
package (they may echo values); only documented error codes and request ids do (classify.py).

boto3 resolves credentials, region and endpoint and its client rehearses the request once
(endpoint.py); every call is then serialised and signed by botocore's own code (signing.py), sent
with aiohttp (transport.py) and retried as the client's standard retry mode decides (exchange.py):
no thread per call, and no cap on calls in flight but the quota governor's bulkheads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import boto3
import botocore
import botocore.config
import botocore.exceptions
import botocore.session
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
from attrgate.upstream.endpoint import rehearse
from attrgate.upstream.exchange import Exchange
from attrgate.upstream.retries import CallScope, RetryGate, botocore_too_old
from attrgate.upstream.signing import CredentialSource, Signer
from attrgate.upstream.transport import Transport

# Told of every call sent: operation, seconds (retries included), its public error code or "".
CallObserver = Callable[[str, float, str], None]
OPERATIONS = ("AdminUpdateUserAttributes", "DescribeUserPool", "AdminGetUser")


def _ignore(operation: str, seconds: float, error_code: str) -> None:
    pass


@dataclass(frozen=True)
class CognitoSettings:
    region: str
    endpoint_url: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_attempts: int = 3
    # Static credentials for the local emulator only; production uses the standard chain.
    access_key_id: str | None = None
    secret_access_key: str | None = None


# Seconds close() waits beyond one attempt's connect and read timeouts.
CLOSE_MARGIN = 1.0


class UpstreamConfigError(Exception):
    """The client cannot be built: attrgate must not start."""


class CognitoUpstream:
    """One boto3 session and client (resolution, the retry mode) and the calls on the loop."""

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
            user_agent_extra="attrgate",
        )
        try:
            core = botocore.session.get_session()  # its config: the CA bundle to verify with
            session = boto3.session.Session(
                botocore_session=core,
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                region_name=settings.region,
            )
            credentials = session.get_credentials()
            if credentials is None:
                raise UpstreamConfigError(
                    "no AWS credentials found (standard chain: environment, profile, web "
                    "identity, container or instance role)"
                )
            self.client = session.client(
                "cognito-idp", endpoint_url=settings.endpoint_url, config=config
            )
            endpoint = rehearse(self.client)
            source = CredentialSource(credentials)
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise UpstreamConfigError(f"cannot build the Cognito client: {exc}") from None
        quiet_botocore_bodies()
        model = self.client.meta.service_model
        self._documented = {op: documented_codes(model, op) for op in OPERATIONS}
        events = self.client.meta.events
        events.register("before-parse.cognito-idp", blank_undecodable_error_body)
        self.retries = RetryGate(settings.max_attempts)
        self.retries.register(events)
        ca_bundle = core.get_config_variable("ca_bundle")
        self._transport = Transport(
            endpoint.url, settings.connect_timeout, settings.read_timeout, ca_bundle
        )
        self._exchange = Exchange(
            self.client,
            Signer(endpoint, model),
            source,
            self._transport,
            self.retries,
            settings.max_attempts,
        )
        self._running: set[asyncio.Task[UpstreamResult]] = set()

    async def _update(self, request: UpdateRequest, scope: CallScope) -> UpstreamResult:
        params: dict[str, Any] = {
            "UserPoolId": request.user_pool_id,
            "Username": request.username,
            "UserAttributes": [{"Name": a.name, "Value": a.value} for a in request.attributes],
        }
        if request.client_metadata:
            params["ClientMetadata"] = dict(request.client_metadata)
        response = await self._call("AdminUpdateUserAttributes", params, scope)
        if isinstance(response, UpstreamResult):
            return response
        return UpstreamResult(ok=True, request_id=_request_id(response))

    async def describe_user_pool(self, pool_id: str) -> PoolDescription | UpstreamResult:
        """The pool's schema and verification settings, or the classified error."""
        response = await self._call(
            "DescribeUserPool", {"UserPoolId": pool_id}, _lookup_scope(), _describe(pool_id)
        )
        if isinstance(response, UpstreamResult):
            return response
        pool: PoolDescription = response["pool"]
        return pool

    async def user_sub(self, pool_id: str, username: str) -> str | UpstreamResult:
        """The user's immutable `sub` (aliases and spellings of a username share it)."""
        user = await self._call(
            "AdminGetUser", {"UserPoolId": pool_id, "Username": username}, _lookup_scope()
        )
        if isinstance(user, UpstreamResult):
            return user
        for attribute in user.get("UserAttributes", []):
            if attribute.get("Name") == "sub":
                return str(attribute.get("Value", ""))
        return UpstreamResult(ok=False, error=UpstreamError.UNEXPECTED, error_code="NoSub")

    async def _call(
        self,
        operation: str,
        params: dict[str, Any],
        scope: CallScope,
        read: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any] | UpstreamResult:
        """One Cognito call (retries included) in a client span, timed and reported to
        `observe`: its response (`read` from it, so a garbled answer counts as a failed call),
        or the classified error."""
        started = time.perf_counter()
        with _span(operation) as span:
            try:
                response = await self._exchange.call(operation, params, scope)
                if read is not None:
                    response = read(response)
            except Exception as exc:
                failed = classify_exception(exc, self._documented[operation])
                _annotate(span, failed)
                self._observe(operation, time.perf_counter() - started, failed.error_code)
                return failed
            if request_id := _request_id(response):
                span.set_attribute("aws.request_id", request_id)
        self._observe(operation, time.perf_counter() - started, "")
        return response

    def submit(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> asyncio.Future[UpstreamResult]:
        """Start the update as a task of its own (it carries this context: the trace parent).
        `call.complete` hears the outcome when the call ends, so it is recorded even when the
        caller has gone; a caller giving up never cancels the task (the write may be at Cognito:
        its outcome decides), it only stops any retry (`call.gone`)."""
        task = asyncio.get_running_loop().create_task(self._run(request, deadline, call, sms_write))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _run(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> UpstreamResult:
        if deadline is not None and time.monotonic() >= deadline:
            result = _DEADLINE_PASSED  # never send a stale write
        elif call.gone():
            result = _NOT_SENT
        else:
            scope = CallScope(
                deadline,
                sms_write,
                call.gone,
                retry_token=call.retry_token,
                throttled=call.throttled,
            )
            try:
                result = await self._update(request, scope)
            except BaseException:
                # Cancelled (only close() and the loop's teardown cancel a call), or a failure
                # of attrgate's own: an attempt sent may have reached Cognito, so the outcome
                # is unknown (any SMS reservation is kept), and it is still recorded.
                call.complete(_CANCELLED if scope.attempts.sent else _NOT_SENT)
                raise
        call.complete(result)
        return result

    async def close(self) -> None:
        """No retry starts any more; calls in flight finish and record their outcome (each is
        one attempt at most now, bounded by the connect and read timeouts). One still running
        after those (waiting for a credential refresh that hangs, or in a backoff that ends in
        a withdrawal) is cancelled and recorded as of unknown outcome."""
        self.retries.stop()
        settings = self.settings
        bound = settings.connect_timeout + settings.read_timeout + CLOSE_MARGIN
        if self._running:
            await asyncio.wait(set(self._running), timeout=bound)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._transport.close()


def _lookup_scope() -> CallScope:
    # A lookup runs in its caller's task: a caller giving up cancels it outright.
    return CallScope(lookup=True)


def _describe(pool_id: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def read(response: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"pool": pool_description(pool_id, response["UserPool"])}
        except (KeyError, TypeError, AttributeError, ValueError):
            raise MalformedResponse from None

    return read


_NOT_SENT = UpstreamResult(
    ok=False, error=UpstreamError.DEADLINE_EXCEEDED, error_code="CallerGone", no_effect=True
)
_CANCELLED = UpstreamResult(ok=False, error=UpstreamError.UNAVAILABLE, error_code="Cancelled")
_DEADLINE_PASSED = UpstreamResult(
    ok=False, error=UpstreamError.DEADLINE_EXCEEDED, error_code="DeadlineExceeded", no_effect=True
)


def _span(operation: str) -> AbstractContextManager[Span]:
    """A client span for one Cognito call. It runs in a task of its own whose context was
    copied from the request's, so it is parented under the server span."""
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
