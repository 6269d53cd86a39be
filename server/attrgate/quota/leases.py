"""Which rate this replica holds for each share, renewed every SYNC_EVERY seconds.

- fleet (a Redis store): the replicas exchange demands in one lease table; each computes the
  fleet's fair allocation from everyone's demands, asks for its part, and the store grants it
  no more than the other live leases leave of the rate (store/redis_lua.QUOTA_SYNC), so the
  leases of the fleet never add up to more than the rate. A lease not renewed expires after
  LEASE_TTL, and its rate goes to the others.
- a failed exchange keeps the last grant until it expires: the store counts it for the others
  until then, so sending less would waste it and sending more would break the invariant.
- emergency (the fleet store has not answered for a whole lease, or its breaker is open and
  the last grant has expired): rate / expected replicas (--quota-replicas, else the replicas
  seen live at the last healthy exchange), shared among the shares by the same fairness on
  this replica's demands.
- local (no fleet store: SQLite or none): the whole rate (divided by --quota-replicas when
  given) for this replica alone.

`serve --workers N` makes each replica N processes, each with its own keeper: in the fleet each
is a replica of its own (its lease, counted among the live ones); without the fleet store the
divisor is multiplied by N (rate / (replicas x workers)), and N is the least a fleet has.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.fairshare import allocate, split
from attrgate.store.base import FleetQuotaStore, LeaseRow, LeaseSync, StoreUnavailable
from attrgate.store.breaker import Breaker

log = logging.getLogger("attrgate.quota")
SYNC_EVERY = 0.25  # seconds between two lease exchanges
LEASE_TTL = 2.0  # seconds a lease holds unless renewed
# The least an exchange may take before it counts as failed (--quota-store-timeout when
# longer): it runs off the request path, and a failed one only keeps the last grant.
LEASE_TIMEOUT = 0.25
HEADROOM = 1.2  # demand is measured a moment late: ask for a little more than was seen
IDLE = 0.5  # requests per second a replica counts for a share beyond its demand (split)

FLEET, EMERGENCY, LOCAL = "fleet", "emergency", "local"
MODES = (FLEET, EMERGENCY, LOCAL)


@dataclass(frozen=True, slots=True)
class Leases:
    mode: str
    rates: tuple[float, ...]  # per share, requests per second on this replica
    replicas: int  # live replicas known (fleet), or the divisor used


class LeaseKeeper:
    def __init__(
        self,
        fleet: FleetQuotaStore | None,
        replicas: int | None,
        breaker: Breaker | None = None,
        on_failure: Callable[[StoreUnavailable], None] = lambda exc: None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
        workers: int = 1,
    ) -> None:
        self._fleet = fleet
        self._replicas = replicas  # --quota-replicas
        self._workers = workers  # --workers: processes of this replica, each with a keeper
        self._breaker = breaker or Breaker()
        self._on_failure = on_failure
        self._clock_ms = clock_ms
        self.replica = uuid.uuid4().hex[:16]
        self._others: tuple[LeaseRow, ...] = ()
        self._learned: int | None = None  # live replicas at the last healthy exchange
        self._grant: Leases | None = None  # the last grant, and when it was made (monotonic)
        self._granted_at = -LEASE_TTL
        self._monotonic = monotonic
        self.mode = LOCAL if fleet is None else FLEET

    @property
    def expected_replicas(self) -> int:
        """Processes expected to share the rate: --quota-replicas x --workers, else the ones
        seen live at the last exchange (at least this replica's workers)."""
        if self._replicas:
            return self._replicas * self._workers
        return max(self._learned or 1, self._workers)

    async def renew(self, quota: CompiledQuota, demands: Sequence[float]) -> Leases:
        wanted = [d * HEADROOM for d in demands]
        if self._fleet is None:
            divisor = (self._replicas or 1) * self._workers
            rates = allocate(quota.rate / divisor, quota.specs, wanted)
            return Leases(LOCAL, tuple(rates), divisor)
        if self._breaker.allow():
            try:
                granted = await self._exchange(quota, wanted)
            except StoreUnavailable as exc:
                self._breaker.failed()
                self._on_failure(exc)
            else:
                self._breaker.succeeded()
                self._grant, self._granted_at = granted, self._monotonic()
                self._changed(FLEET)
                return granted
        held = self._grant
        if (
            held is not None
            and len(held.rates) == len(wanted)
            and self._monotonic() - self._granted_at < LEASE_TTL
        ):
            return held  # still counted for us in the store: neither more nor less
        return self.emergency(quota, demands)

    def emergency(self, quota: CompiledQuota, demands: Sequence[float]) -> Leases:
        """This replica's share without the fleet store: rate / expected replicas."""
        if self._fleet is not None:
            self._changed(EMERGENCY)
        expected = self.expected_replicas
        rates = allocate(quota.rate / expected, quota.specs, [d * HEADROOM for d in demands])
        return Leases(EMERGENCY, tuple(rates), expected)

    async def leave(self, quota: CompiledQuota) -> None:
        """Give this replica's lease back now (the server stops); best effort."""
        if self._fleet is None or not self._breaker.allow():
            return
        with contextlib.suppress(StoreUnavailable):  # it expires by itself within LEASE_TTL
            await self._fleet.quota_leave(quota.name, self.replica)

    async def _exchange(self, quota: CompiledQuota, wanted: list[float]) -> Leases:
        assert self._fleet is not None
        signature = quota.signature
        # Everyone's demands as of the last exchange, this replica's as of now.
        # Rows of another shape (a reload under way, or written by hand) count against the
        # rate in the store, never in the fairness here.
        rows = [list(wanted)] + [
            list(r.demands)
            for r in self._others
            if r.signature == signature and len(r.demands) == len(wanted)
        ]
        totals = [sum(row[i] for row in rows) for i in range(len(wanted))]
        allocation = allocate(quota.rate, quota.specs, totals)
        desired = split(allocation, wanted, rows, IDLE)
        grant = await self._fleet.quota_sync(
            quota.name,
            LeaseSync(
                self.replica,
                self._clock_ms(),
                int(LEASE_TTL * 1000),
                quota.rate,
                signature,
                wanted,
                desired,
            ),
        )
        self._others = grant.others
        self._learned = len(grant.others) + 1
        rates = grant.rates if len(grant.rates) == len(wanted) else (0.0,) * len(wanted)
        return Leases(FLEET, tuple(rates), self._learned)

    def _changed(self, mode: str) -> None:
        if mode == self.mode:
            return
        if mode == EMERGENCY:
            log.warning(
                "quota store does not answer: each replica now sends at most rate / %d "
                "(%s) until it answers again",
                self.expected_replicas,
                ("--quota-replicas x --workers" if self._workers > 1 else "--quota-replicas")
                if self._replicas
                else "replicas seen at the last exchange"
                if self._learned
                else "no replica count known: pass --quota-replicas",
            )
        else:
            log.info("quota store answers again: sharing the rate with the fleet")
        self.mode = mode
