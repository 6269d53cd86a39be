"""Fail a test instead of letting it hang: for code whose regression would block or spin."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise AssertionError in the main thread after `seconds`. The alarm interrupts a blocking
    system call (a FIFO's open) and Python's `re` while it backtracks (it checks for signals)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise AssertionError(f"still running after {seconds}s: {what}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
