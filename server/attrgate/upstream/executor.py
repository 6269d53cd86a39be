"""The threads blocking Cognito calls run in, with a bound on the calls running or waiting.

A slot is taken when a job is submitted and given back when the job's future is done, however it
ends: run to the end, raised, or cancelled while it waited for a thread (a caller that gave up).
Past the bound, `submit` answers None at once rather than queue without bound behind a slow
Cognito.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class BoundedExecutor:
    def __init__(self, threads: int, max_pending: int, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., T], /, *args: Any) -> Future[T] | None:
        with self._lock:
            if self._pending >= self.max_pending:
                return None
            self._pending += 1
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._free()
            raise
        future.add_done_callback(self._free)
        return future

    def _free(self, _: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self, wait: bool = False) -> None:
        """Cancel the jobs still waiting for a thread (never started); running ones finish
        (`wait`: and are waited for)."""
        self._executor.shutdown(wait=wait, cancel_futures=True)
