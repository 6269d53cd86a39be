"""The embedded store: one SQLite file, exact across processes that share it.

No shared memory: a rollback journal (`journal_mode=TRUNCATE`), not WAL, and `mmap_size=0`. WAL
maps its `-shm` file into memory, and a `-shm` truncated or damaged by another process then kills
the whole server with SIGBUS, plain writes included; with plain reads and writes a damaged file is
an SQLite error, and only SMS-triggering writes fail. Processes sharing the file (replicas,
`attrgate sms usage`) coordinate through its file locks.

One writer thread owns the connection and commits every operation queued since its last turn in
one transaction (store/groupcommit.py): a burst of reservations costs one lock and one fsync.
The check-and-reserve of each reservation is still exact: `BEGIN IMMEDIATE` takes the write lock
before anything is read, so two processes never both see room for the last message. Waiting for
that lock is bounded by the store timeout; past it, or on any other SQLite error, a call raises
StoreUnavailable.

The store never fails open when its file goes away: it remembers the file's identity (device,
inode) when it opens it, and before every batch checks that the path still names that file.
Deleted or replaced, the store refuses everything from then on: writing on into an unlinked
inode would count where nobody reads, and recreating the file would reset every limit.
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from attrgate.store.base import (
    DEFAULT_TIMEOUT,
    FILE_GONE,
    LOCKED,
    SQLITE_ERROR,
    Counter,
    Refused,
    ReserveResult,
    StoreUnavailable,
    check_counters,
)
from attrgate.store.groupcommit import GroupCommitWriter

T = TypeVar("T")

# Statements run in order at every open. `sums` holds each key's total of its events (the
# triggers keep it exact on every insert and delete), so checking a limit costs the same with
# 10 events in its window as with 100,000 (a month's budget): no SUM over the window.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
    key TEXT NOT NULL,
    reservation TEXT NOT NULL,
    ts INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    expires INTEGER NOT NULL,  -- when the event stops counting: ts + window, or the period's end
    UNIQUE (key, reservation, amount)
)""",
    "CREATE INDEX IF NOT EXISTS events_key_ts ON events (key, ts)",
    "CREATE INDEX IF NOT EXISTS events_expires ON events (expires)",
    "CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sums (key TEXT PRIMARY KEY, total INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TRIGGER IF NOT EXISTS events_added AFTER INSERT ON events BEGIN
    INSERT INTO sums (key, total) VALUES (NEW.key, NEW.amount)
        ON CONFLICT (key) DO UPDATE SET total = total + NEW.amount;
END""",
    """CREATE TRIGGER IF NOT EXISTS events_removed AFTER DELETE ON events BEGIN
    UPDATE sums SET total = total - OLD.amount WHERE key = OLD.key;
    DELETE FROM sums WHERE key = OLD.key AND total = 0;  -- absent reads as 0 just as well
END""",
)


# Expired events removed per reservation: enough to outpace the rate events are added.
SWEEP_BATCH = 64


def _expires(counter: Counter, now_ms: int) -> int:
    if counter.window_ms is not None:
        return now_ms + counter.window_ms
    assert counter.period_end_ms is not None
    return counter.period_end_ms


@functools.cache
def _prune_query(n: int) -> str:
    """Delete the events of n (key, live since) that no longer count."""
    terms = " OR ".join(["(key = ? AND ts <= ?)"] * n)
    return f"DELETE FROM events WHERE {terms}"  # noqa: S608 (placeholders only)


@functools.cache
def _state_query(n: int) -> str:
    """Per counter (position, key, amount): its sum, and whether the reservation (the last
    parameter) already holds it with that amount."""
    values = ", ".join(["(?, ?, ?)"] * n)
    return (
        f"WITH wanted(i, key, amount) AS (VALUES {values}) "  # noqa: S608 (placeholders only)
        "SELECT w.i, COALESCE(s.total, 0), EXISTS (SELECT 1 FROM events e "
        "WHERE e.key = w.key AND e.reservation = ? AND e.amount = w.amount) "
        "FROM wanted w LEFT JOIN sums s ON s.key = w.key ORDER BY w.i"
    )


@functools.cache
def _insert_query(n: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * n)
    return f"INSERT INTO events (key, reservation, ts, amount, expires) VALUES {values}"  # noqa: S608


def _live_since(counter: Counter, now_ms: int) -> int:
    """Events with `ts` above this count now: younger than the window; for a fixed period, all
    of them until it ends, then none."""
    if counter.window_ms is not None:
        return now_ms - counter.window_ms
    assert counter.period_end_ms is not None
    return -(2**63) if now_ms < counter.period_end_ms else 2**63 - 1


def retry_at(counter: Counter, used: int, events: Iterable[tuple[int, int]], now_ms: int) -> int:
    """When a refused counter has room: for a fixed period, its end; for a sliding window, when
    enough of the oldest events (ts, amount), read oldest first and only as far as needed, have
    aged out. An amount larger than the limit never fits; it gets the time the window empties."""
    if counter.window_ms is None:
        assert counter.period_end_ms is not None
        return counter.period_end_ms
    excess = used + counter.amount - counter.limit
    last: int | None = None
    for ts, amount in events:
        last = ts
        excess -= amount
        if excess <= 0:
            return ts + counter.window_ms
    return (now_ms if last is None else last) + counter.window_ms


def _frees_at(conn: sqlite3.Connection, counter: Counter, used: int, now_ms: int) -> int:
    """retry_at, reading no more of the key's events than it needs: none for a fixed period,
    the newest for an amount that never fits, else the oldest few (a full limit frees with its
    oldest event). A budget key holds a month of messages: reading them all on every refusal
    would stall the store for every writer once the budget is spent."""
    if counter.window_ms is None:
        return retry_at(counter, used, (), now_ms)
    if counter.amount > counter.limit:
        (newest,) = conn.execute(
            "SELECT MAX(ts) FROM events WHERE key = ?", (counter.key,)
        ).fetchone()
        return (now_ms if newest is None else int(newest)) + counter.window_ms
    oldest_first = conn.execute(
        "SELECT ts, amount FROM events WHERE key = ? ORDER BY ts", (counter.key,)
    )
    return retry_at(counter, used, oldest_first, now_ms)


STORE_ID = "store-id"


def _header(path: str) -> tuple[bool, int] | None:
    """From the database file's header: whether it is in WAL mode (bytes 18 and 19 are 2:
    another process, an older attrgate or an operator's `PRAGMA journal_mode=WAL`, switched it)
    and its change counter (bytes 24-27, raised by every commit in rollback-journal mode). Read
    with a file descriptor of our own, and only between transactions: closing it drops this
    process's POSIX locks on the file, and the one connection attrgate keeps to it holds none
    then. None: no header (gone, or empty)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        header = os.pread(handle, 28, 0)
    finally:
        os.close(handle)
    if len(header) < 28:
        return None
    return 2 in (header[18], header[19]), int.from_bytes(header[24:28], "big")


_WAL_SWITCHED = "was switched to WAL mode by another process (an older attrgate?)"


def _wal_mode(path: str) -> bool:
    found = _header(path)
    return found is not None and found[0]


LOCK_SHARE = 0.8  # of the store timeout, the most a batch waits for another process's lock
# Measured here: TRUNCATE, DELETE and PERSIST cost the same per commit (1.3-1.5 ms with
# synchronous=FULL; WAL 0.2 ms, amortised by group commit anyway). TRUNCATE creates no directory
# entry per transaction, and unlike PERSIST leaves no old page images in the journal.
JOURNAL_MODE = "truncate"


class SqliteStore:
    def __init__(
        self, path: str, *, timeout: float = DEFAULT_TIMEOUT, read_only: bool = False
    ) -> None:
        """`read_only`: for reports (`attrgate sms usage`): the file must exist, nothing in it
        changes (no schema, no journal mode), and only reads are possible."""
        self._path = path
        self._timeout = timeout
        self._read_only = read_only
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._gone: str | None = None  # why the file is no longer ours, once it is not
        self._store_id: bytes | None = None  # the contents' name, read when opened
        self._counter: int | None = None  # the file's change counter as last seen
        self._may_create = True  # only the first open may create the file
        self._writer = GroupCommitWriter(
            f"sqlite store {path}", self._open, self._check_file, self._unavailable
        )

    # --- plumbing (the writer thread) ------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._read_only:
            return self._open_read_only()
        # Readable by its owner only (the journal gets the same mode). An existing file keeps
        # its mode. Only the first attempt creates it: a file that is gone when the store tries
        # again (it could not open at start) is gone, and a new one would count from zero.
        create, self._may_create = self._may_create, False
        try:
            handle = os.open(self._path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            self._gone = "was deleted"
            self._check_file(None)  # raises: file_gone, for good
        try:
            opened = os.fstat(handle)
        finally:
            os.close(handle)
        # isolation_level=None: no implicit transactions; the writer's are explicit. Waiting for
        # another process's lock takes most of a call's time, so the call fails naming the lock
        # (reason "locked") rather than with a bare timeout.
        conn = sqlite3.connect(self._path, timeout=LOCK_SHARE * self._timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA mmap_size=0")
            mode = self._leave_wal(conn)
            if mode != JOURNAL_MODE:
                raise sqlite3.OperationalError(f"cannot use a rollback journal (mode {mode})")
            # FULL: a committed reservation survives a power cut, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            had_sums = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sums'"
            ).fetchone()
            for statement in SCHEMA:
                conn.execute(statement)
            if not had_sums:  # a state file of an older attrgate
                conn.execute(
                    "INSERT INTO sums (key, total) SELECT key, SUM(amount) FROM events GROUP BY key"
                )
            # The file's own name for its contents: gone or changed, the contents were replaced
            # in place (emptied, and rebuilt by another process) and the counts with them.
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (STORE_ID, secrets.token_bytes(16)),
            )
            (store_id,) = conn.execute(
                "SELECT value FROM secrets WHERE name = ?", (STORE_ID,)
            ).fetchone()
            conn.execute("COMMIT")
            now = os.stat(self._path)
            if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
                raise sqlite3.OperationalError("the file was replaced while being opened")
        except BaseException:
            conn.close()
            raise
        self._identity = (opened.st_dev, opened.st_ino)
        self._store_id = bytes(store_id)
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        opened = os.stat(self._path)  # missing: an error, never a new empty file
        uri = f"file:{urllib.parse.quote(self._path)}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=LOCK_SHARE * self._timeout)
        conn.isolation_level = None
        conn.execute("PRAGMA mmap_size=0")
        self._identity = (opened.st_dev, opened.st_ino)
        return conn

    def _leave_wal(self, conn: sqlite3.Connection) -> str:
        """Set the rollback journal. A file an earlier attrgate left in WAL mode is converted,
        which needs every other connection to it closed: while one stays open (an older
        replica), retry until the timeout. Connections racing to open a new file can also get
        SQLITE_BUSY without the busy handler being called."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                row = conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}").fetchone()
                return str(row[0]).lower()
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    why = (
                        "cannot leave WAL mode while another process has the file open (stop "
                        "every attrgate older than this one that uses it)"
                        if _wal_mode(self._path)
                        else "another process holds the file's lock"
                    )
                    raise sqlite3.OperationalError(f"{e}: {why}") from e
                time.sleep(0.005)

    def _check_file(self, conn: sqlite3.Connection | None) -> None:
        """Before each batch and after its commit: the path must still name the file opened,
        in the rollback-journal mode attrgate set (in WAL mode SQLite would map the -shm file,
        which another process can truncate under it: SIGBUS), with the contents it opened."""
        if self._gone is None and self._identity is not None:
            header = _header(self._path)
            # WAL first: reading the contents of a WAL-mode file would map the -shm file.
            self._gone = self._moved() or (_WAL_SWITCHED if header and header[0] else None)
            if self._gone is None and conn is not None and self._store_id is not None:
                self._gone = self._replaced_in_place(conn)
            if self._gone is None and header is not None:
                self._gone = self._rolled_back(header[1])
        if self._gone is not None:
            raise StoreUnavailable(
                f"sqlite store {self._path} {self._gone} while attrgate had it open: SMS "
                "counting stops until a restart (the counts in the old file are lost to it)",
                FILE_GONE,
            )

    def _rolled_back(self, counter: int) -> str | None:
        if self._counter is not None and 0 < self._counter - counter < 2**31:
            # Commits only ever raise it: lower means an older copy was put back in place.
            return "was rolled back to an older copy (a backup copied over it?)"
        self._counter = counter
        return None

    def _moved(self) -> str | None:
        try:
            now = os.stat(self._path)
        except FileNotFoundError:
            return "was deleted"
        if (now.st_dev, now.st_ino) != self._identity:
            return "was replaced by another file"
        return None

    def _replaced_in_place(self, conn: sqlite3.Connection) -> str | None:
        try:
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (STORE_ID,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise  # locked, I/O: a failure that may pass
            row = None
        if row is None or bytes(row[0]) != self._store_id:
            return "lost its contents (emptied or rewritten in place)"
        return None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, StoreUnavailable):
            return exc
        reason = SQLITE_ERROR
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):
            reason = LOCKED
        return StoreUnavailable(f"sqlite store {self._path}: {type(exc).__name__}: {exc}", reason)

    async def _run(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        writes: bool = True,
        droppable: bool = False,
    ) -> T:
        return await self._writer.call(
            work, timeout=self._timeout, writes=writes, droppable=droppable
        )

    # --- the Store interface (each `work` runs inside the writer's batch transaction) ------

    async def reserve(
        self, reservation_id: str, counters: Sequence[Counter], now_ms: int
    ) -> ReserveResult:
        check_counters(counters)
        counters = tuple(counters)

        def work(conn: sqlite3.Connection) -> ReserveResult:
            # A few statements whatever the number of counters, each costing the same however
            # many events a window holds (under load, every statement waits for the GIL again).
            # First drop the counters' expired events (the triggers take them off the sums)...
            pruning: list[object] = []
            for c in counters:
                pruning.extend((c.key, _live_since(c, now_ms)))
            conn.execute(_prune_query(len(counters)), pruning)
            # ...then read every counter's sum, and whether this reservation already holds it.
            wanted: list[object] = []
            for index, c in enumerate(counters):
                wanted.extend((index, c.key, c.amount))
            rows = conn.execute(_state_query(len(counters)), (*wanted, reservation_id)).fetchall()
            refused: list[Refused] = []
            to_add: list[Counter] = []
            for index, used, held in rows:
                c = counters[index]
                if held:  # this reservation is already charged here: charge it once
                    continue
                if used + c.amount > c.limit:
                    refused.append(Refused(index, used, _frees_at(conn, c, used, now_ms)))
                else:
                    to_add.append(c)
            if refused:  # all or none: only the pruning is kept
                return ReserveResult(ok=False, refused=tuple(refused))
            if to_add:
                conn.execute(
                    _insert_query(len(to_add)),
                    [
                        v
                        for c in to_add
                        for v in (c.key, reservation_id, now_ms, c.amount, _expires(c, now_ms))
                    ],
                )
            # Events expire with their window, in keys no request touches again too (a number
            # used once): sweep them, a bounded batch at a time, more than are ever added.
            conn.execute(
                "DELETE FROM events WHERE rowid IN "
                "(SELECT rowid FROM events WHERE expires <= ? LIMIT ?)",
                (now_ms, SWEEP_BATCH),
            )
            return ReserveResult(ok=True)

        # droppable: a caller that gave up before its turn never learns of the reservation, so
        # it must not be made.
        return await self._run(work, droppable=True)

    async def release(self, reservation_id: str, counters: Sequence[Counter]) -> list[bool]:
        rows = [(c.key, reservation_id, c.amount) for c in counters]

        def work(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "DELETE FROM events WHERE key = ? AND reservation = ? AND amount = ?", row
                ).rowcount
                > 0
                for row in rows
            ]

        return await self._run(work)  # never dropped: see the module docstring of groupcommit

    async def usage(self, counters: Sequence[Counter], now_ms: int) -> list[int]:
        counters = tuple(counters)

        def work(conn: sqlite3.Connection) -> list[int]:
            # The key's total less its events that no longer count (few: reservations and the
            # sweep delete them), read without deleting anything. One transaction: one snapshot.
            return [
                int(
                    conn.execute(
                        "SELECT COALESCE((SELECT total FROM sums WHERE key = ?1), 0) - "
                        "(SELECT COALESCE(SUM(amount), 0) FROM events WHERE key = ?1 AND ts <= ?2)",
                        (c.key, _live_since(c, now_ms)),
                    ).fetchone()[0]
                )
                for c in counters
            ]

        return await self._run(work, writes=False, droppable=True)

    async def usage_by_prefix(self, prefix: str, window_ms: int, now_ms: int) -> dict[str, int]:
        # substr() rather than LIKE: keys may contain % or _.
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT key, SUM(amount) FROM events WHERE substr(key, 1, ?) = ? AND ts > ? "
                "GROUP BY key",
                (len(prefix), prefix, now_ms - window_ms),
            ).fetchall()
            return {str(key): int(total) for key, total in rows}

        return await self._run(work, writes=False, droppable=True)

    async def get_or_create_secret(self, name: str, new: bytes) -> bytes:
        def work(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, new))
            (value,) = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(value)

        return await self._run(work)

    async def secret(self, name: str) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(work, writes=False)

    async def delete_secret(self, name: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            # secure_delete: zero the value's bytes in the file, not only unlink them.
            conn.execute("PRAGMA secure_delete=ON")
            try:
                conn.execute("DELETE FROM secrets WHERE name = ?", (name,))
            finally:
                conn.execute("PRAGMA secure_delete=OFF")

        await self._run(work)

    async def ping(self) -> None:
        """Answers when the file is still the one opened and its tables read. The first call
        opens the file, which may wait up to the timeout for a lock more than once (converting
        an older WAL file): it waits longer, so that the reason reaches the caller."""
        opened = self._identity is not None
        await self._writer.call(
            lambda conn: conn.execute("SELECT 1 FROM secrets LIMIT 1").fetchall(),
            timeout=self._timeout if opened else 3 * self._timeout + 1,
            writes=False,
            droppable=True,
        )

    async def close(self) -> None:
        await self._writer.close()
