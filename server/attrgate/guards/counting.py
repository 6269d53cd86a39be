"""Charging SMS limits and budgets through the store: reserve before forwarding, release only
when Cognito's answer proves no message was sent.

The store bounds every call by its own timeout (--store-timeout) and raises StoreUnavailable
past it; every failure is reported to the StoreWatch (counted, logged rate-limited, health).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from attrgate.domain import SmsRefusal
from attrgate.guards.keys import KeyCheck
from attrgate.guards.sms import Charge, Hasher
from attrgate.store.base import (
    LOCKED,
    REDIS_ERROR,
    SQLITE_ERROR,
    TIMEOUT,
    Store,
    StoreUnavailable,
)
from attrgate.store.watch import StoreWatch

log = logging.getLogger("attrgate.sms")
T = TypeVar("T")
# Pauses before asking the store again to release (seconds): a lock held a while, a failover.
RELEASE_RETRIES = (0.25, 1.0, 3.0)
# Failures that may pass; a file deleted, a closed store or another key's counts do not.
PASSING = (TIMEOUT, LOCKED, SQLITE_ERROR, REDIS_ERROR)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SmsCounting:
    def __init__(
        self,
        store: Store,
        hasher: Hasher,
        clock_ms: Callable[[], int] = wall_clock_ms,
        watch: StoreWatch | None = None,
        key_check: KeyCheck | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock_ms = clock_ms
        self.watch = watch if watch is not None else StoreWatch()
        self._key_check = key_check  # until it passes: the store's counts may be another key's

    async def _checked(self) -> None:
        if self._key_check is not None and not self._key_check.passed:
            await self._watched("key check", self._key_check())

    async def _watched(self, during: str, call: Awaitable[T]) -> T:
        try:
            result = await call
        except StoreUnavailable as exc:
            self.watch.failed(exc, during)
            raise
        self.watch.answered()
        return result

    async def reserve(self, reservation_id: str, charges: Sequence[Charge]) -> list[SmsRefusal]:
        """Reserve every charge at once; the refusals when any counter is full (then nothing is
        reserved). Raises StoreUnavailable."""
        if not charges:
            return []
        await self._checked()
        counters = [c.counter for c in charges]
        result = await self._watched(
            "reserve", self.store.reserve(reservation_id, counters, self.clock_ms())
        )
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
        await self._checked()
        counters = [c.counter for c in charges]
        used = await self._watched("usage", self.store.usage(counters, self.clock_ms()))
        return [
            SmsRefusal(charge.guard, charge.rule, charge.description, 0)
            for charge, amount in zip(charges, used, strict=True)
            if amount + charge.counter.amount > charge.counter.limit
        ]

    async def release(self, reservation_id: str, charges: Sequence[Charge]) -> list[Charge]:
        """Give back a reservation Cognito provably did not use: the charges actually given
        back (none that were never taken). The release runs to its end even when the caller is
        cancelled (shielded), and a store that does not answer now (locked, slow, a Redis
        failover) is asked again a few times: a release given up keeps a count that Cognito
        never used. Failing all of that, it stays counted: over-counting is the safe side."""
        if not charges:
            return []
        release = asyncio.ensure_future(self._release(reservation_id, charges))
        release.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            removed = await asyncio.shield(release)
        except StoreUnavailable:
            # Counted and logged (rate-limited) by the watch; it stays counted: the safe side.
            log.debug("could not release SMS reservation %s; it stays counted", reservation_id)
            return []
        return [c for c, gone in zip(charges, removed, strict=True) if gone]

    async def _release(self, reservation_id: str, charges: Sequence[Charge]) -> list[bool]:
        counters = [c.counter for c in charges]
        for pause in (*RELEASE_RETRIES, None):
            try:
                return await self._watched("release", self.store.release(reservation_id, counters))
            except StoreUnavailable as exc:
                # Idempotent, so asking again is safe; a store gone for good is not asked again.
                if pause is None or exc.reason not in PASSING:
                    raise
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def probe(self) -> None:
        """Ask the store whether it answers, and still holds the key's fingerprint (the health
        check's periodic question)."""
        with contextlib.suppress(StoreUnavailable):
            await self._watched("probe", self.store.ping())
            if self._key_check is not None and self._key_check.passed:
                await self._watched("probe", self._key_check.still_held())
