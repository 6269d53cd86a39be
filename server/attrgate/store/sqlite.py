"""The embedded store: one SQLite file in WAL mode, exact across processes that share it.

Each store object owns one connection, used only from its own single worker thread, so blocking
SQLite calls never run on the event loop. The check-and-reserve runs inside `BEGIN IMMEDIATE`:
the write lock is taken before anything is read, so two processes can never both see room for
the last message. Waiting for that lock is bounded by `busy_timeout`; past it, or on any other
SQLite error (disk full, I/O error, a corrupt file), the call raises StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from attrgate.store.base import (
    Counter,
    Refused,
    ReserveResult,
    StoreUnavailable,
    check_counters,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key TEXT NOT NULL,
    reservation TEXT NOT NULL,
    ts INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    expires INTEGER NOT NULL,  -- when the event stops counting: ts + window, or the period's end
    UNIQUE (key, reservation, amount)
);
CREATE INDEX IF NOT EXISTS events_key_ts ON events (key, ts);
CREATE INDEX IF NOT EXISTS events_expires ON events (expires);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


# Expired events removed per reservation: enough to outpace the rate events are added.
SWEEP_BATCH = 64


def _expires(counter: Counter, now_ms: int) -> int:
    if counter.window_ms is not None:
        return now_ms + counter.window_ms
    assert counter.period_end_ms is not None
    return counter.period_end_ms


def retry_at(counter: Counter, used: int, events: Sequence[tuple[int, int]], now_ms: int) -> int:
    """When a refused counter has room: for a fixed period, its end; for a sliding window, when
    enough of the oldest events (ts, amount) have aged out. An amount larger than the limit never
    fits; it gets the time the window empties."""
    if counter.window_ms is None:
        assert counter.period_end_ms is not None
        return counter.period_end_ms
    excess = used + counter.amount - counter.limit
    for ts, amount in events:
        excess -= amount
        if excess <= 0:
            return ts + counter.window_ms
    return (events[-1][0] if events else now_ms) + counter.window_ms


class SqliteStore:
    def __init__(self, path: str, *, busy_timeout: float = 1.0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attrgate-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only in the executor's thread

    # --- plumbing -------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connection()
            try:
                return work(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"sqlite store {self._path}: {e}") from e
        except RuntimeError as e:  # the executor was shut down: the store is closed
            raise StoreUnavailable(f"sqlite store {self._path} is closed") from e

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # The file holds the generated HMAC key: create it readable by its owner only (SQLite
        # gives the -wal and -shm files the same mode). An existing file keeps its mode.
        os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
        # isolation_level=None: no implicit transactions; every one below is explicit.
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            mode = self._enter_wal(conn)
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
            # FULL: a committed reservation survives a power cut, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> str:
        """Switch the file to WAL (a lasting property of the file). Connections racing to switch
        a new file can get SQLITE_BUSY without the busy handler being called: retry until the
        busy timeout."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    # --- the Store interface --------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, counters: Sequence[Counter], now_ms: int
    ) -> ReserveResult:
        check_counters(counters)
        counters = tuple(counters)

        def work(conn: sqlite3.Connection) -> ReserveResult:
            conn.execute("BEGIN IMMEDIATE")
            refused: list[Refused] = []
            to_add: list[Counter] = []
            for index, c in enumerate(counters):
                if c.window_ms is not None:
                    conn.execute(
                        "DELETE FROM events WHERE key = ? AND ts <= ?",
                        (c.key, now_ms - c.window_ms),
                    )
                elif c.period_end_ms is not None and now_ms >= c.period_end_ms:
                    conn.execute("DELETE FROM events WHERE key = ?", (c.key,))
                held = conn.execute(
                    "SELECT 1 FROM events WHERE key = ? AND reservation = ? AND amount = ?",
                    (c.key, reservation_id, c.amount),
                ).fetchone()
                if held:  # this reservation is already charged here: charge it once
                    continue
                (used,) = conn.execute(
                    "SELECT COALESCE(SUM(amount), 0) FROM events WHERE key = ?", (c.key,)
                ).fetchone()
                if used + c.amount > c.limit:
                    events = conn.execute(
                        "SELECT ts, amount FROM events WHERE key = ? ORDER BY ts", (c.key,)
                    ).fetchall()
                    refused.append(Refused(index, used, retry_at(c, used, events, now_ms)))
                else:
                    to_add.append(c)
            if not refused:
                conn.executemany(
                    "INSERT INTO events (key, reservation, ts, amount, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (c.key, reservation_id, now_ms, c.amount, _expires(c, now_ms))
                        for c in to_add
                    ],
                )
                # Entries expire with their window even in keys no request touches again
                # (a number used once): sweep them, a bounded batch at a time.
                conn.execute(
                    "DELETE FROM events WHERE rowid IN "
                    "(SELECT rowid FROM events WHERE expires <= ? LIMIT ?)",
                    (now_ms, SWEEP_BATCH),
                )
            conn.execute("COMMIT")  # on refusal this commits only the pruning
            return ReserveResult(ok=not refused, refused=tuple(refused))

        return await self._run(work)

    async def release(self, reservation_id: str, counters: Sequence[Counter]) -> list[bool]:
        rows = [(c.key, reservation_id, c.amount) for c in counters]

        def work(conn: sqlite3.Connection) -> list[bool]:
            conn.execute("BEGIN IMMEDIATE")
            removed = [
                conn.execute(
                    "DELETE FROM events WHERE key = ? AND reservation = ? AND amount = ?", row
                ).rowcount
                > 0
                for row in rows
            ]
            conn.execute("COMMIT")
            return removed

        return await self._run(work)

    async def usage(self, counters: Sequence[Counter], now_ms: int) -> list[int]:
        counters = tuple(counters)

        def work(conn: sqlite3.Connection) -> list[int]:
            conn.execute("BEGIN")  # one snapshot for all counters
            used: list[int] = []
            for c in counters:
                if c.window_ms is not None:
                    row = conn.execute(
                        "SELECT COALESCE(SUM(amount), 0) FROM events WHERE key = ? AND ts > ?",
                        (c.key, now_ms - c.window_ms),
                    ).fetchone()
                elif c.period_end_ms is not None and now_ms >= c.period_end_ms:
                    row = (0,)
                else:
                    row = conn.execute(
                        "SELECT COALESCE(SUM(amount), 0) FROM events WHERE key = ?", (c.key,)
                    ).fetchone()
                used.append(int(row[0]))
            conn.execute("COMMIT")
            return used

        return await self._run(work)

    async def usage_by_prefix(self, prefix: str, window_ms: int, now_ms: int) -> dict[str, int]:
        # substr() rather than LIKE: keys may contain % or _.
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT key, SUM(amount) FROM events WHERE substr(key, 1, ?) = ? AND ts > ? "
                "GROUP BY key",
                (len(prefix), prefix, now_ms - window_ms),
            ).fetchall()
            return {str(key): int(total) for key, total in rows}

        return await self._run(work)

    async def get_or_create_secret(self, name: str, new: bytes) -> bytes:
        def work(conn: sqlite3.Connection) -> bytes:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, new))
            (value,) = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            conn.execute("COMMIT")
            return bytes(value)

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1 FROM secrets LIMIT 1").fetchall())

    async def close(self) -> None:
        def work() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except RuntimeError:  # already closed
            return
        self._executor.shutdown(wait=False)
