"""DescribeUserPool, cached per pool with a TTL; concurrent misses for one pool make one call.

Only requests the policy allowed get here, so a caller without a policy cannot spend Cognito's
quota with made-up pool ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from attrgate.domain import PoolDescription, UpstreamResult

Describe = Callable[[str], Awaitable[PoolDescription | UpstreamResult]]
# Bounds memory against callers cycling through pool ids their policy's globs allow.
MAX_POOLS = 1024


class PoolCache:
    def __init__(
        self, describe: Describe, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._describe = describe
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, PoolDescription]] = {}
        self._inflight: dict[str, asyncio.Future[PoolDescription | UpstreamResult]] = {}

    async def get(self, pool_id: str) -> PoolDescription | UpstreamResult:
        """The pool's description, or the classified error of the call that tried to get it.
        Errors are not cached: the next request tries again."""
        entry = self._entries.get(pool_id)
        if entry is not None and self._clock() < entry[0]:
            return entry[1]
        pending = self._inflight.get(pool_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[PoolDescription | UpstreamResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._inflight[pool_id] = future
        try:
            result = await self._describe(pool_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; nobody else must log it
            raise
        finally:
            del self._inflight[pool_id]
        if isinstance(result, PoolDescription):
            if len(self._entries) >= MAX_POOLS:
                self._entries.pop(next(iter(self._entries)))
            self._entries[pool_id] = (self._clock() + self._ttl, result)
        future.set_result(result)
        return result
