"""The DescribeUserPool cache: TTL, one call for concurrent misses, callers independent."""

from __future__ import annotations

import asyncio

from attrgate.domain import PoolDescription, UpstreamError, UpstreamResult
from attrgate.pools import PoolCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def describer(delay: float = 0.0) -> tuple[list[str], object]:
    calls: list[str] = []

    async def describe(pool_id: str) -> PoolDescription | UpstreamResult:
        calls.append(pool_id)
        await asyncio.sleep(delay)
        if pool_id == "missing":
            return UpstreamResult(ok=False, error=UpstreamError.RESOURCE_NOT_FOUND)
        return PoolDescription(pool_id, {}, frozenset(), frozenset())

    return calls, describe


def test_ttl_reuse_and_expiry() -> None:
    calls, describe = describer()
    clock = Clock()
    cache = PoolCache(describe, ttl=300, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        await cache.get("p")
        clock.now = 299.9
        await cache.get("p")
        assert calls == ["p"]
        clock.now = 300.0
        await cache.get("p")
        assert calls == ["p", "p"]
        # Errors are not cached: the next request asks again.
        await cache.get("missing")
        await cache.get("missing")
        assert calls.count("missing") == 2

    asyncio.run(main())


def test_one_call_for_concurrent_misses_and_a_quitter_cancels_no_one() -> None:
    calls, describe = describer(delay=0.2)
    cache = PoolCache(describe, ttl=300)  # type: ignore[arg-type]

    async def main() -> None:
        quitter = asyncio.create_task(cache.get("p"))
        await asyncio.sleep(0.05)
        patient = [asyncio.create_task(cache.get("p")) for _ in range(5)]
        await asyncio.sleep(0.05)
        quitter.cancel()  # e.g. its caller's deadline passed
        results = await asyncio.gather(*patient)
        assert all(isinstance(r, PoolDescription) for r in results)
        assert calls == ["p"]

    asyncio.run(main())
