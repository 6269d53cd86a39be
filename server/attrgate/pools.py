"""DescribeUserPool, cached per pool with a TTL; concurrent misses for one pool make one call.

Only requests the policy allowed get here, so a caller without a policy cannot spend Cognito's
quota with made-up pool ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from attrgate.domain import PoolDescription, UpstreamResult
from attrgate.tracing import start_span

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
        self._inflight: dict[str, asyncio.Task[PoolDescription | UpstreamResult]] = {}

    async def get(self, pool_id: str) -> PoolDescription | UpstreamResult:
        """The pool's description, or the classified error of the call that tried to get it.
        Errors are not cached: the next request tries again."""
        entry = self._entries.get(pool_id)
        if entry is not None and self._clock() < entry[0]:
            return entry[1]
        task = self._inflight.get(pool_id)
        if task is None:
            # A task of its own, so one caller giving up never cancels the call the others
            # are waiting on.
            task = asyncio.ensure_future(self._fetch(pool_id))
            self._inflight[pool_id] = task
            task.add_done_callback(lambda done: self._forget(pool_id, done))
        return await asyncio.shield(task)

    async def _fetch(self, pool_id: str) -> PoolDescription | UpstreamResult:
        with start_span("attrgate.pool_metadata") as span:
            span.set_attribute("attrgate.user_pool_id", pool_id)
            result = await self._describe(pool_id)
        if isinstance(result, PoolDescription):
            if len(self._entries) >= MAX_POOLS:
                self._entries.pop(next(iter(self._entries)))
            self._entries[pool_id] = (self._clock() + self._ttl, result)
        return result

    def _forget(self, pool_id: str, done: asyncio.Task[PoolDescription | UpstreamResult]) -> None:
        if self._inflight.get(pool_id) is done:
            del self._inflight[pool_id]
        if not done.cancelled():
            done.exception()  # retrieved: awaiting callers re-raise it, nobody else logs it
