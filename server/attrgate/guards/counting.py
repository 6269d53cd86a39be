"""Charging SMS limits and budgets through the store: reserve before forwarding, release only
when Cognito's answer proves no message was sent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from attrgate.domain import SmsRefusal
from attrgate.guards.sms import Charge, Hasher
from attrgate.store.base import Store, StoreUnavailable

log = logging.getLogger("attrgate.sms")
# A store that cannot answer within this bound fails the SMS-triggering request closed.
STORE_TIMEOUT = 1.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SmsCounting:
    def __init__(
        self,
        store: Store,
        hasher: Hasher,
        clock_ms: Callable[[], int] = wall_clock_ms,
        timeout: float = STORE_TIMEOUT,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock_ms = clock_ms
        self._timeout = timeout

    async def reserve(self, reservation_id: str, charges: Sequence[Charge]) -> list[SmsRefusal]:
        """Reserve every charge at once; the refusals when any counter is full (then nothing is
        reserved). Raises StoreUnavailable."""
        if not charges:
            return []
        counters = [c.counter for c in charges]
        try:
            result = await asyncio.wait_for(
                self.store.reserve(reservation_id, counters, self.clock_ms()), self._timeout
            )
        except TimeoutError:
            raise StoreUnavailable("the SMS store did not answer in time") from None
        return [
            SmsRefusal(
                charges[r.index].guard,
                charges[r.index].rule,
                charges[r.index].description,
                r.retry_at_ms,
            )
            for r in result.refused
        ]

    async def dry_run(self, charges: Sequence[Charge]) -> list[SmsRefusal]:
        """What `reserve` would refuse, consuming nothing (CheckUpdateUserAttributes)."""
        if not charges:
            return []
        counters = [c.counter for c in charges]
        try:
            used = await asyncio.wait_for(
                self.store.usage(counters, self.clock_ms()), self._timeout
            )
        except TimeoutError:
            raise StoreUnavailable("the SMS store did not answer in time") from None
        return [
            SmsRefusal(charge.guard, charge.rule, charge.description, 0)
            for charge, amount in zip(charges, used, strict=True)
            if amount + charge.counter.amount > charge.counter.limit
        ]

    async def release(self, reservation_id: str, charges: Sequence[Charge]) -> list[Charge]:
        """Give back a reservation Cognito provably did not use: the charges actually given
        back (none that were never taken). A failure keeps the count: over-counting is the safe
        side."""
        if not charges:
            return []
        try:
            removed = await asyncio.wait_for(
                self.store.release(reservation_id, [c.counter for c in charges]), self._timeout
            )
        except (TimeoutError, StoreUnavailable):
            # The store may still finish the release; reporting none over-reports spending,
            # the safe side for a budget.
            log.warning("could not release SMS reservation %s; it stays counted", reservation_id)
            return []
        return [c for c, gone in zip(charges, removed, strict=True) if gone]
