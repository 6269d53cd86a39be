"""A circuit breaker for store calls: after `failures` failures in a row it opens, and for
`cooldown` seconds every call is refused at once instead of waiting out the store timeout (a
dead Redis must cost each request nothing, not a timeout each). Then one call is let through
(half open): its success closes the breaker, its failure opens it again.

Plain state, no I/O and no clock of its own (injected), so a test drives it call by call.
Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
# The defaults of --store-breaker-failures and --store-breaker-cooldown.
FAILURES = 3
COOLDOWN = 1.0


class Breaker:
    def __init__(
        self,
        failures: int = FAILURES,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        *,
        trial_timeout: float | None = None,
    ) -> None:
        """`trial_timeout`: how long a half-open trial may take before it is presumed lost
        (its caller cancelled, so it never reports) and another is let through; default
        `cooldown`. A trial that is merely slow (a store call may take the whole store
        timeout) must not be joined by a second one meanwhile: pass what a trial may take."""
        # not (x > 0): NaN too, which compares false both ways and would never open
        if failures < 1 or not (math.isfinite(cooldown) and cooldown > 0):
            raise ValueError("a breaker opens after at least 1 failure, for a positive time")
        lease = cooldown if trial_timeout is None else trial_timeout
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError("a trial may take a positive, finite time")
        self._threshold = failures
        self._cooldown = cooldown
        self._lease = lease
        self._clock = clock
        self._failed = 0  # failures in a row
        self._opened_at: float | None = None
        # When the half-open trial call went out; a trial that never reports (its caller was
        # cancelled) stops blocking others after the trial timeout.
        self._trial_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at < self._cooldown:
            return OPEN
        return HALF_OPEN

    def allow(self) -> bool:
        """Whether a call may go to the store now. Half open, only one at a time does."""
        state = self.state
        if state == CLOSED:
            return True
        now = self._clock()
        if state == OPEN or (self._trial_at is not None and now - self._trial_at < self._lease):
            return False
        self._trial_at = now
        return True

    def succeeded(self) -> None:
        self._failed = 0
        self._opened_at = None
        self._trial_at = None

    def failed(self) -> None:
        self._failed += 1
        self._trial_at = None
        if self._opened_at is not None or self._failed >= self._threshold:
            self._opened_at = self._clock()

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it does now)."""
        if self._opened_at is None:
            return 0.0
        now = self._clock()
        wait = self._cooldown - (now - self._opened_at)
        if self._trial_at is not None:  # a trial is out: the next one waits for it
            wait = max(wait, self._lease - (now - self._trial_at))
        return max(0.0, wait)
