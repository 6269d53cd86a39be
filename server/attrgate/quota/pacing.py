"""Per-user pacing with GCRA (the generic cell rate algorithm): one number per user, the
theoretical arrival time (TAT). A write is scheduled at max(now, TAT - tolerance) and moves the
TAT one interval on; a write whose slot is further away than the wait allowed is refused and
changes nothing. The Redis store runs the same arithmetic in Lua (store/redis_quota.py)."""

from __future__ import annotations

import collections
from dataclasses import dataclass

MAX_LOCAL_USERS = 200_000


@dataclass(frozen=True, slots=True)
class Slot:
    ok: bool
    at_ms: float  # when the write may go (ok), or when a write would get a slot (refused)


def gcra(
    tat_ms: float | None, now_ms: float, interval_ms: float, tolerance_ms: float, wait_ms: float
) -> tuple[Slot, float | None]:
    """The slot for one write, and the new TAT (None: unchanged)."""
    tat = max(tat_ms if tat_ms is not None else now_ms, now_ms)
    at = max(tat - tolerance_ms, now_ms)
    if at - now_ms > wait_ms:
        return Slot(False, at), None
    return Slot(True, at), tat + interval_ms


class LocalPacing:
    """GCRA per user in this process (no fleet store, or while it is down). Bounded: users whose
    TAT has passed are forgotten oldest first."""

    def __init__(self, max_users: int = MAX_LOCAL_USERS) -> None:
        self._tat: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._max = max_users

    def __len__(self) -> int:
        return len(self._tat)

    def schedule(
        self, key: str, now_ms: float, interval_ms: float, tolerance_ms: float, wait_ms: float
    ) -> Slot:
        slot, tat = gcra(self._tat.get(key), now_ms, interval_ms, tolerance_ms, wait_ms)
        if tat is not None:
            self._tat[key] = tat
            self._tat.move_to_end(key)
            self._forget(now_ms)
        return slot

    def tat(self, key: str) -> float:
        """The user's TAT here (0 when none is kept)."""
        return self._tat.get(key, 0.0)

    def note(self, key: str, tat_ms: float, now_ms: float) -> None:
        """The fleet store scheduled the user up to `tat_ms`: should it stop answering, this
        replica goes on from there instead of promising the same slots again."""
        if tat_ms > self._tat.get(key, 0.0):
            self._tat[key] = tat_ms
            self._tat.move_to_end(key)
            self._forget(now_ms)

    def _forget(self, now_ms: float) -> None:
        while self._tat:
            key, tat = next(iter(self._tat.items()))
            if tat > now_ms and len(self._tat) <= self._max:
                return
            del self._tat[key]
