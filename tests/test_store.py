"""The SMS guard's counting stores: one suite, run against SQLite, a real redis-server and a real
three-node Redis Cluster.

Every test injects its clock (T0 is far from the wall clock, so it must reach the Redis script).
Exactness under concurrency is checked with several store objects in one event loop and with
several OS processes sharing one SQLite file or one Redis.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from attrgate.store.base import (
    TIMEOUT,
    Counter,
    ReserveResult,
    Store,
    StoreUnavailable,
)
from attrgate.store.redis import RedisStore
from attrgate.store.sqlite import SqliteStore
from support.moto_cognito import free_port
from support.redis_server import RedisClusterServers, RedisServer

T0 = 1_000_000_000  # ms since the epoch: January 1970, nowhere near Redis's own clock
MINUTE = 60_000


def sliding(key: str, limit: int, amount: int = 1, window_ms: int = MINUTE) -> Counter:
    return Counter(key=key, limit=limit, amount=amount, window_ms=window_ms)


def fixed(key: str, limit: int, period_end_ms: int, amount: int = 1) -> Counter:
    return Counter(key=key, limit=limit, amount=amount, period_end_ms=period_end_ms)


def open_store(kind: str, target: str, **options: Any) -> Store:
    if kind == "sqlite":
        return SqliteStore(target, **options)
    return RedisStore(target, cluster=kind == "redis-cluster", **options)


@dataclass
class Backend:
    kind: str
    target: str  # the SQLite file, or the Redis URL (of any node of a cluster)

    def new(self, **options: Any) -> Store:
        """Another store object (its own connection) on the same state."""
        return open_store(self.kind, self.target, **options)

    def run(self, body: Callable[[Store], Awaitable[None]]) -> None:
        async def main() -> None:
            store = self.new()
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> Backend:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return Backend("redis", redis_server.url)


@pytest.fixture
def cluster_backend(redis_cluster: RedisClusterServers) -> Backend:
    for node in redis_cluster.nodes:
        with redis.Redis.from_url(node.url) as client:
            client.flushall()
    # Not the node that holds the store's slot: the client must find it.
    return Backend("redis-cluster", redis_cluster.nodes[-1].url.removesuffix("/0"))


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state.db"))
    found: Backend = request.getfixturevalue(
        "redis_backend" if request.param == "redis" else "cluster_backend"
    )
    return found


async def close_all(stores: list[Store]) -> None:
    await asyncio.gather(*(s.close() for s in stores))


# --- reserving: all or none, limits, windows ------------------------------------------------


def test_one_full_counter_refuses_the_whole_reservation(backend: Backend) -> None:
    async def body(store: Store) -> None:
        full, room, full2 = sliding("full", 1), sliding("room", 5), sliding("full2", 1)
        assert (await store.reserve("r1", [full, full2], T0)).ok

        result = await store.reserve("r2", [room, full], T0 + 1)
        assert not result.ok
        assert [(r.index, r.used) for r in result.refused] == [(1, 1)]
        assert await store.usage([room, full, full2], T0 + 1) == [0, 1, 1]

        # every refusing counter is named, and still nothing is added anywhere
        result = await store.reserve("r3", [full, room, full2], T0 + 2)
        assert [r.index for r in result.refused] == [0, 2]
        assert await store.usage([room, full, full2], T0 + 2) == [0, 1, 1]

    backend.run(body)


def test_limit_exactly_reached_then_refused(backend: Backend) -> None:
    async def body(store: Store) -> None:
        c = sliding("phone", 3)
        for i in range(3):
            assert (await store.reserve(f"r{i}", [c], T0 + i)).ok, i
        result = await store.reserve("r3", [c], T0 + 3)
        assert not result.ok
        assert result.refused[0].used == 3
        assert await store.usage([c], T0 + 3) == [3]

    backend.run(body)


def test_an_event_exactly_window_old_no_longer_counts(backend: Backend) -> None:
    async def body(store: Store) -> None:
        c = sliding("phone", 1, window_ms=MINUTE)
        assert (await store.reserve("r1", [c], T0)).ok
        # one millisecond younger than the window: still counts
        assert await store.usage([c], T0 + MINUTE - 1) == [1]
        result = await store.reserve("r2", [c], T0 + MINUTE - 1)
        assert not result.ok
        assert result.refused[0].retry_at_ms == T0 + MINUTE
        # exactly the window old: gone, for usage and for reserve
        assert await store.usage([c], T0 + MINUTE) == [0]
        assert (await store.reserve("r2", [c], T0 + MINUTE)).ok
        assert await store.usage([c], T0 + MINUTE) == [1]

    backend.run(body)


def test_retry_at_for_a_count_limit_is_when_the_oldest_event_ages_out(backend: Backend) -> None:
    async def body(store: Store) -> None:
        c = sliding("caller", 2, window_ms=10_000)
        assert (await store.reserve("a", [c], T0)).ok
        assert (await store.reserve("b", [c], T0 + 3_000)).ok
        for now in (T0 + 5_000, T0 + 9_999):
            result = await store.reserve("c", [c], now)
            assert result.refused[0].retry_at_ms == T0 + 10_000, now
        assert (await store.reserve("c", [c], T0 + 10_000)).ok
        result = await store.reserve("d", [c], T0 + 10_000)
        assert result.refused[0].retry_at_ms == T0 + 13_000

    backend.run(body)


def test_retry_at_for_a_budget_with_mixed_amounts(backend: Backend) -> None:
    def budget(amount: int) -> Counter:
        return sliding("budget", 100, amount=amount, window_ms=10_000)

    async def body(store: Store) -> None:
        for rid, amount, at in (("a", 30, T0), ("b", 50, T0 + 10), ("c", 20, T0 + 20)):
            assert (await store.reserve(rid, [budget(amount)], at)).ok

        # 20 more needs only the first (30) to age out; 60 more needs the first two
        small = await store.reserve("d", [budget(20)], T0 + 30)
        assert (small.refused[0].used, small.refused[0].retry_at_ms) == (100, T0 + 10_000)
        big = await store.reserve("d", [budget(60)], T0 + 30)
        assert big.refused[0].retry_at_ms == T0 + 10_010
        # more than the whole budget never fits: it is told when the window empties
        huge = await store.reserve("d", [budget(101)], T0 + 30)
        assert huge.refused[0].retry_at_ms == T0 + 10_020

        # the promise holds: refused a millisecond before, admitted at retry_at
        assert not (await store.reserve("d", [budget(60)], T0 + 10_009)).ok
        assert (await store.reserve("d", [budget(60)], T0 + 10_010)).ok
        assert await store.usage([budget(0)], T0 + 10_010) == [80]

    backend.run(body)


def test_retry_at_walks_a_long_window(backend: Backend) -> None:
    def c(amount: int = 1) -> Counter:
        return sliding("long", 260, amount=amount, window_ms=MINUTE)

    async def body(store: Store) -> None:
        for i in range(260):  # more events than the script reads in one batch
            assert (await store.reserve(f"r{i}", [c()], T0 + i)).ok, i
        # 150 more need the 150 oldest (the last at T0 + 149) to age out
        result = await store.reserve("more", [c(150)], T0 + 300)
        assert result.refused[0].retry_at_ms == T0 + 149 + MINUTE

    backend.run(body)


def test_a_fixed_period_frees_at_its_end(backend: Backend) -> None:
    async def body(store: Store) -> None:
        end = T0 + 5_000
        c = fixed("month-2024-05", 2, period_end_ms=end)
        assert (await store.reserve("a", [c], T0)).ok
        assert (await store.reserve("b", [c], T0 + 1)).ok
        result = await store.reserve("c", [c], end - 1)
        assert (result.refused[0].used, result.refused[0].retry_at_ms) == (2, end)
        assert await store.usage([c], end - 1) == [2]

        assert await store.usage([c], end) == [0]
        assert (await store.reserve("c", [c], end)).ok  # its events are dropped at the end

    backend.run(body)


def _fill(backend: Backend, key: str, events: int, amount: int, first_ms: int) -> None:
    """`events` events of `amount` in `key`, one per millisecond from `first_ms`, written
    straight into the store's layout (reserving them one by one would take minutes)."""
    rows = [(key, f"seed{i}", first_ms + i, amount) for i in range(events)]
    if backend.kind == "sqlite":
        asyncio.run(_touch(backend))  # the store creates its schema
        with sqlite3.connect(backend.target) as db:
            db.executemany(
                "INSERT INTO events (key, reservation, ts, amount, expires) "
                "VALUES (?, ?, ?, ?, 9223372036854775807)",
                rows,
            )
        return
    with redis.Redis.from_url(backend.target) as client:
        client.zadd(f"{{attrgate}}:ev:{key}", {f"{r}|{a}": ts for _, r, ts, a in rows})
        client.set(f"{{attrgate}}:sum:{key}", events * amount)


async def _touch(backend: Backend) -> None:
    store = backend.new()
    try:
        await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.parametrize(
    "counter",
    [
        fixed("budget-month", 100_000 * 8_830, period_end_ms=T0 + 10 * MINUTE, amount=8_830),
        # a price above the whole budget never fits (a country priced at the default)
        sliding("budget-30d", 100_000 * 8_830 + 1, amount=100_000 * 8_830 + 2, window_ms=MINUTE),
    ],
    ids=["spent-month", "never-fits"],
)
def test_refusals_stay_cheap_when_a_key_holds_a_month_of_messages(
    kind: str, counter: Counter, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Once a budget is spent every SMS write is refused against it. A refusal used to read all
    of the key's events (100,000 for a busy month) to say when it frees: the store ran out of
    time for everyone, releases included."""
    backend = (
        Backend("sqlite", str(tmp_path / "state.db"))
        if kind == "sqlite"
        else request.getfixturevalue("redis_backend")
    )
    _fill(backend, counter.key, 100_000, 8_830, T0 - MINUTE // 2)

    async def body(store: Store) -> None:
        results = await asyncio.gather(
            *(store.reserve(f"r{i}", [counter], T0) for i in range(64)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} of 64 refusals failed: {failed[0]}"
        assert all(isinstance(r, ReserveResult) and not r.ok for r in results)
        first = results[0]
        assert isinstance(first, ReserveResult)
        if counter.window_ms is None:
            assert first.refused[0].retry_at_ms == counter.period_end_ms
            # CheckUpdateUserAttributes reads the kept sum, not a month of events
            assert await store.usage([counter], T0) == [100_000 * 8_830]
        else:  # the newest event ages out last
            assert first.refused[0].retry_at_ms == T0 - MINUTE // 2 + 99_999 + MINUTE

    backend.run(body)


# --- releasing and reading usage ------------------------------------------------------------


def test_release_frees_room_and_is_idempotent(backend: Backend) -> None:
    async def body(store: Store) -> None:
        count, money = sliding("count", 1), sliding("money", 10, amount=7)
        assert (await store.reserve("r1", [count, money], T0)).ok
        assert not (await store.reserve("r2", [count, money], T0 + 1)).ok

        assert await store.release("r1", [count, money]) == [True, True]
        assert await store.usage([count, money], T0 + 1) == [0, 0]
        # again: nothing to free, nothing breaks, and nothing reported as given back
        assert await store.release("r1", [count, money]) == [False, False]
        assert await store.release("never-reserved", [count, money]) == [False, False]
        assert (await store.reserve("r2", [count, money], T0 + 2)).ok

        # releasing r1 once more must not free what r2 holds
        assert await store.release("r1", [count, money]) == [False, False]
        assert await store.usage([count, money], T0 + 2) == [1, 7]
        assert not (await store.reserve("r3", [count, money], T0 + 3)).ok

    backend.run(body)


def test_usage_reports_sums_and_changes_nothing(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert (await store.reserve("a", [sliding("k", 100, amount=3)], T0)).ok
        assert (await store.reserve("b", [sliding("k", 100, amount=4)], T0 + 10)).ok
        k, empty = sliding("k", 100), sliding("empty", 100)
        assert await store.usage([k, empty], T0 + 10) == [7, 0]
        assert await store.usage([k], T0 + MINUTE) == [4]  # a reads as expired here...
        assert await store.usage([k], T0 + 10) == [7]  # ...but reading removed nothing
        assert await store.usage([], T0) == []

    backend.run(body)


def test_a_reservation_charges_a_counter_once(backend: Backend) -> None:
    async def body(store: Store) -> None:
        c = sliding("k", 5, amount=2)
        assert (await store.reserve("r1", [c], T0)).ok
        assert (await store.reserve("r1", [c], T0 + 1)).ok  # a retried reserve
        assert await store.usage([c], T0 + 1) == [2]
        with pytest.raises(ValueError, match="at most once"):
            await store.reserve("r2", [c, sliding("k", 9)], T0)

    backend.run(body)


# --- money: exact integers ------------------------------------------------------------------


def test_a_budget_in_micro_units_admits_exactly_up_to_its_limit(backend: Backend) -> None:
    us, gb = 8_830, 41_500  # USD 0.00883 and 0.0415 per message, in micro-dollars

    def budget(amount: int) -> Counter:
        return sliding("usd", 500_000, amount=amount, window_ms=30 * 86_400_000)

    async def body(store: Store) -> None:
        spent, i = 0, 0
        while True:
            amount = (us, gb)[i % 2]
            result = await store.reserve(f"m{i}", [budget(amount)], T0 + i)
            if not result.ok:
                break
            spent, i = spent + amount, i + 1
        assert spent <= 500_000 < spent + amount
        assert result.refused[0].used == spent
        # exactly the room left is admitted; then not one micro-dollar more
        assert (await store.reserve("fill", [budget(500_000 - spent)], T0 + i)).ok
        assert not (await store.reserve("over", [budget(1)], T0 + i)).ok
        assert await store.usage([budget(0)], T0 + i) == [500_000]

    backend.run(body)


def test_money_beyond_float_precision_is_exact(backend: Backend) -> None:
    # 2**61 + 1 is not a double: any float (or Lua number) arithmetic on amounts gets these wrong
    limit = 2**62 + 1

    async def body(store: Store) -> None:
        assert (await store.reserve("a", [sliding("big", limit, amount=2**61 + 1)], T0)).ok
        assert (await store.reserve("b", [sliding("big", limit, amount=2**61)], T0)).ok
        result = await store.reserve("c", [sliding("big", limit, amount=1)], T0)
        assert not result.ok
        assert result.refused[0].used == limit
        assert await store.usage([sliding("big", limit)], T0) == [limit]
        await store.release("a", [sliding("big", limit, amount=2**61 + 1)])
        assert await store.usage([sliding("big", limit)], T0) == [2**61]
        with pytest.raises(ValueError, match="64-bit"):
            await store.reserve("d", [sliding("big", 2**63, amount=1)], T0)

    backend.run(body)


# --- secrets, persistence -------------------------------------------------------------------


def test_secret_get_or_create_is_stable(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.secret("hmac") is None
        assert await store.get_or_create_secret("hmac", b"first\x00\xff") == b"first\x00\xff"
        assert await store.get_or_create_secret("hmac", b"second") == b"first\x00\xff"
        assert await store.get_or_create_secret("other", b"second") == b"second"
        assert await store.secret("hmac") == b"first\x00\xff"
        await store.delete_secret("other")
        assert await store.secret("other") is None
        await store.delete_secret("never-stored")
        others = [backend.new() for _ in range(6)]
        try:
            assert await others[0].get_or_create_secret("hmac", b"third") == b"first\x00\xff"
            # racing first creations agree on one value
            got = await asyncio.gather(
                *(s.get_or_create_secret("race", bytes([i])) for i, s in enumerate(others))
            )
            assert len(set(got)) == 1
            assert got[0] in {bytes([i]) for i in range(6)}
        finally:
            await close_all(others)

    backend.run(body)


def test_a_new_store_object_sees_the_counts(backend: Backend) -> None:
    async def first(store: Store) -> None:
        assert (await store.reserve("r1", [sliding("k", 1)], T0)).ok

    async def second(store: Store) -> None:
        assert await store.usage([sliding("k", 1)], T0) == [1]
        assert not (await store.reserve("r2", [sliding("k", 1)], T0)).ok

    backend.run(first)
    backend.run(second)  # a fresh connection (for SQLite: the file reopened, as after a restart)


# --- concurrency: exact, not approximately right --------------------------------------------


def test_concurrent_reservations_admit_exactly_the_limit(backend: Backend) -> None:
    counters = [sliding("phone", 50), sliding("usd", 10**9, amount=8_830)]

    async def body(store: Store) -> None:
        # Generous time bounds: this checks exactness under contention, not latency, and the
        # suite runs on two busy cores.
        stores = [backend.new(timeout=30.0) for _ in range(4)]
        try:
            results = await asyncio.gather(
                *(stores[i % 4].reserve(f"r{i}", counters, T0) for i in range(200))
            )
            assert sum(r.ok for r in results) == 50
            assert await store.usage(counters, T0) == [50, 50 * 8_830]
        finally:
            await close_all(stores)

    backend.run(body)


def reserve_in_process(
    kind: str, target: str, worker: int, barrier: Any, results: Any, per_worker: int
) -> None:
    """A spawned process: connect, wait for the others, then fire its reservations at once."""

    async def main() -> tuple[int, int]:
        # generous bounds: this checks exactness under contention, not latency
        store = open_store(kind, target, timeout=30.0)
        try:
            await store.ping()
            await asyncio.to_thread(barrier.wait, 60)
            outcomes = await asyncio.gather(
                *(
                    store.reserve(f"p{worker}-{i}", [sliding("phone", 50)], T0)
                    for i in range(per_worker)
                ),
                return_exceptions=True,
            )
        finally:
            await store.close()
        ok = sum(isinstance(o, ReserveResult) and o.ok for o in outcomes)
        failed = sum(isinstance(o, BaseException) for o in outcomes)
        return ok, failed

    results.put(asyncio.run(main()))


def test_processes_sharing_the_store_admit_exactly_the_limit(backend: Backend) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    processes = [
        ctx.Process(
            target=reserve_in_process,
            args=(backend.kind, backend.target, w, barrier, results, 50),
        )
        for w in range(4)
    ]
    for p in processes:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert sum(failed for _, failed in outcomes) == 0
    assert sum(ok for ok, _ in outcomes) == 50

    async def body(store: Store) -> None:
        assert await store.usage([sliding("phone", 50)], T0) == [50]

    backend.run(body)


# --- Redis specifics ------------------------------------------------------------------------


async def unavailable_within_its_timeout(store: RedisStore, bound: float) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.reserve("r", [sliding("k", 1)], T0),
        lambda: store.release("r", [sliding("k", 1)]),
        lambda: store.usage([sliding("k", 1)], T0),
        lambda: store.get_or_create_secret("fingerprint", b"x"),
        store.ping,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        # the store's own bound, with room for a busy machine
        assert time.monotonic() - started < 3 * bound + 1


def test_redis_refusing_connections_is_unavailable_at_once() -> None:
    async def main() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
        try:
            await unavailable_within_its_timeout(store, 1.0)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [0.3, 1.5])
def test_redis_that_never_answers_is_unavailable_after_the_store_timeout(timeout: float) -> None:
    async def main(port: int) -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=timeout)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await store.reserve("r", [sliding("k", 1)], T0)
            assert caught.value.reason == TIMEOUT
            # --store-timeout is the bound: not a fixed 0.25 s, and not more than asked
            assert timeout <= time.monotonic() - started < 3 * timeout + 1
            if timeout < 1:
                await unavailable_within_its_timeout(store, timeout)
        finally:
            await store.close()

    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        asyncio.run(main(silent.getsockname()[1]))


async def _problems(url: str, cluster: bool = False) -> list[str]:
    store = RedisStore(url, cluster=cluster)
    try:
        return await store.durability_problems()
    finally:
        await store.close()


def test_redis_without_appendonly_is_a_durability_problem(redis_server: RedisServer) -> None:
    # the test server runs with --save '' --appendonly no
    assert ["appendonly" in p for p in asyncio.run(_problems(redis_server.url))] == [True]
    with redis.Redis.from_url(redis_server.url) as client:
        try:
            # RDB snapshots alone lose every write since the last one: still a problem
            client.config_set("save", "900 1")
            assert ["appendonly" in p for p in asyncio.run(_problems(redis_server.url))] == [True]
            client.config_set("appendonly", "yes")
            assert asyncio.run(_problems(redis_server.url)) == []
            client.config_set("maxmemory-policy", "volatile-lru")
            (evicting,) = asyncio.run(_problems(redis_server.url))
            assert "may evict keys (maxmemory-policy volatile-lru)" in evicting
        finally:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("appendonly", "no")
            client.config_set("save", "")
    # Managed Redis disables CONFIG but answers INFO: the check does not need CONFIG.
    no_config = RedisServer("--rename-command", "CONFIG", "", "--appendonly", "yes")
    try:
        assert asyncio.run(_problems(no_config.url)) == []
    finally:
        no_config.stop()
    no_info = RedisServer("--rename-command", "INFO", "")
    try:
        (unknown,) = asyncio.run(_problems(no_info.url))
        assert "refuses INFO" in unknown
    finally:
        no_info.stop()


def test_redis_cluster_durability_is_checked_on_every_primary(
    redis_cluster: RedisClusterServers,
) -> None:
    first, *others = redis_cluster.nodes
    for node in others:
        with redis.Redis.from_url(node.url) as client:
            client.config_set("appendonly", "yes")
    try:
        (problem,) = asyncio.run(_problems(redis_cluster.url, cluster=True))
        assert f"127.0.0.1:{first.port}" in problem
        assert "appendonly" in problem
    finally:
        for node in others:
            with redis.Redis.from_url(node.url) as client:
                client.config_set("appendonly", "no")


def test_redis_tells_whether_it_is_a_cluster(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    async def enabled(url: str) -> bool:
        store = RedisStore(url)
        try:
            return await store.cluster_enabled()
        finally:
            await store.close()

    assert asyncio.run(enabled(redis_server.url)) is False
    assert asyncio.run(enabled(redis_cluster.url)) is True


def test_redis_keys_of_one_reservation_share_one_cluster_slot(cluster_backend: Backend) -> None:
    """Each counter hashed apart would land on different nodes: CROSSSLOT."""
    client = redis.RedisCluster.from_url(cluster_backend.target)

    async def body(store: Store) -> None:
        counters = [sliding(f"phone-{i}", 5) for i in range(20)] + [sliding("global", 99)]
        assert (await store.reserve("r", counters, T0)).ok
        assert await store.release("r", counters[:3]) == [True] * 3
        assert await store.usage(counters, T0) == [0, 0, 0] + [1] * 18

    try:
        cluster_backend.run(body)
        slots = {client.keyslot(k) for k in client.scan_iter(match="{attrgate}:*")}
        assert len(slots) == 1
        assert {client.keyslot(k) for k in ("{attrgate}:scratch", "{attrgate}:ev:x")} == slots
    finally:
        client.close()


def test_redis_keys_expire_with_their_window(redis_backend: Backend) -> None:
    client = redis.Redis.from_url(redis_backend.target)

    async def body(store: Store) -> None:
        assert (await store.reserve("r", [sliding("s", 5, window_ms=MINUTE)], T0)).ok
        assert (await store.reserve("r", [fixed("f", 5, period_end_ms=T0 + 30_000)], T0)).ok
        for key, ttl in (("s", MINUTE), ("f", 30_000)):
            for name in (f"{{attrgate}}:ev:{key}", f"{{attrgate}}:sum:{key}"):
                assert ttl - 5_000 < client.pttl(name) <= ttl, name
        await store.release("r", [sliding("s", 5, window_ms=MINUTE)])
        assert client.exists("{attrgate}:ev:s", "{attrgate}:sum:s") == 0
        assert client.keys("{attrgate}:scratch") == []

    try:
        redis_backend.run(body)
    finally:
        client.close()


def test_redis_rebuilds_a_lost_sum_from_the_events(redis_backend: Backend) -> None:
    client = redis.Redis.from_url(redis_backend.target)

    async def body(store: Store) -> None:
        c = sliding("k", 3)
        assert (await store.reserve("a", [c], T0)).ok
        assert (await store.reserve("b", [c], T0)).ok
        client.delete("{attrgate}:sum:k")  # e.g. evicted under memory pressure
        assert (await store.reserve("c", [c], T0)).ok
        assert not (await store.reserve("d", [c], T0)).ok
        assert client.get("{attrgate}:sum:k") == b"3"
        assert client.pttl("{attrgate}:sum:k") > 0  # the rebuilt sum expires with its events

        # A release after the sum is lost must not drive it negative and so over-admit.
        client.delete("{attrgate}:sum:k")
        await store.release("a", [c])
        assert client.get("{attrgate}:sum:k") == b"2"
        assert (await store.reserve("e", [c], T0)).ok
        assert not (await store.reserve("f", [c], T0)).ok
        assert await store.usage([c], T0) == [3]
        client.delete("{attrgate}:sum:k")  # usage without a kept sum reads the events
        assert await store.usage([c], T0) == [3]

    try:
        redis_backend.run(body)
    finally:
        client.close()


# --- SQLite specifics -----------------------------------------------------------------------


def test_sqlite_prunes_expired_events_and_keeps_its_file_private(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        store = SqliteStore(path)
        try:
            for i in range(3):
                assert (await store.reserve(f"r{i}", [sliding("k", 9)], T0 + i)).ok
            assert (await store.reserve("r3", [sliding("k", 9)], T0 + MINUTE + 1)).ok
            assert (await store.reserve("f", [fixed("m", 9, T0 + 10)], T0)).ok
            assert (await store.reserve("g", [fixed("m", 9, T0 + 10)], T0 + 10)).ok
        finally:
            await store.close()

    asyncio.run(main())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the HMAC key
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key, reservation FROM events ORDER BY key, ts").fetchall()
    conn.close()
    # "g" was charged at the very end of its period: expired at once, swept with the rest.
    assert rows == [("k", "r2"), ("k", "r3")]


def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        store = SqliteStore(path, timeout=0.2)
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            await store.ping()
            holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.reserve("r", [sliding("k", 1)], T0)
            assert time.monotonic() - started < 2.0
            holder.execute("ROLLBACK")
            assert (await store.reserve("r", [sliding("k", 1)], T0)).ok
        finally:
            holder.close()
            await store.close()

    asyncio.run(main())


def test_sqlite_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp_path / "missing-dir" / "state.db"))
        try:
            with pytest.raises(StoreUnavailable):
                await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.reserve("r", [sliding("k", 1)], T0)
        finally:
            await store.close()

    asyncio.run(main())


def test_sqlite_sweeps_expired_entries_of_keys_never_touched_again(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def main() -> None:
        store = SqliteStore(path)
        try:
            for i in range(5):
                assert (await store.reserve(f"r{i}", [sliding(f"number-{i}", 3)], T0)).ok
            # Later, only another key is charged: the stale ones go without being touched.
            assert (await store.reserve("later", [sliding("other", 10)], T0 + MINUTE)).ok
        finally:
            await store.close()

    asyncio.run(main())
    with sqlite3.connect(path) as conn:
        keys = {row[0] for row in conn.execute("SELECT key FROM events")}
    conn.close()
    assert keys == {"other"}


def test_usage_by_prefix_lists_live_keys_only(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert (await store.reserve("a", [sliding("g:x", 9), sliding("g:y", 9, amount=4)], T0)).ok
        assert (await store.reserve("b", [sliding("g:x", 9), sliding("h:z", 9)], T0 + 10)).ok
        assert await store.usage_by_prefix("g:", MINUTE, T0 + 20) == {"g:x": 2, "g:y": 4}
        # One window after the first reservation only the second one's events are live.
        assert await store.usage_by_prefix("g:", MINUTE, T0 + MINUTE) == {"g:x": 1}
        assert await store.usage_by_prefix("none:", MINUTE, T0) == {}

    backend.run(body)
