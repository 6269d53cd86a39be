"""The decision log: one JSON object per line for every decision, allowed or not.

Entries are plain dicts handed to a bounded queue; a writer thread formats and writes them, so
the request path never waits on disk or on json. When the queue is full an entry is dropped and
counted: a request is never blocked by logging. The writer takes entries in batches (it lingers
a moment after the first), so a busy server wakes it some tens of times a second rather than
once per request: each wake-up is a thread switch and a hand-over of the GIL, costlier than the
entry. A file reopens on `reopen()` (SIGHUP, for logrotate). Nothing personal goes in:
attribute names but never values, the username only as a keyed hash.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

log = logging.getLogger("attrgate.decisionlog")
DEFAULT_CAPACITY = 10_000
LINGER = 0.02  # seconds the writer waits after the first entry for more to write with it
_STOP = object()
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode


class DecisionLog:
    def __init__(
        self,
        path: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        stream: TextIO | None = None,
        on_drop: Callable[[], None] | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """`fields`: added to every entry (a worker's index)."""
        self._path = path
        self._fields = dict(fields or {})
        self._stream = stream
        # SimpleQueue: a put takes no lock unless the writer is waiting for one.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._capacity = capacity
        self._reopen = threading.Event()
        self._on_drop = on_drop
        self.dropped = 0
        self._file: TextIO | None = None
        self._thread = threading.Thread(
            target=self._write_forever, name="attrgate-decision-log", daemon=True
        )

    def start(self) -> None:
        if self._path is not None:
            self._file = self._open()  # fail at start, not on the first decision
        self._thread.start()

    def record(self, entry: Mapping[str, Any]) -> None:
        """Queue an entry without ever blocking; a full queue drops it and counts the drop."""
        if self._queue.qsize() < self._capacity:
            self._queue.put(entry)
            return
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    def reopen(self) -> None:
        """Reopen the file before the next entry (logrotate moved it away)."""
        self._reopen.set()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._file is not None:
            self._file.close()

    def _open(self) -> TextIO:
        assert self._path is not None
        # Kept open across entries; reopened on HUP.
        return open(self._path, "a", encoding="utf-8")

    def _target(self) -> TextIO:
        if self._path is None:
            return self._stream or sys.stdout
        if self._reopen.is_set() or self._file is None:
            self._reopen.clear()
            if self._file is not None:
                self._file.close()
            self._file = self._open()
        return self._file

    def _write_forever(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is not _STOP:
                time.sleep(LINGER)
            while entry is not _STOP:
                self._write(entry)
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._flush()
            if entry is _STOP:
                return

    def _write(self, entry: object) -> None:
        if self._fields:
            entry = {**entry, **self._fields}  # type: ignore[dict-item]
        try:
            self._target().write(_ENCODE(entry) + "\n")
        except (OSError, ValueError) as exc:
            self._lost(exc)

    def _flush(self) -> None:
        try:
            self._target().flush()
        except (OSError, ValueError) as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        log.warning("decision log entry lost: %s", type(exc).__name__)
