"""Charging SMS limits and budgets through the store: reserve before forwarding, release only
when Cognito's answer proves no message was sent.

The store bounds every call by its own timeout (--store-timeout) and raises StoreUnavailable
past it; every failure is reported to the StoreWatch (counted, logged rate-limited, health).

A circuit breaker (store/breaker.py) keeps a dead store from costing every SMS-triggering write
the whole store timeout: after a few failures in a row, reserve and dry_run fail at once
(`circuit_open`) without asking the store, until a trial call or the periodic probe finds it
answering again. Releases are never held back by it: one not attempted keeps a count forever.
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
    CIRCUIT_OPEN,
    CLOSED,
    LOCKED,
    REDIS_ERROR,
    SQLITE_ERROR,
    TIMEOUT,
    Store,
    StoreUnavailable,
)
from attrgate.store.breaker import Breaker
from attrgate.store.watch import StoreWatch

log = logging.getLogger("attrgate.sms")
T = TypeVar("T")
# Pauses before asking the store again to release (seconds): a lock held a while, a failover.
RELEASE_RETRIES = (0.25, 1.0, 3.0)
# Failures that may pass: a release asks again, and the breaker counts them (the store could not
# do the work, and asked again at once it would likely wait or fail again). A file deleted or
# another key's counts do not pass: they are definite answers, given at once, that only an
# operator mends; for the breaker they are answers (asking costs nothing, and each refusal keeps
# its precise reason). A closed store (the server stopping) says nothing either way.
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
        breaker: Breaker | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock_ms = clock_ms
        self.watch = watch if watch is not None else StoreWatch()
        self.breaker = breaker if breaker is not None else Breaker()
        self._key_check = key_check  # until it passes: the store's counts may be another key's

    def _admit(self, during: str) -> None:
        """Raise StoreUnavailable(CIRCUIT_OPEN) at once, the store not asked, while the breaker
        is open (half open, one caller at a time is let through as the trial)."""
        if self.breaker.allow():
            return
        exc = StoreUnavailable(
            "not asked: the SMS store failed repeatedly just before; it is tried again in "
            f"{self.breaker.retry_in():.1f}s, or once the periodic probe finds it answering",
            CIRCUIT_OPEN,
        )
        self.watch.refused(exc, during)
        raise exc

    async def _checked(self) -> None:
        if self._key_check is not None and not self._key_check.passed:
            await self._watched("key check", self._key_check())

    async def _watched(self, during: str, call: Awaitable[T]) -> T:
        """Await a store call, telling the breaker and the watch how it went. Every outcome
        of a call that reached the store is reported, the probe's and releases' included: any
        answer closes the breaker, so recovery does not wait for traffic."""
        try:
            result = await call
        except StoreUnavailable as exc:
            if exc.reason in PASSING:
                self.breaker.failed()
            elif exc.reason != CLOSED:
                self.breaker.succeeded()
            self.watch.failed(exc, during)
            raise
        self.breaker.succeeded()  # before the watch reports health up: closed by then
        self.watch.answered()
        return result

    async def reserve(self, reservation_id: str, charges: Sequence[Charge]) -> list[SmsRefusal]:
        """Reserve every charge at once; the refusals when any counter is full (then nothing is
        reserved). Raises StoreUnavailable."""
        if not charges:
            return []
        self._admit("reserve")
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
        self._admit("usage")
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
        check's periodic question). Never held back by the breaker: its answer is what closes
        the breaker while no traffic comes, and its failures keep it open."""
        with contextlib.suppress(StoreUnavailable):
            await self._watched("probe", self.store.ping())
            if self._key_check is not None and self._key_check.passed:
                await self._watched("probe", self._key_check.still_held())
