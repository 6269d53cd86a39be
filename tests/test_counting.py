"""Counting through a store (guards/counting.py) and watching it (store/watch.py): failures are
counted and logged at most once a minute per reason; a release runs to its end although its
caller is cancelled (a release dropped keeps a count Cognito never used)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from attrgate.guards.counting import SmsCounting
from attrgate.guards.sms import Charge, Hasher
from attrgate.store.base import (
    FILE_GONE,
    LOCKED,
    SQLITE_ERROR,
    TIMEOUT,
    Counter,
    Store,
    StoreUnavailable,
)
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
