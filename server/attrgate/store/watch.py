"""Whether the SMS store answers, and what became of every failure: counted by reason, logged at
most once a minute per reason (a store that is down fails every SMS-triggering request, and one
log line per request would bury everything else), and reported to whoever follows the store's
state (the health service, the `attrgate_sms_store_up` gauge)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from attrgate.store.base import StoreUnavailable

log = logging.getLogger("attrgate.sms")
LOG_EVERY = 60.0  # seconds between two log lines about failures of one reason


class StoreWatch:
    def __init__(
        self,
        on_failure: Callable[[str], None] = lambda reason: None,
        on_change: Callable[[bool], None] = lambda up: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.up = True
        self._on_failure = on_failure
        self._on_change = on_change
        self._clock = clock
        self._logged: dict[str, float] = {}  # reason -> when last logged
        self._unlogged: dict[str, int] = {}  # reason -> failures since

    def failed(self, exc: StoreUnavailable, during: str) -> None:
        """`during`: what failed (reserve, release, usage, probe), for the log line."""
        self.refused(exc, during)
        if self.up:
            self.up = False
            self._on_change(False)

    def refused(self, exc: StoreUnavailable, during: str) -> None:
        """A call refused without asking the store (its circuit breaker is open): counted and
        logged like a failure, but the store's health stays as the calls that reached it left
        it (down already; an answer of the probe meanwhile must not flip back and forth)."""
        reason = exc.reason
        self._on_failure(reason)
        now = self._clock()
        last = self._logged.get(reason)
        if last is not None and now - last < LOG_EVERY:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        else:
            more = self._unlogged.pop(reason, 0)
            self._logged[reason] = now
            log.error(
                "SMS store failed (%s, during %s): %s; SMS-triggering writes answer UNAVAILABLE "
                "SMS_STORE_UNAVAILABLE, other writes go on%s",
                reason,
                during,
                exc,
                f" ({more} more failures of this kind since the last line)" if more else "",
            )

    def answered(self) -> None:
        if not self.up:
            self.up = True
            log.info("SMS store answers again")
            self._on_change(True)
