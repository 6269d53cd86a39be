"""attrgate's say in botocore's retries (the standard retry mode decides the rest).

No retry starts for a caller that has gone, after its deadline, once the server is stopping, or,
for a write that makes Cognito send an SMS, after an attempt that may have reached Cognito (a
retry could send a second message under one reservation). A metadata lookup (DescribeUserPool,
AdminGetUser) is retried only when its attempt never reached Cognito: a throttled lookup retried
would spend the account's quota three times for one budget token.

Two hooks, because botocore decides to retry and then sleeps its backoff before sending again:
- `needs-retry` (first, so its False, "do not retry", is seen before the retry handler's delay);
- `before-send`, checked again right before every attempt goes out: a caller that left, a
  deadline that passed or a server that began stopping during the backoff withdraws the attempt
  (AttemptWithdrawn), and the withdrawal is itself never retried.

botocore before 1.43.3 took any answer of a `needs-retry` handler but None, False included, as
"retry after this many seconds" (a call past its deadline was re-sent at once, over and over):
pyproject.toml requires botocore>=1.43.3, and `make test-floors` runs the suite on it.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

# The first botocore that reads a needs-retry handler's False as "do not retry".
BOTOCORE_FLOOR = (1, 43, 3)


def botocore_too_old(version: str) -> str | None:
    """Why attrgate must not run on this botocore (pyproject.toml's floor may be bypassed: an
    image that pins its own botocore, a PYTHONPATH), or None."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers >= BOTOCORE_FLOOR:
        return None
    floor = ".".join(map(str, BOTOCORE_FLOOR))
    return (
        f"botocore {version} is older than {floor}: it would take attrgate's 'do not retry' for "
        "'retry at once' (a write re-sent without end); install botocore and boto3 >= "
        f"{floor}"
    )


def _never() -> bool:
    return False


def _always() -> bool:
    return True


def _nothing() -> None:
    pass


# Cognito's answers that mean "slow down" (the account's quota, or one user's).
THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "LimitExceededException"}
)


@dataclass(slots=True)
class Attempts:
    """What happened to one call's attempts so far (its thread alone writes them)."""

    sent: int = 0
    maybe_delivered: bool = False  # an attempt may have reached Cognito (a 5xx, a lost reply)


@dataclass(frozen=True, slots=True)
class CallScope:
    """What the gate knows of the call running in this thread."""

    deadline: float | None = None  # time.monotonic() when the caller stops waiting
    sms_write: bool = False
    gone: Callable[[], bool] = _never  # the caller has given up (cancelled, or the server did)
    lookup: bool = (
        False  # DescribeUserPool, AdminGetUser: retried only when nothing reached Cognito
    )
    attempts: Attempts = field(default_factory=Attempts)
    # The quota governor's: a token for a retry about to be sent (False: no retry), and told of
    # every throttled attempt (quota/governor.Ticket).
    retry_token: Callable[[], bool] = _always
    throttled: Callable[[], None] = _nothing


class AttemptWithdrawn(Exception):
    """An attempt (a retry, after the backoff) not sent: its caller has gone, its deadline has
    passed, or the server is stopping. `no_effect`: no earlier attempt can have reached Cognito."""

    def __init__(self, why: str, deadline: bool, no_effect: bool) -> None:
        super().__init__(why)
        self.deadline = deadline
        self.no_effect = no_effect


_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "attrgate_call_scope", default=None
)


def enter_scope(scope: CallScope) -> None:
    """Set the scope of the call this thread runs. Called inside the context copied for the
    call (`contextvars.copy_context().run`), so it ends with the call."""
    _scope.set(scope)


def current_scope() -> CallScope | None:
    return _scope.get()


# Where a call sent on the event loop keeps its scope: in the request context botocore's
# needs-retry event carries (a contextvar set in a request's task would outlive the call).
SCOPE_KEY = "attrgate_scope"


def scope_of(request_dict: Any) -> CallScope | None:
    if isinstance(request_dict, dict):
        scope = request_dict.get("context", {}).get(SCOPE_KEY)
        if isinstance(scope, CallScope):
            return scope
    return current_scope()


class RetryGate:
    def __init__(self, max_attempts: int = 3) -> None:
        self._stopping = threading.Event()
        self._max_attempts = max_attempts

    def register(self, events: Any, service_id: str = "cognito-idp") -> None:
        events.register_first(f"needs-retry.{service_id}", self.needs_retry)
        events.register_first(f"before-send.{service_id}", self.before_send)

    def stop(self) -> None:
        """The server is stopping: no retry starts from now on."""
        self._stopping.set()

    def needs_retry(
        self,
        response: Any = None,
        caught_exception: BaseException | None = None,
        request_dict: Any = None,
        **_: Any,
    ) -> bool | None:
        """False: do not retry; None: let the retry mode decide."""
        scope = scope_of(request_dict)
        if scope is None:
            return None  # a call attrgate did not scope (none does today)
        reached = _maybe_delivered(response, caught_exception)
        scope.attempts.maybe_delivered |= reached
        throttled = _throttled(response)
        if throttled:
            scope.throttled()
        if isinstance(caught_exception, AttemptWithdrawn) or self._stopping.is_set():
            return False
        if scope.gone() or _passed(scope.deadline):
            return False
        if (scope.sms_write or scope.lookup) and reached:
            return False
        if scope.lookup and response is not None:
            return False  # Cognito answered (throttled, 5xx): a lookup is not asked again
        retryable = caught_exception is not None or throttled or _status(response) >= 500
        if retryable and scope.attempts.sent < self._max_attempts and not scope.retry_token():
            return False  # the retry would go out over the quota: the caller hears this answer
        return None

    def before_send(self, **_: Any) -> None:
        """botocore's hook, for a call scoped by enter_scope."""
        scope = current_scope()
        if scope is not None:
            self.before_attempt(scope)

    def before_attempt(self, scope: CallScope) -> None:
        """Right before an attempt goes out (after any backoff): withdraw it when its caller has
        gone, its deadline has passed, or, for a retry, the server is stopping."""
        attempts = scope.attempts
        attempts.sent += 1
        no_effect = not attempts.maybe_delivered
        if _passed(scope.deadline):
            raise AttemptWithdrawn("the caller's deadline passed", True, no_effect)
        if scope.gone():
            raise AttemptWithdrawn("the caller has gone", False, no_effect)
        if attempts.sent > 1 and self._stopping.is_set():
            raise AttemptWithdrawn("the server is stopping", False, no_effect)


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _status(response: Any) -> int:
    if response is None or response[0] is None:
        return 0
    return int(response[0].status_code)


def _throttled(response: Any) -> bool:
    if response is None or not isinstance(response[1], dict):
        return False
    error = response[1].get("Error")
    return isinstance(error, dict) and error.get("Code") in THROTTLE_CODES


def _maybe_delivered(response: Any, caught_exception: BaseException | None) -> bool:
    """The attempt may have reached Cognito: an answer (a 5xx: nobody knows what it did), or a
    connection lost after sending. Not: a connection never made, an attempt withdrawn, an
    answer Cognito gave itself below 500 (it refused; nothing happened)."""
    if caught_exception is not None:
        return not isinstance(
            caught_exception,
            botocore.exceptions.EndpointConnectionError
            | botocore.exceptions.ConnectTimeoutError
            | AttemptWithdrawn,
        )
    return _status(response) >= 500
