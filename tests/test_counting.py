"""Counting through a store (guards/counting.py) and watching it (store/watch.py): failures are
counted and logged at most once a minute per reason; a release runs to its end although its
caller is cancelled (a release dropped keeps a count Cognito never used); a store known dead
(the breaker open) costs a reservation nothing, and an answer closes the breaker again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis

from attrgate.guards.counting import SmsCounting
from attrgate.guards.keys import KeyCheck
from attrgate.guards.sms import Charge, Hasher
from attrgate.store.base import (
    CIRCUIT_OPEN,
    FILE_GONE,
    KEY_MISMATCH,
    LOCKED,
    SQLITE_ERROR,
    TIMEOUT,
    Counter,
    Store,
    StoreUnavailable,
)
from attrgate.store.breaker import CLOSED, OPEN, Breaker
from attrgate.store.groupcommit import GroupCommitWriter
from attrgate.store.redis import RedisStore
from attrgate.store.sqlite import SqliteStore
from attrgate.store.watch import LOG_EVERY, StoreWatch
from support.redis_server import RedisServer

T0 = 1_000_000_000


def test_failures_are_counted_each_and_logged_once_a_minute_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    counted: list[str] = []
    changes: list[bool] = []
    watch = StoreWatch(counted.append, changes.append, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="attrgate")

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    for _ in range(5):
        watch.failed(StoreUnavailable("no answer", TIMEOUT), "reserve")
    watch.failed(StoreUnavailable("deleted", FILE_GONE), "probe")
    assert counted == [TIMEOUT] * 5 + [FILE_GONE]
    assert len(errors()) == 2  # one per reason
    assert changes == [False]
    now[0] += LOG_EVERY
    watch.failed(StoreUnavailable("no answer", TIMEOUT), "reserve")
    assert len(errors()) == 3
    assert "(4 more failures of this kind since the last line)" in errors()[-1]
    assert "SMS_STORE_UNAVAILABLE" in errors()[-1]
    watch.answered()
    watch.answered()
    assert changes == [False, True]
    assert watch.up


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "sqlite":
        return lambda: SqliteStore(str(tmp_path / "state.sqlite"))
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return lambda: RedisStore(server.url)


def test_a_release_whose_caller_is_cancelled_still_runs(store_factory: object) -> None:
    counter = Counter("phone", limit=5, amount=1, window_ms=60_000)
    charge = Charge("sms", "limits[0]", "at most 5", counter)

    async def main() -> None:
        assert callable(store_factory)
        setup: Store = store_factory()
        try:
            assert (await setup.reserve("r", [counter], T0)).ok
        finally:
            await setup.close()
        # a fresh store: the release must first connect, so the cancellation lands before it
        # reached the store
        store: Store = store_factory()
        counting = SmsCounting(store, Hasher(b"k" * 16), clock_ms=lambda: T0)
        try:
            release = asyncio.ensure_future(counting.release("r", [charge]))
            await asyncio.sleep(0)
            release.cancel()
            with pytest.raises(asyncio.CancelledError):
                await release
            for _ in range(100):  # the release finishes on its own
                if await store.usage([counter], T0) == [0]:
                    break
                await asyncio.sleep(0.05)
            assert await store.usage([counter], T0) == [0]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_release_refused_by_a_locked_store_is_asked_again_until_it_lands(
    tmp_path: Path,
) -> None:
    """Another process holds the SQLite lock past the store timeout: the release fails once,
    then lands when the lock is gone (it used to be given up: a count Cognito never used)."""
    state = tmp_path / "state.sqlite"
    counter = Counter("phone", limit=5, amount=1, window_ms=60_000)
    charge = Charge("sms", "limits[0]", "at most 5", counter)

    async def main() -> None:
        store = SqliteStore(str(state), timeout=0.4)
        failures: list[str] = []
        counting = SmsCounting(
            store, Hasher(b"k" * 16), clock_ms=lambda: T0, watch=StoreWatch(failures.append)
        )
        try:
            assert not await counting.reserve("r", [charge])
            holder = sqlite3.connect(state, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # e.g. `attrgate sms usage` or a stuck replica
            loop = asyncio.get_running_loop()
            loop.call_later(0.8, holder.execute, "COMMIT")
            released = await counting.release("r", [charge])
            holder.close()
            assert released == [charge]
            assert failures[:1] == [LOCKED]  # the first attempt did fail
            assert await store.usage([counter], T0) == [0]
        finally:
            await store.close()

    asyncio.run(main())


def test_one_failing_operation_does_not_fail_the_others_of_its_batch(tmp_path: Path) -> None:
    """Group commit runs many callers' operations in one transaction: one that fails by itself
    fails alone, and leaves nothing behind; the others are stored."""
    path = tmp_path / "batch.sqlite"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        return conn

    def insert(value: str) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (value,)) and None

    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half')")
        raise ValueError("an operation failing on its own")

    async def main() -> None:
        writer = GroupCommitWriter(
            "test", connect, lambda conn: None, lambda exc: StoreUnavailable(str(exc), SQLITE_ERROR)
        )
        try:
            results = await asyncio.gather(
                *(
                    writer.call(op, timeout=10)
                    for op in (insert("a"), insert_then_fail, insert("b"))
                ),
                return_exceptions=True,
            )
        finally:
            await writer.close()
        assert results[0] is None
        assert results[2] is None
        assert isinstance(results[1], StoreUnavailable)

    asyncio.run(main())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert sorted(v for (v,) in db.execute("SELECT v FROM t")) == ["a", "b"]


# --- the circuit breaker, with real stores ------------------------------------------------------

STORE_TIMEOUT = 0.5
# Far longer than any test: only an answer of the store (the probe's, a release's) closes it.
LONG_COOLDOWN = 60.0
CHARGE = Charge("sms", "limits[0]", "at most 1000", Counter("phone", 1000, 1, window_ms=60_000))


class Watched:
    """SmsCounting over a real store, with what its watch was told."""

    def __init__(self, store: Store, breaker: Breaker, key_check: KeyCheck | None = None) -> None:
        self.failures: list[str] = []
        self.changes: list[bool] = []
        watch = StoreWatch(self.failures.append, self.changes.append)
        self.counting = SmsCounting(
            store,
            Hasher(b"k" * 16),
            clock_ms=lambda: T0,
            watch=watch,
            key_check=key_check,
            breaker=breaker,
        )


async def timed_failure(call: Awaitable[object]) -> tuple[str, float]:
    """The reason `call` failed with, and how long it took to fail."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await call
    return caught.value.reason, time.monotonic() - started


async def refused_at_once(counting: SmsCounting, count: int) -> list[float]:
    """`count` reservations (and as many dry runs) refused by the open breaker, each well under
    the store timeout (half of it: a margin a loaded machine keeps); how long each took."""
    took = []
    for i in range(count):
        for call in (
            lambda i=i: counting.reserve(f"fast-{i}", [CHARGE]),
            lambda: counting.dry_run([CHARGE]),
        ):
            reason, seconds = await timed_failure(call())
            assert reason == CIRCUIT_OPEN
            assert seconds < STORE_TIMEOUT / 2
            took.append(seconds)
    return took


def test_a_locked_sqlite_store_is_not_waited_for_once_the_breaker_opens(tmp_path: Path) -> None:
    """Another process holds the state's lock: three reservations wait for it and fail
    `locked`; the next ones fail at once, without asking the store, counted as circuit_open;
    the store's health went down once and stays down (no flapping). The lock gone, the probe's
    answer closes the breaker (no traffic, no cooldown needed)."""
    state = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(state), timeout=STORE_TIMEOUT)
        watched = Watched(store, Breaker(3, LONG_COOLDOWN))
        counting = watched.counting
        try:
            assert not await counting.reserve("before", [CHARGE])
            holder = sqlite3.connect(state, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                for i in range(3):
                    reason, _ = await timed_failure(counting.reserve(f"slow-{i}", [CHARGE]))
                    assert reason == LOCKED
                assert counting.breaker.state == OPEN
                await refused_at_once(counting, 10)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert watched.failures == [LOCKED] * 3 + [CIRCUIT_OPEN] * 20
            assert watched.changes == [False]
            await counting.probe()
            assert counting.breaker.state == CLOSED
            assert watched.changes == [False, True]
            assert not await counting.reserve("after", [CHARGE])
            assert await store.usage([CHARGE.counter], T0) == [2]  # before, after: no others
        finally:
            await store.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_hung_redis_costs_reservations_nothing_once_the_breaker_opens(
    own_redis: RedisServer,
) -> None:
    """Redis SIGSTOPped: it accepts connections and never answers. Three reservations wait out
    the store timeout; then every reservation fails at once, many at a time too. A release is
    still attempted (it must be: a reservation not given back stays counted), and its answer,
    once Redis runs again, closes the breaker; so does the probe's."""

    async def main() -> None:
        store = RedisStore(own_redis.url, timeout=STORE_TIMEOUT)
        watched = Watched(store, Breaker(3, LONG_COOLDOWN))
        counting = watched.counting
        try:
            # its own counter: the reservations that timed out land when Redis runs again
            given_back = Charge("sms", "limits[0]", "", Counter("other", 1000, 1, window_ms=60_000))
            assert not await counting.reserve("given-back", [given_back])
            own_redis.pause()
            try:
                for i in range(3):
                    reason, seconds = await timed_failure(counting.reserve(f"slow-{i}", [CHARGE]))
                    assert reason == TIMEOUT
                    assert seconds >= STORE_TIMEOUT * 0.9  # waited: what the breaker spares
                await refused_at_once(counting, 10)
                at_once = await asyncio.wait_for(
                    asyncio.gather(
                        *(counting.reserve(f"burst-{i}", [CHARGE]) for i in range(50)),
                        return_exceptions=True,
                    ),
                    STORE_TIMEOUT / 2,
                )
                assert {getattr(x, "reason", x) for x in at_once} == {CIRCUIT_OPEN}
                assert watched.changes == [False]
                # Not held back by the open breaker: the release asks the hung store...
                asked = len(watched.failures)
                release = asyncio.ensure_future(counting.release("given-back", [given_back]))
                await until(lambda: len(watched.failures) > asked, 5)
                assert watched.failures[asked] == TIMEOUT
            finally:
                own_redis.resume()
            # ...and asks again: it lands, and the store's answer closes the breaker.
            assert await asyncio.wait_for(release, 10) == [given_back]
            assert counting.breaker.state == CLOSED
            assert watched.changes == [False, True]
            assert await store.usage([given_back.counter], T0) == [0]

            own_redis.pause()
            try:
                for i in range(3):
                    await timed_failure(counting.reserve(f"slow-again-{i}", [CHARGE]))
                await refused_at_once(counting, 1)
            finally:
                own_redis.resume()
            await counting.probe()  # no traffic needed: the probe's answer closes it
            assert counting.breaker.state == CLOSED
            assert not await counting.reserve("after", [given_back])
            assert await store.usage([given_back.counter], T0) == [1]
        finally:
            await store.close()

    asyncio.run(main())


def test_half_open_one_reservation_tries_the_hung_store_the_others_fail_at_once(
    own_redis: RedisServer,
) -> None:
    async def main() -> None:
        store = RedisStore(own_redis.url, timeout=STORE_TIMEOUT)
        cooldown = 0.3
        breaker = Breaker(2, cooldown, trial_timeout=2 * STORE_TIMEOUT)
        counting = Watched(store, breaker).counting
        try:
            assert not await counting.reserve("before", [CHARGE])
            own_redis.pause()
            try:
                for i in range(2):
                    await timed_failure(counting.reserve(f"slow-{i}", [CHARGE]))
                await asyncio.sleep(cooldown)
                outcomes = await asyncio.gather(
                    *(timed_failure(counting.reserve(f"r-{i}", [CHARGE])) for i in range(10))
                )
            finally:
                own_redis.resume()
            reasons = sorted(reason for reason, _ in outcomes)
            assert reasons == [CIRCUIT_OPEN] * 9 + [TIMEOUT]
            assert all(s < STORE_TIMEOUT / 2 for reason, s in outcomes if reason == CIRCUIT_OPEN)
            assert breaker.state == OPEN  # the trial failed: open again
        finally:
            await store.close()

    asyncio.run(main())


def test_definite_answers_do_not_open_the_breaker(tmp_path: Path) -> None:
    """A deleted state file answers at once, for good: each refusal keeps its own reason
    (file_gone), never becomes circuit_open."""
    state = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(state), timeout=STORE_TIMEOUT)
        watched = Watched(store, Breaker(1, LONG_COOLDOWN))
        try:
            assert not await watched.counting.reserve("before", [CHARGE])
            state.unlink()
            for i in range(5):
                reason, _ = await timed_failure(watched.counting.reserve(f"r-{i}", [CHARGE]))
                assert reason == FILE_GONE
            assert watched.counting.breaker.state == CLOSED
        finally:
            await store.close()

    asyncio.run(main())


def test_counts_of_another_key_do_not_open_the_breaker(tmp_path: Path) -> None:
    """The store answers, with another key's fingerprint: refused as key_mismatch each time
    (what the operator must mend), never hidden behind circuit_open."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "state.sqlite"), timeout=STORE_TIMEOUT)
        try:
            await KeyCheck(store, b"a" * 16, "the state")()  # counted with key a
            watched = Watched(store, Breaker(1, LONG_COOLDOWN), KeyCheck(store, b"b" * 16, "it"))
            counting = watched.counting
            for call in (
                lambda: counting.reserve("r", [CHARGE]),
                lambda: counting.dry_run([CHARGE]),
            ):
                reason, _ = await timed_failure(call())
                assert reason == KEY_MISMATCH
            assert watched.counting.breaker.state == CLOSED
        finally:
            await store.close()

    asyncio.run(main())
