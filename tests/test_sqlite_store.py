"""The embedded store's own promises, beyond the shared suite (tests/test_store.py): no shared
memory (a rollback journal, converted from an older attrgate's WAL), group commit, reservations
of callers who gave up never made and releases always made, and a file deleted or replaced under
it refused rather than written on."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from attrgate.store.base import FILE_GONE, SQLITE_ERROR, Counter, StoreUnavailable
from attrgate.store.sqlite import SCHEMA, SqliteStore

T0 = 1_000_000_000
MINUTE = 60_000
# The layout of attrgate 0.1 (WAL mode; the generated HMAC key in `secrets`).
OLD_SCHEMA = """
CREATE TABLE events (key TEXT NOT NULL, reservation TEXT NOT NULL, ts INTEGER NOT NULL,
    amount INTEGER NOT NULL, expires INTEGER NOT NULL, UNIQUE (key, reservation, amount));
CREATE INDEX events_key_ts ON events (key, ts);
CREATE INDEX events_expires ON events (expires);
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def sliding(key: str, limit: int, amount: int = 1) -> Counter:
    return Counter(key=key, limit=limit, amount=amount, window_ms=MINUTE)


def header(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(100)


def write_format(path: Path) -> int:
    """Byte 18 of the header: 1 for a rollback journal, 2 for WAL."""
    return header(path)[18]


def change_counter(path: Path) -> int:
    """Bytes 24-27: incremented by every write transaction in rollback-journal mode."""
    return int.from_bytes(header(path)[24:28], "big")


async def closing(store: SqliteStore) -> None:
    await store.close()


def test_no_wal_no_shared_memory(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(path))
        try:
            assert (await store.reserve("r", [sliding("k", 5)], T0)).ok
            assert not (tmp_path / "state.sqlite-shm").exists()
            assert not (tmp_path / "state.sqlite-wal").exists()
        finally:
            await store.close()

    asyncio.run(main())
    assert write_format(path) == 1


def test_a_wal_file_of_an_older_attrgate_is_converted_with_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    assert old.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    old.executescript(OLD_SCHEMA)
    old.execute(
        "INSERT INTO events (key, reservation, ts, amount, expires) VALUES ('k', 'a', ?, 1, ?)",
        (T0, T0 + MINUTE),
    )
    old.close()
    assert write_format(path) == 2

    async def main() -> None:
        store = SqliteStore(str(path))
        try:
            assert await store.usage([sliding("k", 2)], T0 + 1) == [1]
            # the sums a reservation reads were built from the old file's events
            assert (await store.reserve("b", [sliding("k", 2)], T0 + 1)).ok
            assert not (await store.reserve("c", [sliding("k", 2)], T0 + 1)).ok
        finally:
            await store.close()

    asyncio.run(main())
    assert write_format(path) == 1
    assert not (tmp_path / "state.sqlite-wal").exists()
    assert not (tmp_path / "state.sqlite-shm").exists()


def test_an_older_attrgate_holding_the_file_in_wal_mode_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_SCHEMA)

    async def main() -> None:
        store = SqliteStore(str(path), timeout=0.3)
        try:
            with pytest.raises(StoreUnavailable, match="cannot leave WAL mode"):
                await store.ping()
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        old.close()


def test_a_burst_of_reservations_commits_in_a_few_transactions(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(path))
        try:
            await store.ping()
            before = change_counter(path)
            counters = [sliding("phone", 1000), sliding("global", 150)]
            results = await asyncio.gather(
                *(store.reserve(f"r{i}", counters, T0) for i in range(200))
            )
            # exact as ever: the first 150 in queue order, then the limit
            assert [r.ok for r in results] == [True] * 150 + [False] * 50
            # one transaction (one fsync) per batch, not per reservation
            assert change_counter(path) - before <= 10
        finally:
            await store.close()

    asyncio.run(main())


def test_a_caller_who_gave_up_in_the_queue_never_reserves_but_a_release_always_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite"
    c = sliding("phone", 5)

    async def main() -> None:
        store = SqliteStore(str(path), timeout=30)
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            assert (await store.reserve("kept", [c], T0)).ok
            holder.execute("BEGIN EXCLUSIVE")  # another process holds the file: the writer waits
            first = asyncio.ensure_future(store.reserve("first", [sliding("other", 5)], T0))
            abandoned = asyncio.ensure_future(store.reserve("abandoned", [c], T0))
            release = asyncio.ensure_future(store.release("kept", [c]))
            await asyncio.sleep(0.05)  # all three queued behind the lock
            abandoned.cancel()
            release.cancel()
            holder.execute("ROLLBACK")
            assert (await first).ok
            # the release ran although its caller was gone; the abandoned reservation did not
            assert await store.usage([c], T0) == [0]
            assert await store.release("abandoned", [c]) == [False]
        finally:
            holder.close()
            await store.close()

    asyncio.run(main())


def test_a_timeout_while_queued_says_nothing_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(path), timeout=0.5)
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            await store.ping()
            holder.execute("BEGIN EXCLUSIVE")
            unlock = threading.Timer(1.2, lambda: holder.execute("ROLLBACK"))
            unlock.start()
            outcomes = await asyncio.gather(
                *(store.reserve(f"r{i}", [sliding("k", 99)], T0) for i in range(5)),
                return_exceptions=True,
            )
            assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
            unlock.join()
            assert await store.usage([sliding("k", 99)], T0) == [0]
        finally:
            holder.close()
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_under_the_store_is_refused_never_recreated(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "state.sqlite"
    c = sliding("phone", 5)

    async def main() -> None:
        store = SqliteStore(str(path))
        try:
            assert (await store.reserve("a", [c], T0)).ok
            for name in os.listdir(tmp_path):  # rm state.sqlite*
                if name.startswith("state.sqlite"):
                    os.unlink(tmp_path / name)
            if how == "replaced":  # e.g. a backup restored over it with mv
                other = sqlite3.connect(tmp_path / "other.sqlite")
                for statement in SCHEMA:
                    other.execute(statement)
                other.commit()
                other.close()
                os.replace(tmp_path / "other.sqlite", path)
            for call in (
                lambda: store.reserve("b", [c], T0),
                lambda: store.usage([c], T0),
                lambda: store.release("a", [c]),
                store.ping,
            ):
                with pytest.raises(StoreUnavailable) as caught:
                    await call()
                assert caught.value.reason == FILE_GONE
                assert "was deleted" in str(caught.value) or "was replaced" in str(caught.value)
            assert path.exists() == (how == "replaced")
        finally:
            await store.close()

    asyncio.run(main())
    if how == "replaced":  # nothing was written into the file now at the path
        check = sqlite3.connect(path)
        assert check.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
        check.close()


def test_a_damaged_file_fails_calls_not_the_process(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"

    async def main() -> None:
        store = SqliteStore(str(path))
        try:
            assert (await store.reserve("a", [sliding("k", 5)], T0)).ok
            with path.open("r+b") as f:
                f.write(b"this is no SQLite database" * 40)
            with pytest.raises(StoreUnavailable) as caught:
                await store.reserve("b", [sliding("k", 5)], T0)
            assert caught.value.reason == SQLITE_ERROR
        finally:
            await store.close()

    asyncio.run(main())


def test_the_running_sums_always_equal_the_events(tmp_path: Path) -> None:
    """Reservations, refusals, releases, pruning and the sweep, in a seeded random mix: each
    key's kept total is the sum of its events, and usage agrees with the events."""
    import random

    path = tmp_path / "state.sqlite"
    rng = random.Random(8)
    keys = [f"k{i}" for i in range(6)]

    async def main() -> None:
        store = SqliteStore(str(path))
        held: list[tuple[str, list[Counter]]] = []
        try:
            for step in range(400):
                now = T0 + step * 1_000
                if held and rng.random() < 0.3:
                    rid, counters = held.pop(rng.randrange(len(held)))
                    await store.release(rid, counters)
                    continue
                counters = [
                    Counter(k, limit=rng.randint(3, 40), amount=rng.randint(0, 9), window_ms=90_000)
                    if rng.random() < 0.7
                    else Counter(k, limit=500, amount=rng.randint(1, 9), period_end_ms=T0 + 200_000)
                    for k in rng.sample(keys, rng.randint(1, 3))
                ]
                if (await store.reserve(f"r{step}", counters, now)).ok:
                    held.append((f"r{step}", counters))
        finally:
            await store.close()

    asyncio.run(main())
    conn = sqlite3.connect(path)
    try:
        kept = dict(conn.execute("SELECT key, total FROM sums WHERE total != 0"))
        summed = dict(
            conn.execute("SELECT key, SUM(amount) FROM events GROUP BY key HAVING SUM(amount) != 0")
        )
    finally:
        conn.close()
    assert kept == summed
    assert kept  # the mix left something counted
