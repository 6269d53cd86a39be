"""Group commit for the SQLite store: one writer thread owns the connection and runs every
operation queued since its last turn in ONE transaction, so a burst of reservations costs one
lock round and one fsync instead of one each.

Each operation is a function of the connection, run whole inside the batch's transaction (in a
savepoint of its own, so one that fails by itself fails alone); its result reaches its caller only
after COMMIT. If the batch itself fails (the file, the lock, the disk), it is rolled back and
every operation in it fails (nothing of it was stored).

Operations are droppable (reservations) or not (releases). A droppable operation whose caller
stopped waiting (timeout, cancellation) before the writer took it is never run: nobody would
learn of it, and nobody would give it back. A release always runs once queued: it is
idempotent, and dropping one would keep a count that Cognito never used.

Before each batch and after its commit the writer calls `check()` (the store compares the file's
identity); what it raises fails the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from attrgate.store.base import CLOSED, FILE_GONE, TIMEOUT, StoreUnavailable

T = TypeVar("T")

# Operations run in one transaction at most; bounds a batch's time (a reservation takes well
# under a millisecond) so the next batch's callers do not wait behind an unbounded one.
MAX_BATCH = 512

_PENDING, _TAKEN, _DROPPED = range(3)
_STATE_LOCK = threading.Lock()  # guards every _Op.state: the loop drops, the writer takes


class _Op(Generic[T]):
    __slots__ = ("droppable", "future", "loop", "state", "work", "writes")

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], T],
        writes: bool,
        droppable: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.work = work
        self.writes = writes
        self.droppable = droppable
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        # A caller that stopped waiting never reads the outcome: read it here, or asyncio logs
        # "exception was never retrieved".
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.state = _PENDING

    def take(self) -> bool:
        """The writer's claim: False when the caller dropped it first."""
        with _STATE_LOCK:
            if self.state != _PENDING:
                return False
            self.state = _TAKEN
            return True

    def drop(self) -> bool:
        """The caller's: True when the writer had not taken it, so it will never run."""
        with _STATE_LOCK:
            if self.state != _PENDING or not self.droppable:
                return False
            self.state = _DROPPED
            return True

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """In the caller's loop: hand over the outcome, unless the caller stopped waiting."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _settle(outcomes: list[tuple[_Op[Any], Any, BaseException | None]]) -> None:
    """From the writer thread: one wake-up of each caller's loop per batch, not per operation."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op[Any], Any, BaseException | None]]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():

        def deliver(mine: list[tuple[_Op[Any], Any, BaseException | None]] = mine) -> None:
            for op, result, error in mine:
                op.deliver(result, error)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(deliver)


_STOP = object()


class GroupCommitWriter:
    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        check: Callable[[sqlite3.Connection | None], None],
        failure: Callable[[BaseException], StoreUnavailable],
    ) -> None:
        """`connect` opens the connection (in the writer thread, on the first batch; retried on
        the next batch when it fails); `check` runs before each batch and after its commit, with
        the connection (None before it is open), outside any transaction;
        `failure` turns whatever a batch raised into the StoreUnavailable its callers get."""
        self._name = name
        self._connect = connect
        self._check = check
        self._failure = failure
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"attrgate-{name}", daemon=True)
        self._thread.start()

    async def call(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        timeout: float,  # noqa: ASYNC109 (the store's own bound, not the caller's)
        writes: bool = True,
        droppable: bool = False,
    ) -> T:
        """Queue `work` and wait for its outcome at most `timeout` seconds."""
        if self._closed:
            raise StoreUnavailable(f"{self._name} is closed", CLOSED)
        op = _Op(work, writes, droppable, asyncio.get_running_loop())
        self._queue.put(op)
        try:
            # shield: a timeout ends the wait, not the future the writer settles.
            return await asyncio.wait_for(asyncio.shield(op.future), timeout)
        except TimeoutError:
            ran = "was not run" if op.drop() else "may still complete"
            raise StoreUnavailable(
                f"{self._name} did not answer within {timeout:g}s (the operation {ran})", TIMEOUT
            ) from None
        except asyncio.CancelledError:
            op.drop()
            raise

    async def close(self) -> None:
        """Run what is queued, then close the connection and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                ops = [op for op in batch if op is not _STOP]
                if ops:
                    self._run_batch(ops)
                if len(ops) < len(batch):
                    return
        finally:
            if self._conn is not None:
                self._conn.close()
            self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return
            if op is not _STOP and op.take():
                _settle([(op, None, StoreUnavailable(f"{self._name} is closed", CLOSED))])

    def _run_batch(self, ops: list[_Op[Any]]) -> None:
        results: list[tuple[_Op[Any], Any, BaseException | None]] = []
        conn = self._conn
        try:
            self._check(conn)
            if conn is None:
                conn = self._conn = self._connect()
            # Only readers: a deferred transaction, so other processes keep writing meanwhile.
            writes = any(op.writes for op in ops)
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for op in ops:
                if op.take():  # taken as late as possible: a caller gone by now drops it
                    results.append(_isolated(conn, op, self._failure))
            conn.execute("COMMIT")
            # Again after: an answer is given only when the file was still there once committed.
            self._check(conn)
        except BaseException as exc:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
            error = self._failure(exc)
            if error.reason == FILE_GONE and conn is not None:
                # Never to be used again: let go of the file (and of any mapping of it).
                conn.close()
                self._conn = None
            # Every operation of the batch fails, those run too: rolled back, or committed into
            # a file no longer at the path.
            for op in ops:
                op.take()
            _settle([(op, None, error) for op in ops if op.state == _TAKEN])
            if not isinstance(exc, Exception):
                raise
            return
        _settle(results)


def _isolated(
    conn: sqlite3.Connection,
    op: _Op[Any],
    failure: Callable[[BaseException], StoreUnavailable],
) -> tuple[_Op[Any], Any, BaseException | None]:
    """Run one operation in a savepoint of the batch's transaction: an operation that fails on
    its own (a bug, a constraint) fails alone and leaves no trace, instead of taking the whole
    batch, releases included, with it. A failure of the file or the transaction itself (I/O,
    disk full, lock) ends the transaction: it is raised, and the batch fails."""
    conn.execute("SAVEPOINT op")
    try:
        result = op.work(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise
        try:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        except sqlite3.Error:
            raise exc from None
        return op, None, failure(exc)
    conn.execute("RELEASE op")
    return op, result, None
