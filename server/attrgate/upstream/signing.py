"""A Cognito request serialised and signed by botocore's own code, ready for the wire.

The body is botocore's serializer's (the operation's protocol), validated as the client validates
it; the signature is botocore's `SigV4Auth`, the signer the boto3 client uses, with credentials
from the session's chain. Refreshable credentials (a role, web identity, the container's) are
refreshed in a thread: botocore's refresh blocks on the network and must not stall the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from attrgate.upstream.endpoint import Endpoint


class CredentialsUnavailable(Exception):
    """The chain could not give credentials (a refresh failed): nothing was sent."""


class CredentialSource:
    """The chain's current credentials, frozen (a key pair and its token always match).

    As botocore does: in the advisory window (15 minutes before expiry) the current credentials
    still sign while one refresh runs; only in the mandatory window (10 minutes) or past expiry
    do calls wait for it."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._frozen = credentials.get_frozen_credentials()
        self._refreshing: asyncio.Future[Any] | None = None

    def current(self) -> Any | None:
        """The credentials to sign with now, or None: the caller must wait (`frozen`)."""
        needed = getattr(self._credentials, "refresh_needed", None)
        if needed is None or not needed():
            return self._frozen
        return None

    async def frozen(self) -> Any:
        """Raises CredentialsUnavailable when the refresh waited for fails. Cancelling the wait
        (a deadline) leaves the refresh running for the next call."""
        needed = getattr(self._credentials, "refresh_needed", None)
        if needed is None or not needed():
            return self._frozen
        refreshing = self._refresh()
        mandatory = getattr(self._credentials, "_mandatory_refresh_timeout", 600)
        if not needed(mandatory) and not refreshing.done():
            return self._frozen
        try:
            self._frozen = await asyncio.shield(refreshing)
        except Exception as exc:
            raise CredentialsUnavailable(type(exc).__name__) from None
        return self._frozen

    def _refresh(self) -> asyncio.Future[Any]:
        """The refresh under way, or a new one. botocore's refresh blocks on the network (STS,
        a credential process): it runs in a thread."""
        if self._refreshing is None or self._refreshing.done():
            refreshing = asyncio.ensure_future(
                asyncio.to_thread(self._credentials.get_frozen_credentials)
            )
            refreshing.add_done_callback(self._refreshed)
            self._refreshing = refreshing
        return self._refreshing

    def _refreshed(self, refreshing: asyncio.Future[Any]) -> None:
        # Read here, so a refresh nobody waited for neither logs "never retrieved" nor is lost.
        if not refreshing.cancelled() and refreshing.exception() is None:
            self._frozen = refreshing.result()


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
            headers=serialized.headers,
            data=serialized.body,
        )
        SigV4Auth(credentials, endpoint.signing_name, endpoint.signing_region).add_auth(request)
        signed = [(name, _text(value)) for name, value in request.headers.items()]
        # Never signed (SigV4 leaves User-Agent out): added after, so the signer skips it.
        signed.append(("User-Agent", endpoint.user_agent))
        return signed


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
