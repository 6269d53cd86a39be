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
# (a watcher's event, a poll) that found the revision serving.
LOADED, REJECTED, UNCHANGED = "loaded", "rejected", "unchanged"


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

    def serving(self, revision: str, documents: int, fallback: bool = False) -> None:
        """A set was swapped in (or loaded at start)."""
        self.revision, self.documents, self.fallback = revision, documents, fallback
        self.loaded_at = time.time()
        self.last_error = ""

    def attempted(self, result: str, error: str = "") -> None:
        self.last_result, self.last_attempt = result, time.time()
        if error:
            self.last_error = error


@dataclass(frozen=True)
class ServerStatus:
    policies: SetStatus
    candidate: SetStatus | None
    shadow: bool
