"""The request path, stage by stage: validate → policy engine → upstream.

No gRPC and no boto3 here: the api edge turns protobuf into domain values, and the upstream hides
Cognito. Later stages (pool schema, SMS guard) slot in between the engine and the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from attrgate.domain import (
    Caller,
    Decision,
    Forwarded,
    Invalid,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
)
from attrgate.policy.compile import PolicySet
from attrgate.policy.engine import evaluate
from attrgate.validate import validate_request

log = logging.getLogger("attrgate.pipeline")


class Upstream(Protocol):
    def submit(
        self,
        request: UpdateRequest,
        deadline: float | None,
        on_result: Callable[[UpstreamResult], None],
    ) -> asyncio.Future[UpstreamResult]: ...


def new_decision_id() -> str:
    return uuid.uuid4().hex


class _Call:
    """Joins a call's outcome (from the worker thread) with its caller's fate (on the loop), so
    an outcome the caller never saw is logged exactly once, even after the loop has closed."""

    __slots__ = ("_abandoned", "_lock", "_result", "decision_id")

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        self._lock = threading.Lock()
        self._result: UpstreamResult | None = None
        self._abandoned = False

    def complete(self, result: UpstreamResult) -> None:
        with self._lock:
            self._result = result
            late = self._abandoned
        if late:
            _log_late(self.decision_id, result)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            result = self._result
        if result is not None:
            _log_late(self.decision_id, result)


class Pipeline:
    def __init__(
        self,
        policy_set: PolicySet,
        upstream: Upstream,
        new_id: Callable[[], str] = new_decision_id,
    ) -> None:
        # Swapped whole on reload; a request keeps the set it started with.
        self.policy_set = policy_set
        self._upstream = upstream
        self._new_id = new_id

    def decide(self, caller: Caller, request: UpdateRequest) -> Invalid | Decision:
        """Validate and decide; never forwards. Used by both RPCs."""
        policy_set = self.policy_set
        decision_id = self._new_id()
        problems = validate_request(request)
        if problems:
            return Invalid(decision_id, policy_set.revision, problems)
        verdict = evaluate(policy_set, caller.name, request)
        return Decision(
            decision_id=decision_id,
            policy_revision=policy_set.revision,
            allowed=verdict.allowed,
            violations=verdict.violations,
            matched_policies=verdict.matched_policies,
            would_deny=verdict.would_deny,
        )

    async def update(
        self, caller: Caller, request: UpdateRequest, deadline: float | None
    ) -> Invalid | Decision | Forwarded:
        decided = self.decide(caller, request)
        if isinstance(decided, Invalid) or not decided.allowed:
            return decided
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return Forwarded(decided, _deadline_result())
        call = _Call(decided.decision_id)
        future = self._upstream.submit(request, deadline, call.complete)
        try:
            # shield: a caller giving up must not cancel the call, which runs on regardless.
            result = await asyncio.wait_for(asyncio.shield(future), remaining)
        except (TimeoutError, asyncio.CancelledError):
            call.abandon()
            if _cancelling():
                raise
            return Forwarded(decided, _deadline_result())
        return Forwarded(decided, result)


def _log_late(decision_id: str, result: UpstreamResult) -> None:
    log.warning(
        "late cognito outcome decision_id=%s ok=%s error=%s code=%s cognito_request_id=%s",
        decision_id,
        result.ok,
        result.error.value if result.error else "",
        result.error_code,
        result.request_id,
    )


def _deadline_result() -> UpstreamResult:
    return UpstreamResult(
        ok=False, error=UpstreamError.DEADLINE_EXCEEDED, error_code="DeadlineExceeded"
    )


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
