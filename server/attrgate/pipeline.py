"""The request path, stage by stage: validate → policy engine → pool schema → SMS guard →
upstream. The first stage that fails answers.

No gRPC and no boto3 here: the api edge turns protobuf into domain values, and the upstream hides
Cognito.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from attrgate.candidate import judge
from attrgate.domain import (
    Caller,
    Decision,
    Forwarded,
    Invalid,
    LookupLimited,
    PendingCall,
    PoolDescription,
    QuotaLimited,
    Stage,
    Unavailable,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
    Violation,
    ViolationReason,
)
from attrgate.guards.counting import SmsCounting
from attrgate.guards.stage import Reservation, SmsEvents, SmsStage, deny
from attrgate.lookups import OverBudget
from attrgate.phones import Phone, parse_phone
from attrgate.policy.compile import PolicySet
from attrgate.policy.engine import evaluate
from attrgate.policy.trace import Trace
from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.governor import Governor, QuotaRefusal, Ticket
from attrgate.schema import pending_verification, schema_violations
from attrgate.shadow import shadowed
from attrgate.tracing import start_span
from attrgate.users import UserSubs
from attrgate.validate import validate_request

log = logging.getLogger("attrgate.pipeline")


class Pools(Protocol):
    """DescribeUserPool answers: the server's PoolCache, or fixtures (attrgate test, explain)."""

    async def get(
        self, pool_id: str, caller: str
    ) -> PoolDescription | UpstreamResult | OverBudget: ...


class Upstream(Protocol):
    def submit(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> asyncio.Future[UpstreamResult]: ...


# A version-4 UUID's fixed bits: version 4 (bits 76-79), variant RFC 4122 (bits 62-63).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_decision_id() -> str:
    """uuid.uuid4().hex, without building the UUID object (half the cost, on every request)."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


# Told, from whatever thread it arrives in, of an outcome the caller never saw (the decision
# log's entry for it).
LateOutcome = Callable[[str, UpstreamResult], None]


def _no_late(decision_id: str, result: UpstreamResult) -> None:
    pass


class _Call:
    """Joins a call's outcome (from the upstream's task) with its caller's fate, so an outcome
    the caller never saw is logged exactly once, and
    a late outcome that proves Cognito did nothing still gives the SMS reservation back. The
    upstream asks `gone()` before sending and before every retry: nothing more is sent for a
    caller that has given up (cancelled, or cancelled by the server at the end of its grace)."""

    __slots__ = (
        "_abandoned",
        "_lock",
        "_on_late",
        "_on_no_effect",
        "_result",
        "_ticket",
        "decision_id",
    )

    def __init__(
        self,
        decision_id: str,
        on_no_effect: Callable[[], None],
        on_late: LateOutcome,
        ticket: Ticket | None = None,
    ) -> None:
        self.decision_id = decision_id
        self._lock = threading.Lock()
        self._result: UpstreamResult | None = None
        self._abandoned = False
        self._on_no_effect = on_no_effect
        self._on_late = on_late
        self._ticket = ticket

    def retry_token(self) -> bool:
        return self._ticket is None or self._ticket.retry_token()

    def throttled(self) -> None:
        if self._ticket is not None:
            self._ticket.throttled()

    def complete(self, result: UpstreamResult) -> None:
        with self._lock:
            self._result = result
            late = self._abandoned
        if late:
            self._late(result)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            result = self._result
        if result is not None:
            self._late(result)

    def gone(self) -> bool:
        return self._abandoned

    @property
    def result(self) -> UpstreamResult | None:
        """The outcome, once complete."""
        return self._result

    def _late(self, result: UpstreamResult) -> None:
        _log_late(self.decision_id, result)
        self._on_late(self.decision_id, result)
        if result.no_effect:
            self._on_no_effect()


@dataclass(slots=True)
class _Allowed:
    """Every stage let the request through; what to undo if Cognito provably did nothing."""

    decision: Decision
    reservation: Reservation | None = None
    submitted: bool = False  # handed to the upstream: from then on its outcome decides
    quota: CompiledQuota | None = None  # the CognitoQuota of the set that decided
    ticket: Ticket | None = None  # the quota governor's, once granted


class Pipeline:
    def __init__(
        self,
        policy_set: PolicySet,
        upstream: Upstream,
        pools: Pools,
        users: UserSubs | None,
        sms: SmsCounting | None = None,
        pool_metadata_fail_open: bool = False,
        new_id: Callable[[], str] = new_decision_id,
        sms_events: SmsEvents | None = None,
        late: LateOutcome = _no_late,
        shadow: bool = False,
        governor: Governor | None = None,
    ) -> None:
        # Swapped whole on reload; a request keeps the set it started with.
        self.policy_set = policy_set
        # serve --candidate-policies: evaluated beside policy_set, never deciding.
        self.candidate: PolicySet | None = None
        self._upstream = upstream
        self._pools = pools
        self._sms = SmsStage(sms, users, sms_events)
        self._fail_open = pool_metadata_fail_open
        self._new_id = new_id
        self._late = late
        # serve --shadow: policy denials are forwarded with would_deny (attrgate.shadow).
        # A serve-time mode: the offline pipelines (test, explain) never set it.
        self._shadow = shadow
        # The Cognito quota: only a server has one (the offline pipelines never forward).
        self._governor = governor

    @property
    def shadow(self) -> bool:
        """serve --shadow: policy denials are forwarded."""
        return self._shadow

    async def check(
        self, caller: Caller, request: UpdateRequest, trace: Trace | None = None
    ) -> Invalid | Unavailable | LookupLimited | Decision:
        """Decide without forwarding or consuming anything (CheckUpdateUserAttributes).
        `trace`: the engine records what it did in it (explain, test coverage)."""
        assessed = await self._assess(caller, request, consume=False, trace=trace)
        return assessed.decision if isinstance(assessed, _Allowed) else assessed

    async def update(
        self,
        caller: Caller,
        request: UpdateRequest,
        deadline: float | None,
        forwarding: Callable[[Decision, float], None] | None = None,
    ) -> Invalid | Unavailable | LookupLimited | Decision | QuotaLimited | Forwarded:
        """`forwarding` hears the decision (and when it was made) before the call waits for
        the quota and goes to Cognito, so a caller cancelled meanwhile still has its decision
        logged."""
        assessed = await self._assess(caller, request, consume=True)
        if not isinstance(assessed, _Allowed):
            return assessed
        decided, decided_at = assessed.decision, time.perf_counter()
        if forwarding is not None:
            forwarding(decided, decided_at)
        sms_write = bool(decided.sms and decided.sms.triggers_sms)
        try:
            limited = await self._take_quota(assessed, caller, request, deadline)
            if limited is not None:
                self._sms.release_soon(assessed.reservation)  # nothing was sent
                return limited
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                result = _deadline_result(no_effect=True)
            else:
                result = await self._forward(assessed, request, deadline, remaining, sms_write)
        except asyncio.CancelledError:
            # Cancelled before the call was handed over, or with it still running: a running
            # call's late outcome decides (see _Call); a call never submitted sent nothing.
            if not assessed.submitted:
                self._sms.release_soon(assessed.reservation)
            raise
        finally:
            if assessed.ticket is not None and not assessed.submitted:
                assessed.ticket.release()
        if result.no_effect:
            self._sms.release_soon(assessed.reservation)
        return Forwarded(decided, result, decided_at)

    async def _take_quota(
        self, assessed: _Allowed, caller: Caller, request: UpdateRequest, deadline: float | None
    ) -> QuotaLimited | None:
        """The quota governor's token for this call (held in `assessed.ticket`), or why not."""
        if self._governor is None or assessed.quota is None:
            return None
        with start_span("attrgate.quota") as span:
            got = await self._governor.acquire(
                assessed.quota, caller.name, request.user_pool_id, request.username, deadline
            )
            if got is None:  # a reload lifted the quota after this call was decided
                return None
            if isinstance(got, QuotaRefusal):
                span.set_attribute("attrgate.quota.refused", got.scope)
                span.set_attribute("attrgate.quota.share", got.share)
                return QuotaLimited(
                    assessed.decision, got.quota, got.share, got.scope, got.retry_after
                )
            span.set_attribute("attrgate.quota.share", got.share)
            span.set_attribute("attrgate.quota.waited_ms", round(got.waited * 1000, 3))
        assessed.ticket = got
        return None

    async def settle(self, seconds: float) -> None:
        """Wait (at most `seconds`) for the SMS reservations still being given back, so none is
        lost when the server closes its store."""
        await self._sms.settle(seconds)

    async def _forward(
        self,
        assessed: _Allowed,
        request: UpdateRequest,
        deadline: float | None,
        remaining: float | None,
        sms_write: bool,
    ) -> UpstreamResult:
        loop = asyncio.get_running_loop()

        def release_from_thread() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._sms.release_soon, assessed.reservation)

        ticket = assessed.ticket
        call = _Call(assessed.decision.decision_id, release_from_thread, self._late, ticket)
        future = self._upstream.submit(request, deadline, call, sms_write)
        assessed.submitted = True
        if ticket is not None:
            # The bulkhead slot is held until the call ends, not until its caller leaves.
            future.add_done_callback(lambda _: ticket.release())
        try:
            # shield: a caller giving up must not cancel the call, which runs on regardless.
            async with asyncio.timeout(remaining):
                return await asyncio.shield(future)
        except (TimeoutError, asyncio.CancelledError):
            if future.cancelled() and call.result is not None and not _cancelling():
                # The server cancelled the call itself (stopping): its outcome, as recorded.
                return call.result
            call.abandon()
            if _cancelling():
                raise
            # Whether Cognito acted is unknown: keep any SMS reservation (when in doubt, count).
            return _deadline_result(no_effect=False)

    async def _assess(
        self, caller: Caller, request: UpdateRequest, consume: bool, trace: Trace | None = None
    ) -> Invalid | Unavailable | LookupLimited | Decision | _Allowed:
        # Each read once: a reload may swap either while this request runs.
        policy_set, candidate_set = self.policy_set, self.candidate
        decision_id = self._new_id()
        revision = policy_set.revision
        with start_span("attrgate.validate") as span:
            problems = validate_request(request)
            span.set_attribute("attrgate.invalid_fields", len(problems))
        if problems:
            return Invalid(decision_id, revision, problems)
        with start_span("attrgate.policy") as span:
            verdict = evaluate(policy_set, caller.name, request, trace)
            span.set_attribute("attrgate.allowed", verdict.allowed)
            span.set_attribute("attrgate.matched_policies", list(verdict.matched_policies))
            # Judged against the serving set's policy verdict, before shadow mode or a later
            # stage changes the outcome.
            candidate = judge(candidate_set, caller.name, request, verdict)
            if candidate is not None and candidate.disagreement:
                span.set_attribute("attrgate.candidate.disagreement", candidate.disagreement)
        decision = Decision(
            decision_id=decision_id,
            policy_revision=revision,
            allowed=verdict.allowed,
            violations=verdict.violations,
            matched_policies=verdict.matched_policies,
            would_deny=verdict.would_deny,
            denied_by="" if verdict.allowed else Stage.POLICY,
            candidate=candidate,
        )
        if self._shadow:
            decision = shadowed(decision)
        if not decision.allowed:
            return decision

        # Only allowed requests reach Cognito for metadata, and a miss is paid for from the
        # caller's lookup budget: no quota spent on made-up pools. Over budget, even
        # --pool-metadata-fail-open refuses (forwarding would spend an update on a made-up pool).
        described = await self._pools.get(request.user_pool_id, caller.name)
        if isinstance(described, OverBudget):
            return LookupLimited(decision_id, revision, "pool_metadata", described.retry_after)
        pool: PoolDescription | None = None
        if isinstance(described, UpstreamResult):
            if described.error == UpstreamError.RESOURCE_NOT_FOUND:
                return deny(decision, Stage.POOL, (_POOL_NOT_FOUND,))
            if not self._fail_open:
                return Unavailable(decision_id, revision, "pool_metadata", described)
        else:
            pool = described
        if pool is not None:
            schema = schema_violations(pool, request)
            if schema:
                return deny(decision, Stage.POOL_SCHEMA, schema)
            decision = replace(decision, pending_verification=pending_verification(pool, request))

        phone = _phone_of(request)
        if phone is None:
            return _Allowed(decision, quota=policy_set.quota)
        with start_span("attrgate.sms_guard") as span:
            # The set this request started with, even if a reload swapped another in since.
            guards = policy_set.guards.applicable(request.user_pool_id)
            assessed = await self._sms.assess(
                caller, request, decision, pool, phone, guards, consume
            )
            found = assessed[0] if isinstance(assessed, tuple) else assessed
            if isinstance(found, Decision) and found.sms is not None:
                span.set_attribute("attrgate.sms.triggers", found.sms.triggers_sms)
                span.set_attribute("attrgate.sms.outcome", found.sms_outcome)
        if isinstance(assessed, tuple):
            return _Allowed(*assessed, quota=policy_set.quota)
        return assessed


_POOL_NOT_FOUND = Violation(
    "", "", "", ViolationReason.POOL_NOT_FOUND, "the user pool does not exist"
)


def _phone_of(request: UpdateRequest) -> Phone | None:
    value = request.value_of("phone_number")
    return parse_phone(value) if value else None  # validation guarantees it parses


def _log_late(decision_id: str, result: UpstreamResult) -> None:
    log.warning(
        "late cognito outcome decision_id=%s ok=%s error=%s code=%s cognito_request_id=%s",
        decision_id,
        result.ok,
        result.error.value if result.error else "",
        result.error_code,
        result.request_id,
    )


def _deadline_result(no_effect: bool) -> UpstreamResult:
    return UpstreamResult(
        ok=False,
        error=UpstreamError.DEADLINE_EXCEEDED,
        error_code="DeadlineExceeded",
        no_effect=no_effect,
    )


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
