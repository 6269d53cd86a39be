"""What a share wants on this replica: calls asking for a token (refused ones included) per
second, over the last few seconds, in fixed slots so a burst ages out smoothly."""

from __future__ import annotations

import time
from collections.abc import Callable

SLOT = 0.25  # seconds
SLOTS = 8  # a 2 s window


class Demand:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = [0] * SLOTS
        self._slot = int(clock() / SLOT)

    def _advance(self, now: float) -> None:
        slot = int(now / SLOT)
        for passed in range(self._slot + 1, min(slot, self._slot + SLOTS) + 1):
            self._counts[passed % SLOTS] = 0
        self._slot = max(slot, self._slot)

    def arrived(self) -> None:
        now = self._clock()
        self._advance(now)
        self._counts[self._slot % SLOTS] += 1

    def rate(self) -> float:
        """Calls per second over the window."""
        self._advance(self._clock())
        return sum(self._counts) / (SLOT * SLOTS)
