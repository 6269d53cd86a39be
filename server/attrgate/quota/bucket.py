"""A share's local gate: a token bucket at the rate this replica holds for the share, and a FIFO
of the calls waiting for a token.

A call that finds no token waits in line; one whose place in line cannot be served before its
own deadline is refused at once (with when to retry), not after waiting in vain. A rate change
(a new lease, the adaptive factor) applies to the calls already waiting: nothing is promised
ahead of time at an old rate. Retries inside a Cognito call take tokens from worker threads
(`try_take`): the bucket's arithmetic is guarded by a lock; the line belongs to the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.rate = 0.0
        self.capacity = 1.0
        self._tokens = 0.0
        self._updated = clock()

    def set_rate(self, rate: float, capacity: float) -> None:
        with self._lock:
            self._refill(self._clock())
            self.rate = max(rate, 0.0)
            self.capacity = max(capacity, 1.0)
            self._tokens = min(self._tokens, self.capacity)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def try_take(self) -> bool:
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def seconds_for(self, tokens: float) -> float:
        """How long until `tokens` more than now are in the bucket (inf at rate 0)."""
        with self._lock:
            self._refill(self._clock())
            missing = tokens - self._tokens
            if missing <= 0:
                return 0.0
            return missing / self.rate if self.rate > 0 else math.inf


class Refused(Exception):
    """No token within the wait allowed; `retry_after`: seconds after which one may be free."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no token; retry after {retry_after:.3f}s")
        self.retry_after = retry_after


class ShareGate:
    """The bucket and the line of one share on this replica."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.bucket = TokenBucket(clock)
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._line)

    def set_rate(self, rate: float, capacity: float) -> None:
        self.bucket.set_rate(rate, capacity)
        self._pump()

    async def take(self, wait: float) -> float:
        """A token within `wait` seconds: the seconds waited, or Refused."""
        if not self._line and self.bucket.try_take():
            return 0.0
        # Behind everyone in line: served once len(line) + 1 tokens have come.
        eta = self.bucket.seconds_for(len(self._line) + 1)
        if eta > wait and math.isfinite(eta):
            raise Refused(eta)
        if wait <= 0:
            raise Refused(eta if math.isfinite(eta) else 1.0)
        loop = asyncio.get_running_loop()
        started = self._clock()
        turn: asyncio.Future[None] = loop.create_future()
        self._line.append(turn)
        self._pump()
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(turn)
        except TimeoutError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                return self._clock() - started  # served as the wait ended: it holds a token
            self._drop(turn)
            late = self.bucket.seconds_for(len(self._line) + 1)
            raise Refused(late if math.isfinite(late) else 1.0) from None
        except asyncio.CancelledError:
            self._drop(turn)  # a token already handed to it is spent: the safe side
            raise
        return self._clock() - started

    def eta(self) -> float:
        """Seconds until a call joining the line now would be served (inf at rate 0)."""
        if not self._line and self.bucket.seconds_for(1) == 0:
            return 0.0
        return self.bucket.seconds_for(len(self._line) + 1)

    def retire(self) -> None:
        """The share is gone (a reload dropped it): no more tokens, and every call in line is
        refused now rather than served at a rate no lease backs any more."""
        self.bucket.set_rate(0.0, 1.0)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_exception(Refused(1.0))

    def _drop(self, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.cancel()
        with contextlib.suppress(ValueError):
            self._line.remove(turn)
        self._pump()

    def _pump(self) -> None:
        """Serve the head of the line while tokens last; then wake when the next one comes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._line and self._line[0].done():
            self._line.popleft()
        while self._line and self.bucket.try_take():
            self._line.popleft().set_result(None)
            while self._line and self._line[0].done():
                self._line.popleft()
        if self._line:
            delay = self.bucket.seconds_for(1.0)
            if math.isfinite(delay):
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(max(delay, 0.001), self._pump)
            # At rate 0 the line waits for set_rate (a lease) or its own deadline.

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.cancel()
