"""The quota governor on the request path: a call that reaches Cognito's UserUpdate category
first takes, within the time it may wait, a slot in its share's bulkhead, its user's pacing
slot, and a token of its share's rate on this replica (leases.py keeps that rate fair across the
fleet). Any of them refused: the call is answered QUOTA_EXCEEDED, and nothing is sent.

A retry inside the Cognito call (botocore's standard mode) takes a token too, from the worker
thread, without waiting: no token, no retry. Every throttle Cognito answers feeds the adaptive
factor (adaptive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from attrgate.quota.adaptive import Adaptive
from attrgate.quota.bucket import Refused, ShareGate
from attrgate.quota.bulkhead import Bulkhead
from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.demand import Demand
from attrgate.quota.leases import LOCAL, MODES, SYNC_EVERY, LeaseKeeper, Leases
from attrgate.quota.pacing import LocalPacing
from attrgate.store.base import FleetQuotaStore, Pace, StoreUnavailable
from attrgate.store.breaker import Breaker
from attrgate.tasks import cancel_and_wait

log = logging.getLogger("attrgate.quota")

# Why a call was refused (the QuotaFailure's subject says which share).
SHARE, USER, IN_FLIGHT = "share", "user", "in_flight"
# attrgate_quota_tokens_total{result}
GRANTED = "granted"
EXCEEDED = "exceeded"  # the share's rate: no token within the wait
USER_EXCEEDED = "user_exceeded"  # the user's pacing
IN_FLIGHT_EXCEEDED = "in_flight_exceeded"  # the share's bulkhead
CANCELLED = "cancelled"  # the caller left while waiting
RETRY = "retry"  # a token for a retry inside a Cognito call
RETRY_REFUSED = "retry_refused"  # a retry not sent: no token
RESULTS = (GRANTED, EXCEEDED, USER_EXCEEDED, IN_FLIGHT_EXCEEDED, CANCELLED, RETRY, RETRY_REFUSED)
_REFUSED_RESULT = {SHARE: EXCEEDED, USER: USER_EXCEEDED, IN_FLIGHT: IN_FLIGHT_EXCEEDED}
# Of a caller's remaining deadline, this much is left for the Cognito call itself (and for the
# answer to reach a caller whose wait ran out: a refusal sent as its deadline passes is lost).
KEEP_FOR_CALL = 0.25
LOG_REDUCED_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    share: str
    scope: str  # SHARE, USER or IN_FLIGHT
    retry_after: float  # seconds
    quota: str  # the CognitoQuota's name


class QuotaEvents(Protocol):
    def quota_token(self, share: str, result: str) -> None: ...

    def quota_waited(self, share: str, seconds: float) -> None: ...

    def quota_shares(self, shares: Sequence[str]) -> None:
        """The serving quota's shares (now, and after a reload changed them)."""


class _NoEvents:
    def quota_token(self, share: str, result: str) -> None:
        pass

    def quota_waited(self, share: str, seconds: float) -> None:
        pass

    def quota_shares(self, shares: Sequence[str]) -> None:
        pass


class _Share:
    __slots__ = ("bulkhead", "demand", "gate", "lease", "name", "rate")

    def __init__(self, name: str, in_flight: int) -> None:
        self.name = name
        self.gate = ShareGate()
        self.bulkhead = Bulkhead(in_flight)
        self.demand = Demand()
        self.lease = 0.0  # what the leases give this share on this replica
        self.rate = 0.0  # tokens per second on this replica now: the lease x adaptive factor


class Ticket:
    """A call's right to go to Cognito: it holds a bulkhead slot until `release` (the call's
    outcome), and lends the call's retries their tokens (worker threads). A retry's token is
    taken when botocore decides to retry; its backoff (a second or two at most) follows."""

    __slots__ = ("_events", "_released", "_share", "_throttled", "waited")

    def __init__(
        self, share: _Share, waited: float, events: QuotaEvents, throttled: Callable[[], None]
    ) -> None:
        self._share = share
        self._events = events
        self._throttled = throttled
        self._released = False
        self.waited = waited

    @property
    def share(self) -> str:
        return self._share.name

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._share.bulkhead.leave()

    def retry_token(self) -> bool:
        ok = self._share.gate.bucket.try_take()
        self._events.quota_token(self._share.name, RETRY if ok else RETRY_REFUSED)
        return ok

    def throttled(self) -> None:
        self._throttled()


# A share's bulkhead when its policy names no maxInFlight: calls of the class under way at once.
DEFAULT_MAX_IN_FLIGHT = 32


class Governor:
    def __init__(
        self,
        keeper: LeaseKeeper,
        default_in_flight: int,
        user_key: Callable[[str, str], str] | None = None,
        pacing_store: FleetQuotaStore | None = None,
        pacing_breaker: Breaker | None = None,
        events: QuotaEvents | None = None,
        on_store_failure: Callable[[StoreUnavailable], None] = lambda exc: None,
    ) -> None:
        self.keeper = keeper
        self.adaptive = Adaptive()
        self._default_in_flight = max(1, default_in_flight)
        self._user_key = user_key or _process_key()
        self._pacing_store = pacing_store
        self._pacing_breaker = pacing_breaker or Breaker()
        self._local_pacing = LocalPacing()
        self._events: QuotaEvents = events or _NoEvents()
        self._on_store_failure = on_store_failure
        self.quota: CompiledQuota | None = None
        self.shares: list[_Share] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged_reduced = -math.inf
        self._logged_failure = -math.inf
        self._stopping = False
        # The serving set's quota (a reload may swap it): followed at every exchange.
        self.serving: Callable[[], CompiledQuota | None] = lambda: self.quota

    # --- the request path ---------------------------------------------------------------

    async def acquire(
        self,
        quota: CompiledQuota,
        caller: str,
        pool_id: str,
        username: str,
        deadline: float | None,
    ) -> Ticket | QuotaRefusal | None:
        """The call's ticket, why it gets none in time, or None when no CognitoQuota governs
        any more (a reload lifted it after this call was decided)."""
        governing = self._governing(quota)
        if governing is None:
            return None
        if self._stopping:
            share_name = self.shares[governing.share_of(caller)].name
            return QuotaRefusal(share_name, SHARE, 1.0, governing.name)
        quota = governing
        share = self.shares[quota.share_of(caller)]
        share.demand.arrived()
        user = self._user_key(pool_id, username)
        wait = quota.max_wait
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic() - KEEP_FOR_CALL)
        started = time.monotonic()
        ends = started + max(wait, 0.0)
        try:
            # The share's line first, taking nothing: a call it would refuse anyway spends no
            # user's turn (nor a Redis round trip).
            eta = share.gate.eta()
            if math.isfinite(eta) and eta > ends - started:
                return self._refused(quota, share, SHARE, eta)
            if quota.per_user is not None:
                paced = await self._pace(quota, user, ends)
                if paced is not None:
                    return self._refused(quota, share, USER, paced)
            if self._stopping:  # the grace began while this call slept for its user's turn
                return self._refused(quota, share, SHARE, 1.0)
            # The slot after the user's turn: calls sleeping until their user's next slot hold
            # none (a hot user must not fill the bulkhead for everyone else).
            if not await share.bulkhead.enter(ends - time.monotonic()):
                return self._refused(quota, share, IN_FLIGHT, SYNC_EVERY)
            try:
                await share.gate.take(ends - time.monotonic())
            except BaseException:
                share.bulkhead.leave()
                raise
        except Refused as refused:
            return self._refused(quota, share, SHARE, refused.retry_after)
        except asyncio.CancelledError:
            self._events.quota_token(share.name, CANCELLED)
            raise
        waited = time.monotonic() - started
        self._events.quota_token(share.name, GRANTED)
        self._events.quota_waited(share.name, waited)
        return Ticket(share, waited, self._events, lambda: self._throttled(user))

    def _governing(self, quota: CompiledQuota) -> CompiledQuota | None:
        """The quota that governs a call decided under `quota`: the serving set's. A call
        decided under an older set never turns the governor back to that set's shares."""
        if quota is self.quota:
            return quota
        serving = self.serving()
        if serving is not None and serving is not self.quota:
            self._configure(serving)
        return serving

    def _refused(
        self, quota: CompiledQuota, share: _Share, scope: str, retry_after: float
    ) -> QuotaRefusal:
        self._events.quota_token(share.name, _REFUSED_RESULT[scope])
        return QuotaRefusal(share.name, scope, max(retry_after, 0.001), quota.name)

    async def _pace(self, quota: CompiledQuota, user: str, ends: float) -> float | None:
        """Wait for the user's slot: None once it has come, else the seconds until one would."""
        assert quota.per_user is not None
        per_user = quota.per_user
        now_ms = time.time_ns() // 1_000_000
        wait_ms = max(0.0, (ends - time.monotonic()) * 1000)
        interval = 1000 / per_user.rate
        tolerance = (per_user.burst - 1) * interval
        local = self._local_pacing
        ok: bool | None = None
        at_ms = 0.0
        if self._pacing_store is not None and self._pacing_breaker.allow():
            try:
                paced = await self._pacing_store.quota_pace(
                    quota.name,
                    user,
                    Pace(now_ms, interval, tolerance, wait_ms, local.tat(user)),
                )
            except StoreUnavailable as exc:
                self._pacing_breaker.failed()
                self._on_store_failure(exc)
            else:
                self._pacing_breaker.succeeded()
                ok, at_ms = paced.ok, paced.at_ms
                local.note(user, paced.tat_ms, now_ms)
        if ok is None:  # no fleet store, or it does not answer: this replica's part
            replicas = 1 if self._pacing_store is None else self.keeper.expected_replicas
            slot = local.schedule(user, now_ms, interval * replicas, tolerance * replicas, wait_ms)
            ok, at_ms = slot.ok, slot.at_ms
        # From now, not from before the store's answer: the wait never runs past `ends`.
        delay = (at_ms - time.time_ns() / 1_000_000) / 1000
        if not ok:
            return max(delay, 0.001)
        if delay > 0:
            await asyncio.sleep(delay)
        return None

    def _throttled(self, user: str) -> None:
        """Cognito throttled an attempt (a worker thread): lower the rate now, not at the next
        renewal (a quarter second of sends at the old rate would be throttled too)."""
        self.adaptive.throttled(user)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._apply_factor)

    def _apply_factor(self) -> None:
        quota = self.quota
        if quota is None:
            return
        factor = self.adaptive.factor()
        for share in self.shares:
            share.rate = share.lease * factor
            share.gate.set_rate(share.rate, quota.burst * share.lease / quota.rate)

    # --- configuration and leases -------------------------------------------------------

    def _configure(self, quota: CompiledQuota) -> None:
        """A new set's quota: shares of the same name keep their line, demand and bulkhead."""
        by_name = {s.name: s for s in self.shares}
        shares = []
        for spec in quota.shares:
            limit = spec.max_in_flight or self._default_in_flight
            share = by_name.get(spec.name) or _Share(spec.name, limit)
            share.bulkhead.limit = limit
            share.bulkhead.admit()
            shares.append(share)
        for gone in set(by_name) - {s.name for s in shares}:
            by_name[gone].gate.retire()  # its line is refused now, not served unbacked
        self.quota, self.shares = quota, shares
        self._events.quota_shares([s.name for s in shares])
        self._wake.set()

    def follow(self, quota: CompiledQuota | None) -> None:
        """The serving set changed (a reload): its quota, or None (lifted: calls already in
        line are served at the rates they had; new ones are not governed)."""
        if quota is None:
            self.quota, self.shares = None, []
        elif quota is not self.quota:
            self._configure(quota)

    async def renew(self) -> Leases | None:
        """One lease exchange, and the rates it gives applied (also before serving)."""
        self.follow(self.serving())
        quota, shares = self.quota, self.shares
        if quota is None:
            return None
        leases = await self.keeper.renew(quota, [s.demand.rate() for s in shares])
        if quota is not self.quota:
            return leases  # a reload came meanwhile: the next exchange is for the new set
        for share, rate in zip(shares, leases.rates, strict=True):
            share.lease = rate
        self._apply_factor()  # the fleet's burst is split as the rate is
        self._log_reduced(quota, self.adaptive.factor())
        return leases

    def _log_reduced(self, quota: CompiledQuota, factor: float) -> None:
        now = time.monotonic()
        if factor < 1.0 and now - self._logged_reduced >= LOG_REDUCED_EVERY:
            self._logged_reduced = now
            log.warning(
                "Cognito throttles although the quota holds (other clients share the account?): "
                "sending at %.0f%% of CognitoQuota %s (%d throttles seen so far)",
                factor * 100,
                quota.name,
                self.adaptive.throttles,
            )
        elif factor >= 1.0 and self._logged_reduced > -math.inf:
            self._logged_reduced = -math.inf
            log.info("Cognito quota back to its full rate: CognitoQuota %s", quota.name)

    def _fail_safe(self) -> None:
        """A renewal failed unexpectedly (a bug): this replica's emergency share, not a lease
        that is about to expire; the error is logged once a minute."""
        now = time.monotonic()
        if now - self._logged_failure >= LOG_REDUCED_EVERY:
            self._logged_failure = now
            log.exception("quota lease renewal failed; sending at the emergency share")
        quota = self.quota
        if quota is None:
            return
        leases = self.keeper.emergency(quota, [s.demand.rate() for s in self.shares])
        for share, rate in zip(self.shares, leases.rates, strict=True):
            share.lease = rate
        self._apply_factor()

    def stop_waiting(self) -> None:
        """The server stops taking calls (the grace begins): calls still waiting for their
        turn are refused now (nothing was sent: another replica takes the retry), not held
        until the grace ends; new ones are refused at once."""
        self._stopping = True
        for share in self.shares:
            share.gate.retire()
            share.bulkhead.retire()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before: a reload during the renewal wakes the next one
            try:
                await self.renew()
            except Exception:  # never let the loop die, nor the rates freeze on a lease
                self._fail_safe()
            try:
                async with asyncio.timeout(SYNC_EVERY):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Stop renewing, and give this replica's lease back to the fleet at once (a rolling
        deploy need not wait for it to expire)."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        for share in self.shares:
            share.gate.close()
        if self.quota is not None:
            await self.keeper.leave(self.quota)

    @property
    def modes(self) -> Sequence[str]:
        return MODES

    @property
    def mode(self) -> str:
        return self.keeper.mode if self.quota is not None else LOCAL

    def factor(self) -> float:
        return self.adaptive.factor()

    def configured_rate(self) -> float | None:
        return self.quota.rate if self.quota is not None else None

    def snapshot(self) -> Sequence[tuple[str, float, float, int]]:
        """(share, rate here, demand here, calls under way) for the gauges."""
        return [(s.name, s.rate, s.demand.rate(), s.bulkhead.in_flight) for s in self.shares]


def _process_key() -> Callable[[str, str], str]:
    """Without a fleet store's key: a key of this process's own (the hashes never leave it)."""
    key = os.urandom(32)

    def user_key(pool_id: str, username: str) -> str:
        digest = hashlib.blake2b(f"{pool_id}\0{username}".encode(), key=key, digest_size=16)
        return digest.hexdigest()

    return user_key
