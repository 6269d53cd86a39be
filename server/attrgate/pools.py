"""DescribeUserPool, cached per pool (see lookups.CachedLookup): found pools for a TTL, pools
that do not exist for a shorter one, and a found pool served stale for a bounded time while its
refresh fails (throttled, unreachable). Concurrent misses for one pool make one call.

Only requests the policy allowed get here, and a miss is paid for from the caller's lookup
budget, so no caller can spend Cognito's quota with made-up pool ids.
"""

from __future__ import annotations

import time

from attrgate.domain import PoolDescription, UpstreamResult
from attrgate.lookups import CachedLookup, Clock, Fetch, LookupBudget, Observe, no_observer
from attrgate.tracing import start_span

# Bounds memory against callers cycling through pool ids their policy's globs allow.
MAX_POOLS = 1024


class PoolCache(CachedLookup[str, PoolDescription]):
    def __init__(
        self,
        describe: Fetch[str, PoolDescription],
        *,
        budget: LookupBudget,
        ttl: float,
        negative_ttl: float = 60.0,
        stale: float = 3600.0,
        clock: Clock = time.monotonic,
        observe: Observe = no_observer,
    ) -> None:
        async def described(pool_id: str) -> PoolDescription | UpstreamResult:
            with start_span("attrgate.pool_metadata") as span:
                span.set_attribute("attrgate.user_pool_id", pool_id)
                return await describe(pool_id)

        super().__init__(
            described,
            operation="DescribeUserPool",
            budget=budget,
            ttl=ttl,
            negative_ttl=negative_ttl,
            stale=stale,
            max_entries=MAX_POOLS,
            clock=clock,
            observe=observe,
            loggable=str,  # pool ids are not personal
        )
