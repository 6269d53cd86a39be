"""AIMD on the rate this replica sends at: Cognito answering TooManyRequestsException although
the governor kept to the quota means other clients share the account, so the rate drops by a
factor (at most once per second: one burst of throttles is one signal), and climbs back by a
step per second without throttling. Thread-safe: throttles are seen in worker threads.

Cognito answers the same exception when one user is written too often (about 10 per second):
a user throttled again within REPEAT seconds is that user's limit, not the account's, and
lowers nothing more. Only the first throttle of a user in that time is a signal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DECREASE = 0.7  # multiplicative
INCREASE = 0.05  # of the configured rate, per second without a throttle
FLOOR = 0.05  # never below 5 % of the configured rate
HOLD = 1.0  # seconds: throttles within this of a decrease are the same signal
REPEAT = 5.0  # seconds: a user throttled again within this is hitting its own limit


class Adaptive:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._factor = 1.0
        self._decreased_at = -float("inf")
        self._updated = clock()
        self.throttles = 0  # seen since start
        self._recent: dict[str, float] = {}  # user key -> when last throttled (within REPEAT)

    def throttled(self, user: str) -> None:
        """`user`: the throttled write's user key (hashed)."""
        with self._lock:
            now = self._clock()
            self.throttles += 1
            self._advance(now)
            self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT}
            repeated = user in self._recent
            self._recent[user] = now
            if not repeated and now - self._decreased_at >= HOLD:
                self._factor = max(FLOOR, self._factor * DECREASE)
                self._decreased_at = now
            self._updated = now

    def factor(self) -> float:
        with self._lock:
            self._advance(self._clock())
            return self._factor

    def _advance(self, now: float) -> None:
        if now - self._decreased_at < HOLD:
            self._updated = now  # no climbing while the last throttle is fresh
            return
        self._factor = min(1.0, self._factor + INCREASE * max(0.0, now - self._updated))
        self._updated = now
