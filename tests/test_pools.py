"""The metadata caches and the per-caller lookup budget, with an injected clock: TTL, not-found
cached, stale on failure, one call for concurrent misses, a bounded spend on made-up ids."""

from __future__ import annotations

import asyncio

import pytest

from attrgate.domain import PoolDescription, UpstreamError, UpstreamResult
from attrgate.lookups import REFRESH_BACKOFF, LookupBudget, OverBudget
from attrgate.pools import PoolCache
from attrgate.users import UserSubs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


NOT_FOUND = UpstreamResult(ok=False, error=UpstreamError.RESOURCE_NOT_FOUND)
THROTTLED = UpstreamResult(ok=False, error=UpstreamError.THROTTLED, error_code="TooManyRequests")


class Describer:
    """DescribeUserPool as a test programs it: pools named `missing*` do not exist; `failing`
    makes every call fail as given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.delay = delay
        self.failing: UpstreamResult | None = None

    async def __call__(self, pool_id: str) -> PoolDescription | UpstreamResult:
        self.calls.append(pool_id)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(pool_id)
            raise
        self.finished.append(pool_id)
        if self.failing is not None:
            return self.failing
        if pool_id.startswith("missing"):
            return NOT_FOUND
        return PoolDescription(pool_id, {}, frozenset(), frozenset())


def cache(
    describe: Describer,
    clock: Clock | None = None,
    rate: float = 5,
    burst: int = 10,
    **kwargs: float,
) -> PoolCache:
    clock = clock or Clock()
    return PoolCache(
        describe, budget=LookupBudget(rate, burst, clock), clock=clock, **{"ttl": 300, **kwargs}
    )


# --- the token bucket -------------------------------------------------------------------------


def test_bucket_starts_full_refills_at_its_rate_and_says_when_the_next_token_comes() -> None:
    clock = Clock()
    budget = LookupBudget(rate=5, burst=10, clock=clock)
    assert [budget.take("a") for _ in range(10)] == [0.0] * 10
    assert budget.take("a") == pytest.approx(0.2)  # one token every 1/5 s
    clock.now = 0.1
    assert budget.take("a") == pytest.approx(0.1)
    clock.now = 0.2
    assert budget.take("a") == 0.0
    assert budget.take("a") == pytest.approx(0.2)
    clock.now = 1000.0  # idle for long: the bucket holds at most the burst
    assert [budget.take("a") for _ in range(11)].count(0.0) == 10


def test_buckets_are_per_caller_and_given_back_tokens_never_exceed_the_burst() -> None:
    clock = Clock()
    budget = LookupBudget(rate=1, burst=2, clock=clock)
    assert budget.take("a") == budget.take("a") == 0.0
    assert budget.take("a") > 0
    assert budget.take("b") == 0.0  # another caller's bucket is its own
    budget.give_back("a")
    assert budget.take("a") == 0.0
    for _ in range(5):
        budget.give_back("b")
    assert [budget.take("b") for _ in range(3)].count(0.0) == 2


def test_buckets_are_bounded_and_an_evicted_one_starts_full() -> None:
    clock = Clock()
    budget = LookupBudget(rate=1, burst=1, clock=clock, max_callers=2)
    assert budget.take("a") == 0.0
    assert budget.take("a") > 0
    budget.take("b")
    budget.take("c")  # three callers, room for two: "a", the least recently used, goes
    assert len(budget._buckets) == 2
    assert budget.take("a") == 0.0


def test_a_budget_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        LookupBudget(rate=0, burst=10)
    with pytest.raises(ValueError, match="positive rate"):
        LookupBudget(rate=5, burst=0)


# --- the pool cache ---------------------------------------------------------------------------


def test_ttl_reuse_and_expiry() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock)

    async def main() -> None:
        await pools.get("p", "svc")
        clock.now = 299.9
        await pools.get("p", "svc")
        assert describe.calls == ["p"]
        clock.now = 300.0
        await pools.get("p", "svc")
        assert describe.calls == ["p", "p"]

    asyncio.run(main())


def test_a_pool_not_found_is_not_asked_for_again_within_the_negative_ttl() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, negative_ttl=60)

    async def main() -> None:
        for _ in range(50):
            assert await pools.get("missing", "svc") == NOT_FOUND
        assert describe.calls == ["missing"]
        clock.now = 60.0
        assert await pools.get("missing", "svc") == NOT_FOUND
        assert describe.calls == ["missing", "missing"]

    asyncio.run(main())


def test_made_up_pools_cost_at_most_the_burst_plus_the_rate_over_time() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, rate=5, burst=10)

    async def main() -> None:
        answers = [await pools.get(f"missing{i}", "svc") for i in range(200)]
        assert len(describe.calls) == 10
        assert answers[:10] == [NOT_FOUND] * 10
        assert answers[10:] == [OverBudget(pytest.approx(0.2))] * 190
        clock.now = 2.0  # two seconds refill ten tokens
        for i in range(200, 220):
            await pools.get(f"missing{i}", "svc")
        assert len(describe.calls) == 20

    asyncio.run(main())


def test_a_concurrent_burst_is_bounded_before_any_answer_returns() -> None:
    describe = Describer(delay=0.2)
    pools = cache(describe, rate=5, burst=10)

    async def main() -> None:
        answers = await asyncio.gather(*(pools.get(f"missing{i}", "svc") for i in range(100)))
        assert len(describe.calls) == 10
        assert sum(isinstance(a, OverBudget) for a in answers) == 90

    asyncio.run(main())


def test_pools_that_exist_give_their_token_back() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, rate=1, burst=2, ttl=0)

    async def main() -> None:
        # With nothing cached (ttl 0), every one of these is a call; none drains the bucket.
        for i in range(30):
            assert isinstance(await pools.get(f"p{i % 3}", "svc"), PoolDescription)
        assert len(describe.calls) == 30
        # While made-up ones do: two calls, then refused.
        assert await pools.get("missing1", "svc") == NOT_FOUND
        assert await pools.get("missing2", "svc") == NOT_FOUND
        assert isinstance(await pools.get("missing3", "svc"), OverBudget)
        assert isinstance(await pools.get("p9", "svc"), OverBudget)
        assert isinstance(await pools.get("p9", "other"), PoolDescription)

    asyncio.run(main())


def test_a_failed_refresh_serves_the_stale_answer_within_its_bound() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, ttl=300, stale=3600)

    async def main() -> None:
        fresh = await pools.get("p", "svc")
        describe.failing = THROTTLED
        clock.now = 301.0
        assert await pools.get("p", "svc") is fresh
        assert describe.calls == ["p", "p"]
        # Backing off: the stale answer serves without asking a throttled Cognito again.
        clock.now = 301.0 + REFRESH_BACKOFF - 0.1
        assert await pools.get("p", "svc") is fresh
        assert describe.calls == ["p", "p"]
        clock.now = 301.0 + REFRESH_BACKOFF
        assert await pools.get("p", "svc") is fresh
        assert describe.calls == ["p", "p", "p"]
        # Past the bound the failure answers; a pool never seen gets it too.
        clock.now = 300.0 + 3600.0
        assert await pools.get("p", "svc") == THROTTLED
        assert await pools.get("q", "svc") == THROTTLED
        describe.failing = None
        assert isinstance(await pools.get("p", "svc"), PoolDescription)

    asyncio.run(main())


def test_no_stale_answer_when_stale_is_zero() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, ttl=300, stale=0)

    async def main() -> None:
        await pools.get("p", "svc")
        describe.failing = THROTTLED
        clock.now = 300.0
        assert await pools.get("p", "svc") == THROTTLED

    asyncio.run(main())


def test_not_found_replaces_a_good_answer() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, ttl=300, stale=3600, negative_ttl=60)

    async def main() -> None:
        await pools.get("p", "svc")
        describe.failing = NOT_FOUND  # the pool was deleted
        clock.now = 301.0
        assert await pools.get("p", "svc") == NOT_FOUND
        describe.failing = THROTTLED
        clock.now = 400.0  # past the negative TTL: asked again, and nothing stale is left
        assert await pools.get("p", "svc") == THROTTLED

    asyncio.run(main())


def test_a_caller_over_budget_is_served_a_stale_answer_rather_than_refused() -> None:
    describe, clock = Describer(), Clock()
    pools = cache(describe, clock, rate=1, burst=1, ttl=10, stale=3600)

    async def main() -> None:
        fresh = await pools.get("p", "svc")
        clock.now = 11.0
        assert await pools.get("missing", "svc") == NOT_FOUND  # spends the one token
        assert await pools.get("p", "svc") is fresh
        assert describe.calls == ["p", "missing"]

    asyncio.run(main())


def test_one_call_for_concurrent_misses_and_a_quitter_cancels_no_one() -> None:
    describe = Describer(delay=1.0)
    pools = cache(describe, burst=1, rate=0.001)

    async def main() -> None:
        quitter = asyncio.create_task(pools.get("p", "svc"))
        await asyncio.sleep(0.05)
        patient = [asyncio.create_task(pools.get("p", "svc")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert describe.finished == [], "the lookup ended before the quitter left: no race"
        quitter.cancel()  # e.g. its caller's deadline passed
        results = await asyncio.gather(*patient)
        assert all(isinstance(r, PoolDescription) for r in results)
        assert describe.calls == ["p"]
        # The quitter's token came back although it left: the pool was found.
        assert isinstance(await pools.get("q", "svc"), PoolDescription)

    asyncio.run(main())


def test_a_lookup_every_caller_gave_up_on_is_cancelled() -> None:
    """Nobody waits for it any more: it must not hold its place in the executor's queue nor
    reach Cognito later (before, it ran on, shielded, and took queue slots from later calls)."""
    describe = Describer(delay=10.0)
    pools = cache(describe)

    async def main() -> None:
        waiters = [asyncio.create_task(pools.get("p", "svc")) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert describe.calls == ["p"]
        waiters[0].cancel()
        await asyncio.sleep(0.05)
        assert describe.cancelled == []  # one caller still waits
        waiters[1].cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert describe.cancelled == ["p"]
        # The next caller starts a lookup of its own.
        again = asyncio.create_task(pools.get("p", "svc"))
        await asyncio.sleep(0.05)
        assert describe.calls == ["p", "p"]
        again.cancel()

    asyncio.run(main())


def test_a_caller_arriving_as_the_last_one_leaves_gets_its_answer_not_a_cancellation() -> None:
    describe = Describer(delay=0.2)
    pools = cache(describe)

    async def main() -> None:
        first = asyncio.create_task(pools.get("p", "svc"))
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0)  # the first caller has left; its lookup is being cancelled
        late = await pools.get("p", "svc")  # arrives before that cancellation has landed
        assert isinstance(late, PoolDescription)
        assert describe.calls == ["p", "p"]

    asyncio.run(main())


# --- user subs --------------------------------------------------------------------------------


def test_found_subs_are_reused_briefly_made_up_users_spend_the_budget() -> None:
    clock = Clock()
    calls: list[tuple[str, str]] = []

    async def lookup(pool_id: str, username: str) -> str | UpstreamResult:
        calls.append((pool_id, username))
        if username.startswith("ghost"):
            return UpstreamResult(ok=False, error=UpstreamError.USER_NOT_FOUND)
        return f"sub-{username}"

    users = UserSubs(lookup, budget=LookupBudget(1, 3, clock), ttl=60, clock=clock)

    async def main() -> None:
        assert await users.get(("p", "ada"), "svc") == "sub-ada"
        assert await users.get(("p", "ada"), "svc") == "sub-ada"
        assert calls == [("p", "ada")]
        clock.now = 60.0
        assert await users.get(("p", "ada"), "svc") == "sub-ada"
        assert len(calls) == 2
        answers = [await users.get(("p", f"ghost{i}"), "svc") for i in range(20)]
        assert len(calls) == 2 + 3
        assert sum(isinstance(a, OverBudget) for a in answers) == 17
        # Not-found users are never cached: one created a moment later is found.
        assert isinstance(await users.get(("p", "ghost0"), "other"), UpstreamResult)
        assert len(calls) == 6

    asyncio.run(main())
