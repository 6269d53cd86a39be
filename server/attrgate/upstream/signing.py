"""A Cognito request serialised and signed by botocore's own code, ready for the wire.

The body is botocore's serializer's (the operation's protocol), validated as the client validates
it; the signature is botocore's `SigV4Auth`, the signer the boto3 client uses, with credentials
from the session's chain. Refreshable credentials (a role, web identity, the container's) are
refreshed in a thread: botocore's refresh blocks on the network and must not stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from functools import partial
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from attrgate.upstream.endpoint import Endpoint


class CredentialsUnavailable(Exception):
    """The chain could not give credentials (a refresh failed): this attempt was not sent.
    `no_effect`: nor did an earlier one reach Cognito (set by the caller, which knows)."""

    def __init__(self, why: str, no_effect: bool = True) -> None:
        super().__init__(why)
        self.no_effect = no_effect


class CredentialSource:
    """The chain's current credentials, frozen (a key pair and its token always match).

    As botocore does: in the advisory window (15 minutes before expiry) the current credentials
    still sign while one refresh runs; only in the mandatory window (10 minutes) or past expiry
    do calls wait for it. A refresh runs in a daemon thread of its own: botocore's blocks on the
    network (STS, a credential process it waits for without a timeout), and one that hangs must
    not keep the process from exiting (the default executor is joined at exit)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._frozen = credentials.get_frozen_credentials()
        self._refreshing: asyncio.Future[Any] | None = None

    def current(self) -> Any | None:
        """The credentials to sign with now, or None: the caller must go through `frozen`."""
        needed = getattr(self._credentials, "refresh_needed", None)
        if needed is None:
            return self._frozen  # static credentials
        refreshing = self._refreshing
        if (refreshing is not None and not refreshing.done()) or needed():
            return None
        return self._frozen

    async def frozen(self) -> Any:
        """Raises CredentialsUnavailable when the refresh waited for fails, or leaves the
        credentials in the mandatory window. Cancelling the wait (a deadline) leaves the refresh
        running for the next call."""
        current = self.current()
        if current is not None:
            return current
        needed = self._credentials.refresh_needed
        mandatory = getattr(self._credentials, "_mandatory_refresh_timeout", 600)
        refreshing = self._refresh()
        if needed() and not needed(mandatory):
            return self._frozen  # advisory: the current ones are still good meanwhile
        # Mandatory, or a refresh whose thread has just ended (botocore holds the new ones, the
        # loop not yet): wait for it. One begun in the advisory window that failed keeps the old
        # credentials without an error (botocore decides advisory or mandatory when a refresh
        # begins), expired ones too if it outlasted them: one more, mandatory now, then refuse
        # to sign with expired credentials (as botocore's mandatory refresh does).
        for _ in range(2):
            try:
                self._frozen = await asyncio.shield(refreshing)
            except Exception as exc:
                raise CredentialsUnavailable(type(exc).__name__) from None
            if not needed(0):
                return self._frozen
            refreshing = self._refresh()
        raise CredentialsUnavailable("the refreshed credentials are expired")

    def _refresh(self) -> asyncio.Future[Any]:
        """The refresh under way, or a new one."""
        if self._refreshing is None or self._refreshing.done():
            loop = asyncio.get_running_loop()
            refreshing: asyncio.Future[Any] = loop.create_future()
            refreshing.add_done_callback(self._refreshed)
            threading.Thread(
                target=self._run_refresh,
                args=(loop, refreshing),
                name="attrgate-credentials",
                daemon=True,
            ).start()
            self._refreshing = refreshing
        return self._refreshing

    def _run_refresh(
        self, loop: asyncio.AbstractEventLoop, refreshing: asyncio.Future[Any]
    ) -> None:
        try:
            outcome = self._credentials.get_frozen_credentials()
        except Exception as exc:
            settle = partial(_fail, refreshing, exc)
        else:
            settle = partial(_succeed, refreshing, outcome)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle)

    def _refreshed(self, refreshing: asyncio.Future[Any]) -> None:
        # Read here, so a refresh nobody waited for neither logs "never retrieved" nor is lost.
        if not refreshing.cancelled() and refreshing.exception() is None:
            self._frozen = refreshing.result()


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


class Serialized:
    """One call's serialised request: the same bytes for every attempt (each signed anew)."""

    __slots__ = ("body", "headers", "method", "operation")

    def __init__(self, operation: str, method: str, headers: dict[str, str], body: bytes) -> None:
        self.operation = operation
        self.method = method
        self.headers = headers
        self.body = body


class Signer:
    def __init__(self, endpoint: Endpoint, service_model: Any) -> None:
        self.endpoint = endpoint
        self._model = service_model
        self._serializer = create_serializer(service_model.metadata["protocol"])
        # The Host header as the signer derives it from the URL when a request has none (as the
        # boto3 client's have not: urllib3 adds it after). Set once here, the signer no longer
        # parses the URL twice per signature (a fifth of its time); the value on the wire and
        # in the canonical request is the same.
        probe = AWSRequest(method="POST", url=endpoint.url)
        self._host = SigV4Auth(None, "", "").headers_to_sign(probe)["host"]

    def serialize(self, operation: str, params: dict[str, Any]) -> Serialized:
        """Raises botocore's ParamValidationError as the client would, before anything is sent."""
        model = self._model.operation_model(operation)
        validate_parameters(params, model.input_shape)
        request = self._serializer.serialize_to_request(params, model)
        body = request["body"]
        return Serialized(
            operation,
            request["method"],
            dict(request["headers"]),
            body if isinstance(body, bytes) else body.encode(),
        )

    def sign(self, serialized: Serialized, credentials: Any) -> list[tuple[str, str]]:
        """The headers of one attempt, signed now (botocore signs every attempt anew)."""
        endpoint = self.endpoint
        request = AWSRequest(
            method=serialized.method,
            url=endpoint.url,
            headers={**serialized.headers, "Host": self._host},
            data=serialized.body,
        )
        SigV4Auth(credentials, endpoint.signing_name, endpoint.signing_region).add_auth(request)
        signed = [(name, _text(value)) for name, value in request.headers.items()]
        # Never signed (SigV4 leaves User-Agent out): added after, so the signer skips it.
        signed.append(("User-Agent", endpoint.user_agent))
        return signed


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
