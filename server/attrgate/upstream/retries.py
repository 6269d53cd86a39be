"""attrgate's one say in botocore's retries (the standard retry mode decides the rest): no retry
starts for a caller that has gone, after its deadline, once the server is stopping, or, for a write
that makes Cognito send an SMS, after an attempt that may have reached Cognito (a retry could send
a second message under one reservation).

The gate answers botocore's `needs-retry` event with False for "do not retry". botocore before
1.43.3 took any answer but None, False included, as "retry after this many seconds" (a call past
its deadline was re-sent at once, over and over): pyproject.toml requires botocore>=1.43.3, and
`make test-floors` runs the retry tests against the lowest versions it allows.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class CallScope:
    """What the gate knows of the call running in this thread."""

    deadline: float | None = None  # time.monotonic() when the caller stops waiting
    sms_write: bool = False
    gone: Callable[[], bool] = _never  # the caller has given up (cancelled, or the server did)


_NO_SCOPE = CallScope()
_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "attrgate_call_scope", default=None
)


def enter_scope(scope: CallScope) -> None:
    """Set the scope of the call this thread runs. Called inside the context copied for the
    call (`contextvars.copy_context().run`), so it ends with the call."""
    _scope.set(scope)


def current_scope() -> CallScope:
    return _scope.get() or _NO_SCOPE


class RetryGate:
    """Registered first on a client's `needs-retry` event, so its False is seen before the retry
    handler's delay."""

    def __init__(self) -> None:
        self._stopping = threading.Event()

    def register(self, events: Any, service_id: str = "cognito-idp") -> None:
        events.register_first(f"needs-retry.{service_id}", self.needs_retry)

    def stop(self) -> None:
        """The server is stopping: no retry starts from now on."""
        self._stopping.set()

    def needs_retry(
        self, response: Any = None, caught_exception: BaseException | None = None, **_: Any
    ) -> bool | None:
        scope = current_scope()
        if self._stopping.is_set() or scope.gone():
            return False
        if scope.deadline is not None and time.monotonic() >= scope.deadline:
            return False
        if scope.sms_write and _maybe_delivered(response, caught_exception):
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
