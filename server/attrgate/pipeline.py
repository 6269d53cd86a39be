"""The request path, stage by stage: validate → policy engine → pool schema → SMS guard →
upstream. The first stage that fails answers.

No gRPC and no boto3 here: the api edge turns protobuf into domain values, and the upstream hides
Cognito.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from attrgate.domain import (
    Caller,
    Decision,
    Forwarded,
    Invalid,
    LookupLimited,
    PendingCall,
    PoolDescription,
    Reserved,
    SmsAssessment,
    SmsRefusal,
    Stage,
    Unavailable,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
    Violation,
    ViolationReason,
)
from attrgate.guards.counting import SmsCounting
from attrgate.guards.sms import (
    Charge,
    CompiledGuard,
    Phone,
    Subject,
    parse_phone,
    triggers_sms,
)
from attrgate.lookups import OverBudget
from attrgate.policy.compile import PolicySet
from attrgate.policy.engine import evaluate
from attrgate.pools import PoolCache
from attrgate.schema import pending_verification, schema_violations
from attrgate.store.base import StoreUnavailable
from attrgate.tracing import start_span
from attrgate.users import UserSubs
from attrgate.validate import validate_request

log = logging.getLogger("attrgate.pipeline")


class Upstream(Protocol):
    def submit(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> asyncio.Future[UpstreamResult]: ...


def new_decision_id() -> str:
    return uuid.uuid4().hex


class _Call:
    """Joins a call's outcome (from the worker thread) with its caller's fate (on the loop), so
    an outcome the caller never saw is logged exactly once, even after the loop has closed, and
    a late outcome that proves Cognito did nothing still gives the SMS reservation back. The
    upstream asks `gone()` before sending and before every retry: nothing more is sent for a
    caller that has given up (cancelled, or cancelled by the server at the end of its grace)."""

    __slots__ = ("_abandoned", "_lock", "_on_no_effect", "_result", "decision_id")

    def __init__(self, decision_id: str, on_no_effect: Callable[[], None]) -> None:
        self.decision_id = decision_id
        self._lock = threading.Lock()
        self._result: UpstreamResult | None = None
        self._abandoned = False
        self._on_no_effect = on_no_effect

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

    def _late(self, result: UpstreamResult) -> None:
        _log_late(self.decision_id, result)
        if result.no_effect:
            self._on_no_effect()


@dataclass(slots=True)
class _Allowed:
    """Every stage let the request through; what to undo if Cognito provably did nothing."""

    decision: Decision
    charges: tuple[Charge, ...] = ()
    audit_charges: tuple[Charge, ...] = ()
    submitted: bool = False  # handed to the upstream: from then on its outcome decides
    reported: bool = False  # the store acknowledged the reservation and SmsEvents was told


class SmsEvents(Protocol):
    """Told of acknowledged reservations and of those given back; a release is reported only
    for a reservation that was, so reserved minus released is what stays counted."""

    def sms_reserved(self, reserved: Sequence[Reserved]) -> None: ...

    def sms_released(self, released: Sequence[Reserved]) -> None: ...


class _NoSmsEvents:
    def sms_reserved(self, reserved: Sequence[Reserved]) -> None:
        pass

    def sms_released(self, released: Sequence[Reserved]) -> None:
        pass


class Pipeline:
    def __init__(
        self,
        policy_set: PolicySet,
        upstream: Upstream,
        pools: PoolCache,
        users: UserSubs,
        sms: SmsCounting | None = None,
        pool_metadata_fail_open: bool = False,
        new_id: Callable[[], str] = new_decision_id,
        sms_events: SmsEvents | None = None,
    ) -> None:
        # Swapped whole on reload; a request keeps the set it started with.
        self.policy_set = policy_set
        self._sms_events = sms_events or _NoSmsEvents()
        self._upstream = upstream
        self._pools = pools
        self._users = users
        self._sms = sms
        self._fail_open = pool_metadata_fail_open
        self._new_id = new_id
        self._background: set[asyncio.Future[None]] = set()

    async def check(
        self, caller: Caller, request: UpdateRequest
    ) -> Invalid | Unavailable | LookupLimited | Decision:
        """Decide without forwarding or consuming anything (CheckUpdateUserAttributes)."""
        assessed = await self._assess(caller, request, consume=False)
        return assessed.decision if isinstance(assessed, _Allowed) else assessed

    async def update(
        self,
        caller: Caller,
        request: UpdateRequest,
        deadline: float | None,
        forwarding: Callable[[Decision, float], None] | None = None,
    ) -> Invalid | Unavailable | LookupLimited | Decision | Forwarded:
        """`forwarding` hears the decision (and when it was made) before the call goes to
        Cognito, so a caller cancelled while it runs still has its decision logged."""
        assessed = await self._assess(caller, request, consume=True)
        if not isinstance(assessed, _Allowed):
            return assessed
        decided, decided_at = assessed.decision, time.perf_counter()
        if forwarding is not None:
            forwarding(decided, decided_at)
        sms_write = bool(decided.sms and decided.sms.triggers_sms)
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                result = _deadline_result(no_effect=True)
            else:
                result = await self._forward(assessed, request, deadline, remaining, sms_write)
        except asyncio.CancelledError:
            # Cancelled before the call was handed over, or with it still running: a running
            # call's late outcome decides (see _Call); a call never submitted sent nothing.
            if not assessed.submitted:
                self._release_soon(assessed)
            raise
        if result.no_effect:
            self._release_soon(assessed)
        return Forwarded(decided, result, decided_at)

    def _release_soon(self, assessed: _Allowed) -> None:
        """Give an SMS reservation back, whatever happens to the task that asks (shielded, in a
        task of its own, so a cancelled caller cannot leak it)."""
        if self._sms is None or not (assessed.charges or assessed.audit_charges):
            return
        sms, decision_id = self._sms, assessed.decision.decision_id

        async def release() -> None:
            released = await sms.release(decision_id, assessed.charges)
            if released and assessed.reported:
                self._sms_events.sms_released(_reserved(tuple(released)))
            await sms.release(decision_id + ":audit", assessed.audit_charges)

        task = asyncio.ensure_future(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self, seconds: float) -> None:
        """Wait (at most `seconds`) for the SMS reservations still being given back,
        those of late outcomes included, so none is lost when the server closes its store."""
        await asyncio.sleep(0)  # releases handed over from worker threads get their task
        if self._background:
            await asyncio.wait(set(self._background), timeout=seconds)

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
                loop.call_soon_threadsafe(self._release_soon, assessed)

        call = _Call(assessed.decision.decision_id, release_from_thread)
        future = self._upstream.submit(request, deadline, call, sms_write)
        assessed.submitted = True
        try:
            # shield: a caller giving up must not cancel the call, which runs on regardless.
            return await asyncio.wait_for(asyncio.shield(future), remaining)
        except (TimeoutError, asyncio.CancelledError):
            call.abandon()
            if _cancelling():
                raise
            # Whether Cognito acted is unknown: keep any SMS reservation (when in doubt, count).
            return _deadline_result(no_effect=False)

    async def _assess(
        self, caller: Caller, request: UpdateRequest, consume: bool
    ) -> Invalid | Unavailable | LookupLimited | Decision | _Allowed:
        policy_set = self.policy_set
        decision_id = self._new_id()
        revision = policy_set.revision
        with start_span("attrgate.validate") as span:
            problems = validate_request(request)
            span.set_attribute("attrgate.invalid_fields", len(problems))
        if problems:
            return Invalid(decision_id, revision, problems)
        with start_span("attrgate.policy") as span:
            verdict = evaluate(policy_set, caller.name, request)
            span.set_attribute("attrgate.allowed", verdict.allowed)
            span.set_attribute("attrgate.matched_policies", list(verdict.matched_policies))
        decision = Decision(
            decision_id=decision_id,
            policy_revision=revision,
            allowed=verdict.allowed,
            violations=verdict.violations,
            matched_policies=verdict.matched_policies,
            would_deny=verdict.would_deny,
            denied_by="" if verdict.allowed else Stage.POLICY,
        )
        if not verdict.allowed:
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
                return _deny(decision, Stage.POOL, (_POOL_NOT_FOUND,))
            if not self._fail_open:
                return Unavailable(decision_id, revision, "pool_metadata", described)
        else:
            pool = described
        if pool is not None:
            schema = schema_violations(pool, request)
            if schema:
                return _deny(decision, Stage.POOL_SCHEMA, schema)
            decision = replace(decision, pending_verification=pending_verification(pool, request))

        phone = _phone_of(request)
        if phone is None:
            return _Allowed(decision)
        with start_span("attrgate.sms_guard") as span:
            # The set this request started with, even if a reload swapped another in since.
            guards = policy_set.guards.applicable(request.user_pool_id)
            assessed = await self._assess_sms(
                caller, request, decision, pool, phone, guards, consume
            )
            found = assessed.decision if isinstance(assessed, _Allowed) else assessed
            if isinstance(found, Decision) and found.sms is not None:
                span.set_attribute("attrgate.sms.triggers", found.sms.triggers_sms)
                span.set_attribute("attrgate.sms.outcome", found.sms_outcome)
            return assessed

    async def _assess_sms(
        self,
        caller: Caller,
        request: UpdateRequest,
        decision: Decision,
        pool: PoolDescription | None,
        phone: Phone,
        guards: Sequence[CompiledGuard],
        consume: bool,
    ) -> Unavailable | LookupLimited | Decision | _Allowed:
        triggers = triggers_sms(pool, request)
        # The country rule holds for every write of phone_number: a number set as verified
        # still receives MFA and password-reset messages later.
        country_denials: list[Violation] = []
        would_deny = list(decision.would_deny)
        for guard in guards:
            rule = guard.country_rule(phone.country)
            if rule is None:
                continue
            violation = Violation(
                "phone_number",
                guard.name,
                rule,
                ViolationReason.SMS_COUNTRY_NOT_ALLOWED,
                f"destination country {phone.country} is not allowed by SmsGuard {guard.name}",
            )
            (country_denials if guard.enforce else would_deny).append(violation)
        decision = replace(
            decision,
            would_deny=tuple(would_deny),
            sms=SmsAssessment(triggers_sms=triggers, country=phone.country),
        )
        if country_denials:
            return _deny(decision, Stage.SMS_COUNTRY, tuple(country_denials))
        if not triggers or self._sms is None or not guards:
            return _Allowed(decision)

        user_sub = None
        if any(g.needs_user for g in guards):
            found = await self._users.get((request.user_pool_id, request.username), caller.name)
            if isinstance(found, OverBudget):
                return LookupLimited(
                    decision.decision_id, decision.policy_revision, "user_lookup", found.retry_after
                )
            if isinstance(found, UpstreamResult):
                if found.error == UpstreamError.USER_NOT_FOUND:
                    return _deny(decision, Stage.USER, (_USER_NOT_FOUND,))
                return Unavailable(
                    decision.decision_id, decision.policy_revision, "user_lookup", found
                )
            user_sub = found
        subject = Subject(caller.name, request.user_pool_id, phone, user_sub)
        now_ms = self._sms.clock_ms()
        hasher = self._sms.hasher
        charges = tuple(c for g in guards if g.enforce for c in g.charges(subject, hasher, now_ms))
        audit_charges = tuple(
            c for g in guards if not g.enforce for c in g.charges(subject, hasher, now_ms)
        )
        pending = _Allowed(decision, charges, audit_charges)
        try:
            if consume:
                refusals = await self._sms.reserve(decision.decision_id, charges)
                if not refusals and charges:
                    pending.reported = True
                    self._sms_events.sms_reserved(_reserved(charges))
            else:
                refusals = await self._sms.dry_run(charges)
            # An audit guard counts what was sent: when the enforcing guards refuse, it only
            # looks.
            would_refuse = await self._audit(
                decision.decision_id, audit_charges, consume and not refusals
            )
        except StoreUnavailable:
            # The store may have taken the reservation after all: give it back (idempotent).
            if consume:
                self._release_soon(pending)
            return Unavailable(decision.decision_id, decision.policy_revision, "sms_store")
        except asyncio.CancelledError:
            if consume:
                self._release_soon(pending)
            raise
        reserved = () if refusals or not consume else _reserved(charges)
        decision = replace(
            decision,
            sms=SmsAssessment(True, phone.country, tuple(refusals), tuple(would_refuse), reserved),
        )
        if refusals:
            violations = tuple(
                Violation(
                    "phone_number",
                    r.guard,
                    r.rule,
                    ViolationReason.SMS_LIMIT_EXCEEDED,
                    f"SmsGuard {r.guard} {r.description}",
                )
                for r in refusals
            )
            return _deny(decision, Stage.SMS_LIMIT, violations)
        pending.decision = decision
        return pending

    async def _audit(
        self, decision_id: str, charges: tuple[Charge, ...], consume: bool
    ) -> list[SmsRefusal]:
        """Audit guards count in their own keys and never refuse; a store failure here is
        logged, not fatal."""
        assert self._sms is not None
        try:
            if consume:
                return await self._sms.reserve(decision_id + ":audit", charges)
            return await self._sms.dry_run(charges)
        except StoreUnavailable:
            log.warning("audit SMS guard could not count decision_id=%s", decision_id)
            return []


_POOL_NOT_FOUND = Violation(
    "", "", "", ViolationReason.POOL_NOT_FOUND, "the user pool does not exist"
)
_USER_NOT_FOUND = Violation("", "", "", ViolationReason.USER_NOT_FOUND, "the user does not exist")


def _reserved(charges: tuple[Charge, ...]) -> tuple[Reserved, ...]:
    return tuple((c.guard, c.rule, c.counter.amount) for c in charges)


def _deny(decision: Decision, stage: Stage, violations: tuple[Violation, ...]) -> Decision:
    return replace(decision, allowed=False, denied_by=stage, violations=violations)


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
