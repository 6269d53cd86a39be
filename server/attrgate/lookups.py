"""Cognito metadata lookups (DescribeUserPool, AdminGetUser): cached, one call for concurrent
misses, and paid for from a per-caller budget, so that made-up ids cannot spend the account's
Cognito quota.

The budget is a token bucket per caller. A lookup not answered from cache takes a token before it
calls and gives it back when it finds what it looked for: lookups of pools and users that exist
never drain a bucket, while not-found ids and failing lookups do, and a concurrent burst of
made-up ids is bounded by the burst before any answer has returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from attrgate.domain import UpstreamError, UpstreamResult

log = logging.getLogger("attrgate.lookups")

Clock = Callable[[], float]
# (operation, answer): how a lookup that missed the fresh cache was answered; see Answer.
Observe = Callable[[str, str], None]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
Fetch = Callable[[K], Awaitable[V | UpstreamResult]]

# Buckets kept in memory; past it the least recently used one goes (and would start full again).
MAX_CALLERS = 10_000
# After a failed refresh, the stale answer serves this long before Cognito is asked again, so a
# throttled Cognito sees one call per pool per interval, not one per request.
REFRESH_BACKOFF = 5.0
_NOT_FOUND = (UpstreamError.RESOURCE_NOT_FOUND, UpstreamError.USER_NOT_FOUND)


class Answer:
    """The `answer` label of attrgate_metadata_lookups_total (fresh cache hits are not counted:
    they are the fast path)."""

    COGNITO = "cognito"  # a call was made
    NEGATIVE_CACHE = "negative_cache"  # a recent not-found answered again
    STALE = "stale"  # an expired description served because a refresh failed or was not paid for
    LIMITED = "limited"  # refused: the caller's budget is spent; nothing sent


@dataclass(frozen=True, slots=True)
class OverBudget:
    """The caller's lookup budget is spent: nothing was sent. `retry_after`: seconds until the
    caller's next token."""

    retry_after: float


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class LookupBudget:
    """A token bucket per caller: `rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Clock = time.monotonic,
        max_callers: int = MAX_CALLERS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a lookup budget needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, caller: str) -> float:
        """0.0 when a token was taken; else the seconds until the caller's next one."""
        bucket = self._bucket(caller)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def give_back(self, caller: str) -> None:
        bucket = self._bucket(caller)
        bucket.tokens = min(self.burst, bucket.tokens + 1)

    def _bucket(self, caller: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
            bucket = self._buckets[caller] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(caller)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket


class _Entry(Generic[V]):
    __slots__ = ("expires", "retry_at", "value")

    def __init__(self, value: V, expires: float) -> None:
        self.value = value
        self.expires = expires
        self.retry_at = 0.0  # after a failed refresh: no new call before this


def no_observer(operation: str, answer: str) -> None:
    pass


class CachedLookup(Generic[K, V]):
    """One kind of metadata lookup: found answers cached for `ttl`, not-found ones for
    `negative_ttl`, and a found answer whose refresh fails served stale for up to `stale`
    seconds past its expiry. Not-found replaces a found answer (the pool or user was deleted)."""

    def __init__(
        self,
        fetch: Fetch[K, V],
        *,
        operation: str,
        budget: LookupBudget,
        ttl: float,
        negative_ttl: float = 0.0,
        stale: float = 0.0,
        max_entries: int = 1024,
        clock: Clock = time.monotonic,
        observe: Observe = no_observer,
        loggable: Callable[[K], str] = lambda key: "-",
    ) -> None:
        self._fetch_one = fetch
        self.operation = operation
        self._budget = budget
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale = stale
        self._max = max_entries
        self._clock = clock
        self._observe = observe
        self._loggable = loggable
        self._found: dict[K, _Entry[V]] = {}
        self._missing: dict[K, tuple[float, UpstreamResult]] = {}
        self._inflight: dict[K, asyncio.Task[V | UpstreamResult]] = {}
        self._waiting: dict[K, int] = {}  # callers awaiting each in-flight lookup

    async def get(self, key: K, caller: str) -> V | UpstreamResult | OverBudget:
        """The value, the classified error of the call that tried to get it, or OverBudget when
        the caller's budget does not cover a call (and nothing cached can answer)."""
        now = self._clock()
        entry = self._found.get(key)
        if entry is not None and now < entry.expires:
            return entry.value
        missing = self._missing.get(key)
        if missing is not None and now < missing[0]:
            self._observe(self.operation, Answer.NEGATIVE_CACHE)
            return missing[1]
        task = self._inflight.get(key)
        if task is None:
            stale = entry if entry is not None and now < entry.expires + self._stale else None
            if stale is not None and now < stale.retry_at:
                self._observe(self.operation, Answer.STALE)
                return stale.value
            wait = self._budget.take(caller)
            if wait > 0:
                if stale is not None:  # answering from cache costs nothing
                    self._observe(self.operation, Answer.STALE)
                    return stale.value
                self._observe(self.operation, Answer.LIMITED)
                return OverBudget(wait)
            # A task of its own, so one caller giving up never cancels the call the others
            # are waiting on (nor loses the token it gives back).
            task = asyncio.ensure_future(self._fetch(key, caller))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await self._wait(key, task)

    async def _wait(self, key: K, task: asyncio.Task[V | UpstreamResult]) -> V | UpstreamResult:
        """Await the shared lookup. The last caller to give up cancels it: a lookup nobody
        waits for any more must not hold a connection waiting for Cognito, nor reach Cognito
        if it has not yet (its token stays spent: cancelling is no way around the budget)."""
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            left = self._waiting[key] - 1
            if left:
                self._waiting[key] = left
            else:
                del self._waiting[key]
                if not task.done():
                    task.cancel()
                    # Gone from view at once: a caller arriving before the cancellation lands
                    # must start a lookup of its own, not wait on this one and be cancelled.
                    if self._inflight.get(key) is task:
                        del self._inflight[key]

    async def _fetch(self, key: K, caller: str) -> V | UpstreamResult:
        result = await self._fetch_one(key)
        now = self._clock()
        if not isinstance(result, UpstreamResult):
            self._observe(self.operation, Answer.COGNITO)
            self._budget.give_back(caller)
            self._missing.pop(key, None)
            _put(self._found, key, _Entry(result, now + self._ttl), self._max)
            return result
        self._observe(self.operation, Answer.COGNITO)
        if result.error in _NOT_FOUND:
            self._found.pop(key, None)
            if self._negative_ttl > 0:
                _put(self._missing, key, (now + self._negative_ttl, result), self._max)
            return result
        entry = self._found.get(key)
        if entry is not None and now < entry.expires + self._stale:
            entry.retry_at = now + REFRESH_BACKOFF
            self._observe(self.operation, Answer.STALE)
            # The error class only: Cognito's own code is not trusted into a log line.
            log.warning(
                "%s %s failed (%s): serving its answer that expired %.0f s ago",
                self.operation,
                self._loggable(key),
                result.error.value if result.error else "",
                now - entry.expires,
            )
            return entry.value
        return result

    def _forget(self, key: K, done: asyncio.Task[V | UpstreamResult]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: awaiting callers re-raise it, nobody else logs it


def _put(into: dict[K, T], key: K, value: T, limit: int) -> None:
    """Store, evicting the oldest entry when full (memory stays bounded whatever ids come)."""
    if key not in into and len(into) >= limit:
        into.pop(next(iter(into)))
    into[key] = value
