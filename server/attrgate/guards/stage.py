"""The SMS guard's stage of the request path: for a write of phone_number, the country rules,
then, when the write makes Cognito send a message, the limits and budgets reserved in the store.

A reservation lives from before forwarding until Cognito's answer: it is given back (once, in a
task of its own that no cancelled caller can interrupt) only when Cognito provably sent nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from attrgate.domain import (
    Caller,
    Decision,
    LookupLimited,
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
    Subject,
    charges_for,
    country_findings,
    triggers_sms,
)
from attrgate.lookups import OverBudget
from attrgate.phones import Phone
from attrgate.store.base import CIRCUIT_OPEN, StoreUnavailable
from attrgate.users import UserSubs

log = logging.getLogger("attrgate.sms")


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


@dataclass(slots=True)
class Reservation:
    """What one request holds in the store (or may hold: a reserve whose answer was lost)."""

    decision_id: str
    charges: tuple[Charge, ...]
    audit_charges: tuple[Charge, ...]
    reported: bool = False  # the store acknowledged it and SmsEvents was told


# A decision the stage let through, and what it reserved for it (None: nothing to give back).
Passed = tuple[Decision, Reservation | None]


class SmsStage:
    def __init__(
        self,
        sms: SmsCounting | None,
        users: UserSubs | None,
        events: SmsEvents | None = None,
    ) -> None:
        self._sms = sms
        self._users = users
        self._events = events or _NoSmsEvents()
        self._background: set[asyncio.Future[None]] = set()

    async def assess(
        self,
        caller: Caller,
        request: UpdateRequest,
        decision: Decision,
        pool: PoolDescription | None,
        phone: Phone,
        guards: Sequence[CompiledGuard],
        consume: bool,
    ) -> Unavailable | LookupLimited | Decision | Passed:
        """A denial (Decision), a dependency's failure, or the decision let through with its
        reservation. `consume` False (CheckUpdateUserAttributes): only look."""
        triggers = triggers_sms(pool, request)
        # The country rule holds for every write of phone_number: a number set as verified
        # still receives MFA and password-reset messages later.
        denials, would_deny = country_findings(guards, phone)
        decision = replace(
            decision,
            would_deny=(*decision.would_deny, *would_deny),
            sms=SmsAssessment(triggers_sms=triggers, country=phone.country),
        )
        if denials:
            return deny(decision, Stage.SMS_COUNTRY, tuple(denials))
        if not triggers or self._sms is None or not guards:
            return decision, None

        user_sub = None
        if any(g.needs_user for g in guards):
            assert self._users is not None, "counting SMS needs the user lookups"
            found = await self._users.get((request.user_pool_id, request.username), caller.name)
            if isinstance(found, OverBudget):
                return LookupLimited(
                    decision.decision_id, decision.policy_revision, "user_lookup", found.retry_after
                )
            if isinstance(found, UpstreamResult):
                if found.error == UpstreamError.USER_NOT_FOUND:
                    return deny(decision, Stage.USER, (_USER_NOT_FOUND,))
                return Unavailable(
                    decision.decision_id, decision.policy_revision, "user_lookup", found
                )
            user_sub = found
        subject = Subject(caller.name, request.user_pool_id, phone, user_sub)
        sms = self._sms
        charges, audit_charges = charges_for(guards, subject, sms.hasher, sms.clock_ms())
        held = Reservation(decision.decision_id, charges, audit_charges)
        try:
            if consume:
                refusals = await sms.reserve(decision.decision_id, charges)
                if not refusals and charges:
                    held.reported = True
                    self._events.sms_reserved(_reserved(charges))
            else:
                refusals = await sms.dry_run(charges)
            # An audit guard counts what was sent: when the enforcing guards refuse, it only
            # looks.
            would_refuse = await self._audit(
                decision.decision_id, audit_charges, consume and not refusals
            )
        except StoreUnavailable as exc:
            # The store may have taken the reservation after all: give it back (idempotent).
            # Not when the breaker refused it: the store was never asked, and a release of
            # nothing per refused write would queue calls (each retried) on a dead store.
            if consume and exc.reason != CIRCUIT_OPEN:
                self.release_soon(held)
            return Unavailable(decision.decision_id, decision.policy_revision, "sms_store")
        except asyncio.CancelledError:
            if consume:
                self.release_soon(held)
            raise
        reserved = () if refusals or not consume else _reserved(charges)
        decision = replace(
            decision,
            sms=SmsAssessment(True, phone.country, tuple(refusals), tuple(would_refuse), reserved),
        )
        if refusals:
            return deny(decision, Stage.SMS_LIMIT, _limit_violations(refusals))
        return decision, held if consume else None

    def release_soon(self, held: Reservation | None) -> None:
        """Give a reservation back, whatever happens to the task that asks (in a task of its
        own, so a cancelled caller cannot leak it)."""
        if self._sms is None or held is None or not (held.charges or held.audit_charges):
            return
        sms = self._sms

        async def release() -> None:
            released = await sms.release(held.decision_id, held.charges)
            if released and held.reported:
                self._events.sms_released(_reserved(tuple(released)))
            await sms.release(held.decision_id + ":audit", held.audit_charges)

        task = asyncio.ensure_future(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self, seconds: float) -> None:
        """Wait (at most `seconds`) for the reservations still being given back, those of late
        outcomes included, so none is lost when the server closes its store."""
        await asyncio.sleep(0)  # releases handed over from worker threads get their task
        if self._background:
            await asyncio.wait(set(self._background), timeout=seconds)

    async def _audit(
        self, decision_id: str, charges: tuple[Charge, ...], consume: bool
    ) -> list[SmsRefusal]:
        """Audit guards count in their own keys and never refuse: a store failure here (counted
        and logged by the store's watch) only leaves the audit count short."""
        assert self._sms is not None
        try:
            if consume:
                return await self._sms.reserve(decision_id + ":audit", charges)
            return await self._sms.dry_run(charges)
        except StoreUnavailable:
            log.debug("audit SMS guard could not count decision_id=%s", decision_id)
            return []


_USER_NOT_FOUND = Violation("", "", "", ViolationReason.USER_NOT_FOUND, "the user does not exist")


def deny(decision: Decision, stage: Stage, violations: tuple[Violation, ...]) -> Decision:
    return replace(decision, allowed=False, denied_by=stage, violations=violations)


def _limit_violations(refusals: Sequence[SmsRefusal]) -> tuple[Violation, ...]:
    return tuple(
        Violation(
            "phone_number",
            r.guard,
            r.rule,
            ViolationReason.SMS_LIMIT_EXCEEDED,
            f"SmsGuard {r.guard} {r.description}",
        )
        for r in refusals
    )


def _reserved(charges: tuple[Charge, ...]) -> tuple[Reserved, ...]:
    return tuple((c.guard, c.rule, c.counter.amount) for c in charges)
