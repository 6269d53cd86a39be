"""The store interface the SMS guard counts through. Only `store` knows SQLite or Redis.

A store keeps, per counter key, a log of events (reservation id, time, amount). A reservation
charges several counters at once, all or none. Amounts and limits are integers (a count of
messages, or money in micro-units): no binary floats anywhere.

Windows:
- sliding (`window_ms` set): an event counts while it is younger than the window; an event
  exactly `window_ms` old no longer counts (it counts while `now - ts < window_ms`).
- fixed period (`period_end_ms` set, `window_ms` None): every event in the key counts; the key is
  per period (the caller puts the period, e.g. the calendar month, in the key), and the counter
  frees at `period_end_ms`.

Time is always passed in (`now_ms`), never read by the store, so tests can inject a clock and it
reaches the Redis script too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit or budget a reservation charges."""

    key: str  # opaque, already free of personal data (hashed by the caller)
    limit: int  # the most the window may hold, amounts summed
    amount: int  # what this reservation adds (1 for a message count, micro-units for money)
    window_ms: int | None = None  # sliding window length
    period_end_ms: int | None = None  # fixed period: when it ends (exclusive)

    def __post_init__(self) -> None:
        if (self.window_ms is None) == (self.period_end_ms is None):
            raise ValueError("a counter has either window_ms or period_end_ms")
        if self.limit < 0 or self.amount < 0:
            raise ValueError("limit and amount are non-negative integers")


@dataclass(frozen=True, slots=True)
class Refused:
    """A counter that could not take the reservation, and when it can (ms since the epoch)."""

    index: int  # position of the counter in the reservation
    used: int  # what the window holds now
    retry_at_ms: int


@dataclass(frozen=True, slots=True)
class ReserveResult:
    ok: bool
    refused: tuple[Refused, ...] = ()  # every counter that refused, when not ok


INT64_MAX = 2**63 - 1


def check_counters(counters: Sequence[Counter]) -> None:
    """Reject what neither store can count exactly: a key charged twice in one reservation, or
    numbers past int64 (SQLite's INTEGER and Redis's INCRBY)."""
    keys = [c.key for c in counters]
    if len(set(keys)) != len(keys):
        raise ValueError("a reservation charges each counter key at most once")
    for c in counters:
        if c.limit > INT64_MAX or c.amount > INT64_MAX:
            raise ValueError("limit and amount must fit in a signed 64-bit integer")


# The default bound on one store call (--store-timeout), in seconds: waiting for a turn, for
# another process's lock, for Redis, and the fsync included.
DEFAULT_TIMEOUT = 2.0

# Why a store failed: a bounded set, used as a metric label.
TIMEOUT = "timeout"  # no answer within the store timeout
LOCKED = "locked"  # another process held the SQLite file's lock past the timeout
FILE_GONE = "file_gone"  # the SQLite file was deleted or replaced while open
SQLITE_ERROR = "sqlite_error"  # any other SQLite or file-system error (I/O, corrupt, disk full)
REDIS_ERROR = "redis_error"  # a Redis or socket error
KEY_MISMATCH = "key_mismatch"  # the store's counts were made with another HMAC key
CLOSED = "closed"  # the store was closed (the server is stopping)
# Not asked: the store failed too often just before (store/breaker.py), so the call fails at once
# instead of waiting out the store timeout again.
CIRCUIT_OPEN = "circuit_open"
REASONS = (
    TIMEOUT,
    LOCKED,
    FILE_GONE,
    SQLITE_ERROR,
    REDIS_ERROR,
    KEY_MISMATCH,
    CLOSED,
    CIRCUIT_OPEN,
)


class StoreUnavailable(Exception):
    """The store could not answer; callers fail closed. `reason` is one of REASONS; the
    message never holds personal data (keys are hashed before they reach a store)."""

    def __init__(self, message: str, reason: str = SQLITE_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LeaseSync:
    """One replica's turn in the quota governor's lease exchange (quota/leases.py)."""

    replica: str
    now_ms: int
    ttl_ms: int  # the grant holds this long unless renewed
    capacity: float  # requests per second for the whole fleet
    signature: str  # the shares' names: rows of another shape count, but not for fairness
    demands: Sequence[float]  # per share, requests per second wanted here
    desired: Sequence[float]  # per share, the rate this replica asks for


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """Another live replica's row."""

    signature: str
    demands: tuple[float, ...]
    total: float  # the rate it holds


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    rates: tuple[float, ...]  # per share, what this replica holds now
    others: tuple[LeaseRow, ...]


@dataclass(frozen=True, slots=True)
class Pace:
    """One write to one user, to be paced (quota/pacing.py's GCRA; times in ms)."""

    now_ms: int
    interval_ms: float
    tolerance_ms: float
    wait_ms: float
    floor_ms: float = 0.0  # a TAT this replica already promised alone


@dataclass(frozen=True, slots=True)
class Paced:
    ok: bool
    at_ms: float  # the write's slot (ok), or when one would be free (refused)
    tat_ms: float  # the user's TAT after this write


class FleetQuotaStore(Protocol):
    """What the quota governor needs from a store all replicas share (Redis)."""

    async def quota_sync(self, quota: str, sync: LeaseSync) -> LeaseGrant: ...

    async def quota_pace(self, quota: str, user: str, pace: Pace) -> Paced: ...

    async def quota_leave(self, quota: str, replica: str) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """Every call answers or raises StoreUnavailable within the store's timeout."""

    async def reserve(
        self, reservation_id: str, counters: Sequence[Counter], now_ms: int
    ) -> ReserveResult:
        """Atomically: prune expired events, and if every counter has room for its amount, add an
        event to each (all or none); else change nothing and report every refusing counter.
        A reservation whose caller stopped waiting before the store began it is never made."""
        ...

    async def release(self, reservation_id: str, counters: Sequence[Counter]) -> list[bool]:
        """Remove the reservation's events (it provably sent nothing). Idempotent: for each
        counter, whether this call removed an event (False when none was held). A caller that
        stops waiting (timeout, cancellation) does not stop the release."""
        ...

    async def usage(self, counters: Sequence[Counter], now_ms: int) -> list[int]:
        """What each counter's window holds now (amounts summed); changes nothing."""
        ...

    async def usage_by_prefix(self, prefix: str, window_ms: int, now_ms: int) -> dict[str, int]:
        """Every key starting with `prefix` that holds events younger than `window_ms`, and
        their sums (for reports such as `attrgate sms usage`); changes nothing."""
        ...

    async def get_or_create_secret(self, name: str, new: bytes) -> bytes:
        """A small per-store value (the fingerprint of the key the counts are made with): the
        stored one, or `new` after storing it. Atomic across processes. Never a key itself."""
        ...

    async def secret(self, name: str) -> bytes | None:
        """The stored value, or None."""
        ...

    async def delete_secret(self, name: str) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def close(self) -> None: ...
