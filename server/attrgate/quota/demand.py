"""What a share wants on this replica: calls asking for a token (refused ones included) per
second, over the last few seconds, in fixed slots so a burst ages out smoothly.

Written on the event loop, read also by the metrics thread: reading changes nothing (each slot
remembers which time slot it counts, and stale ones are skipped, not cleared)."""

from __future__ import annotations

import time
from collections.abc import Callable

SLOT = 0.25  # seconds
SLOTS = 8  # a 2 s window


class Demand:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts = [0] * SLOTS
        self._ids = [-1] * SLOTS  # the time slot each count belongs to

    def arrived(self) -> None:
        slot = int(self._clock() / SLOT)
        i = slot % SLOTS
        if self._ids[i] != slot:
            self._ids[i], self._counts[i] = slot, 0
        self._counts[i] += 1

    def rate(self) -> float:
        """Calls per second over the window."""
        slot = int(self._clock() / SLOT)
        live = sum(c for c, s in zip(self._counts, self._ids, strict=True) if slot - s < SLOTS)
        return live / (SLOT * SLOTS)
