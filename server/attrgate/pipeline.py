"""The request path, stage by stage: validate → policy engine → upstream.

No gRPC and no boto3 here: the api edge turns protobuf into domain values, and the upstream hides
Cognito. Later stages (pool schema, SMS guard) slot in between the engine and the upstream.
"""

from __future__ import annotations

import asyncio
import logging
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
        self, request: UpdateRequest, deadline: float | None
    ) -> asyncio.Future[UpstreamResult]: ...


def new_decision_id() -> str:
    return uuid.uuid4().hex


class Pipeline:
    def __init__(
        self,
        policy_set: PolicySet,
        upstream: Upstream,
        result_of: Callable[[asyncio.Future[UpstreamResult]], UpstreamResult],
        new_id: Callable[[], str] = new_decision_id,
    ) -> None:
        # Swapped whole on reload; a request keeps the set it started with.
        self.policy_set = policy_set
        self._upstream = upstream
        self._result_of = result_of
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
        future = self._upstream.submit(request, deadline)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), remaining)
        except (TimeoutError, asyncio.CancelledError):
            # The caller has gone; the call goes on. Record what Cognito did when it answers.
            future.add_done_callback(lambda f: self._record_late(decided, f))
            if _cancelling():
                raise
            return Forwarded(decided, _deadline_result())
        return Forwarded(decided, result)

    def _record_late(self, decision: Decision, future: asyncio.Future[UpstreamResult]) -> None:
        result = self._result_of(future)
        log.warning(
            "late cognito outcome decision_id=%s ok=%s error=%s code=%s cognito_request_id=%s",
            decision.decision_id,
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
