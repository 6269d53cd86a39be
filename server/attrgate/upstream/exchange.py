"""One Cognito operation on the event loop, attempts and retries included, as botocore's endpoint
runs it in a thread: serialise and validate once, sign and send each attempt, parse the answer
with botocore's parser, and ask the client's own `needs-retry` handlers (attrgate's RetryGate
first, then the standard retry mode: its conditions, jittered backoff and retry quota) whether
and when to try again. Only the sending and the sleeping differ: both are awaited, not blocked on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import botocore.exceptions
from botocore.hooks import first_non_none_response
from botocore.parsers import create_parser

from attrgate.upstream.retries import SCOPE_KEY, AttemptWithdrawn, CallScope, RetryGate
from attrgate.upstream.signing import (
    CredentialSource,
    CredentialsUnavailable,
    Serialized,
    Signer,
)
from attrgate.upstream.transport import Answer, Transport


class Exchange:
    def __init__(
        self,
        client: Any,
        signer: Signer,
        credentials: CredentialSource,
        transport: Transport,
        gate: RetryGate,
        max_attempts: int,
    ) -> None:
        self._events = client.meta.events
        self._model = client.meta.service_model
        self._service = self._model.service_id.hyphenize()
        self._signer = signer
        self._credentials = credentials
        self._transport = transport
        self._gate = gate
        self._max_attempts = max_attempts
        self._parser = create_parser(self._model.metadata["protocol"])

    async def call(
        self, operation: str, params: dict[str, Any], scope: CallScope
    ) -> dict[str, Any]:
        """The parsed answer, or botocore's exception for the failure (ClientError for an error
        answer), as the client's method would return or raise it."""
        model = self._model.operation_model(operation)
        serialized = self._signer.serialize(operation, params)
        request_dict: dict[str, Any] = {"context": {SCOPE_KEY: scope}}
        invocation = str(uuid.uuid4())
        attempts = 0
        while True:
            attempts += 1
            answer: Answer | None = None
            parsed: Any = None
            caught: Exception | None = None
            # Credentials and the signature before the attempt, as botocore signs before it
            # sends: a failure here is raised as is, never retried, and nothing was sent.
            headers = await self._signed(serialized, scope, invocation, attempts)
            try:
                # After any wait for credentials: right before the bytes go out.
                self._gate.before_attempt(scope)
                answer = await self._transport.send(serialized.method, headers, serialized.body)
            except Exception as exc:
                caught = exc  # botocore asks needs-retry about every failed attempt
            else:
                # As botocore: an answer its parser cannot read is raised, never retried.
                parsed = self._parse(model, answer)
            delay = self._retry_delay(model, attempts, answer, parsed, caught, request_dict)
            if delay is None:
                break
            await asyncio.sleep(delay)
        if caught is not None:
            raise caught
        assert answer is not None
        self._events.emit(
            f"after-call.{self._service}.{operation}",
            http_response=answer,
            parsed=parsed,
            model=model,
            context=request_dict["context"],
        )
        if answer.status_code >= 300:
            raise botocore.exceptions.ClientError(parsed, operation)
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = attempts - 1
        result: dict[str, Any] = parsed
        return result

    async def _signed(
        self, serialized: Serialized, scope: CallScope, invocation: str, attempt: int
    ) -> list[tuple[str, str]]:
        credentials = self._credentials.current()
        if credentials is None:
            remaining = None if scope.deadline is None else scope.deadline - time.monotonic()
            try:
                async with asyncio.timeout(remaining):  # a refresh waited for ends at the deadline
                    credentials = await self._credentials.frozen()
            except TimeoutError:
                no_effect = not scope.attempts.maybe_delivered
                raise AttemptWithdrawn("the caller's deadline passed", True, no_effect) from None
            except CredentialsUnavailable as exc:
                exc.no_effect = not scope.attempts.maybe_delivered  # an earlier attempt may have
                raise
        headers = self._signer.sign(serialized, credentials)
        headers.append(("amz-sdk-invocation-id", invocation))
        headers.append(("amz-sdk-request", f"attempt={attempt}; max={self._max_attempts}"))
        return headers

    def _parse(self, model: Any, answer: Answer) -> Any:
        response_dict = {
            "headers": answer.headers,
            "status_code": answer.status_code,
            "context": {"operation_name": model.name},
            "body": answer.content,
        }
        customized: dict[str, Any] = {}
        self._events.emit(
            f"before-parse.{self._service}.{model.name}",
            operation_model=model,
            response_dict=response_dict,
            customized_response_dict=customized,
        )
        parsed = self._parser.parse(response_dict, model.output_shape)
        parsed.update(customized)
        return parsed

    def _retry_delay(
        self,
        model: Any,
        attempts: int,
        answer: Answer | None,
        parsed: Any,
        caught: Exception | None,
        request_dict: dict[str, Any],
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: this attempt's outcome stands."""
        responses = self._events.emit(
            f"needs-retry.{self._service}.{model.name}",
            response=None if answer is None else (answer, parsed),
            endpoint=None,
            operation=model,
            attempts=attempts,
            caught_exception=caught,
            request_dict=request_dict,
        )
        delay = first_non_none_response(responses)
        if delay is None or delay is False:
            return None
        return float(delay)
