"""A bound on one share's Cognito calls under way on this replica: a slot is taken once the
call's user has its turn, held while it waits for its token, and until the call's outcome (not
until its caller gives up: a call that hangs keeps its slot), so callers whose calls hang
cannot take every upstream thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from attrgate.quota.bucket import Refused


class Bulkhead:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self, wait: float) -> bool:
        """A slot within `wait` seconds, or False."""
        if self.in_flight < self.limit and not self._line:
            self.in_flight += 1
            return True
        if wait <= 0:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(turn)
        except TimeoutError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                return True  # handed a slot as the wait ended: it is ours
            self._forget(turn)
            return False
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.leave()  # handed a slot, but nobody will use it
            else:
                self._forget(turn)
            raise
        return True

    def retire(self) -> None:
        """The server stops: the calls waiting for a slot are refused now."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_exception(Refused(1.0))

    def _forget(self, turn: asyncio.Future[None]) -> None:
        turn.cancel()
        with contextlib.suppress(ValueError):
            self._line.remove(turn)

    def leave(self) -> None:
        self.in_flight -= 1
        self.admit()

    def admit(self) -> None:
        """Hand free slots to the calls waiting (also after the limit grew on reload)."""
        while self._line and self.in_flight < self.limit:
            turn = self._line.popleft()
            if not turn.done():
                self.in_flight += 1
                turn.set_result(None)
