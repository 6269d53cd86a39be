"""What `attrgate status` reports of one policy set: where it comes from, what serves, and how
the last reload went. Plain values; the admin RPC turns them into protobuf."""

from __future__ import annotations

import time
from dataclasses import dataclass

# How a set's changes are picked up.
WATCH = "watch"  # a file-system watcher (and SIGHUP)
POLL = "poll"  # an S3 bundle polled (and SIGHUP)
SIGHUP = "sighup"  # only SIGHUP

# attrgate_policy_reloads_total{result}; "unchanged" only for reloads the server started itself
# (a watcher's event, a poll) that found the revision serving; "unavailable" when the source
# could not be read at all (S3 unreachable, denying, missing the object).
LOADED, REJECTED, UNCHANGED, UNAVAILABLE = "loaded", "rejected", "unchanged", "unavailable"
RELOAD_RESULTS = (LOADED, REJECTED, UNCHANGED, UNAVAILABLE)


@dataclass
class SetStatus:
    source: str
    follows: str
    revision: str = ""
    loaded_at: float = 0.0  # time.time() of the load now serving
    documents: int = 0
    last_result: str = ""
    last_attempt: float = 0.0
    last_error: str = ""
    fallback: bool = False  # serving --policies-fallback: no valid bundle yet
    # The source could not be read on the last `source_errors` attempts in a row, since
    # `source_error_since` (time.time()); cleared by the first attempt that reads it again.
    source_error: str = ""
    source_error_since: float = 0.0
    source_errors: int = 0

    def serving(self, revision: str, documents: int, fallback: bool = False) -> None:
        """A set was swapped in (or loaded at start)."""
        self.revision, self.documents, self.fallback = revision, documents, fallback
        self.loaded_at = time.time()
        self.last_error = ""

    def attempted(self, result: str, error: str = "") -> int:
        """Record an attempt; how many attempts in a row had found the source unavailable
        when this one reads it again (0 otherwise)."""
        self.last_result, self.last_attempt = result, time.time()
        if result == UNAVAILABLE:
            if not self.source_errors:
                self.source_error_since = self.last_attempt
            self.source_error, self.source_errors = error, self.source_errors + 1
            return 0
        if error:
            self.last_error = error
        elif result == UNCHANGED:
            self.last_error = ""  # what the source holds is the serving set again
        ended, self.source_errors, self.source_error = self.source_errors, 0, ""
        return ended


@dataclass(frozen=True)
class ServerStatus:
    policies: SetStatus
    candidate: SetStatus | None
    shadow: bool
