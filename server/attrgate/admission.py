"""Which calls the server still takes, and how many it is handling: the drain's gate.

gRPC's own shutdown kills the calls its core has received but not yet handed to a handler, so
attrgate never shuts gRPC down while it may still owe an answer. It closes this gate instead: from
then on a new call is answered UNAVAILABLE (ATTRGATE_SHUTTING_DOWN) at once, the calls admitted
before run to their end, and `wait_idle` says when none is left. Used on the event loop only.
"""

from __future__ import annotations

import asyncio


class Admission:
    def __init__(self) -> None:
        self._open = True
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return self._active

    @property
    def open(self) -> bool:
        return self._open

    def enter(self) -> bool:
        """Admit a call (False once closed: refuse it). An admitted call must `leave`."""
        if not self._open:
            return False
        self._active += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    def close(self) -> None:
        self._open = False

    async def wait_idle(self, seconds: float) -> bool:
        """Whether every admitted call ended within `seconds`."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return self._idle.is_set()
        return True
