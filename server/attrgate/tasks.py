"""Cancelling tasks so that they end.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives as the future it awaits
completes (CPython gh-86296, fixed in 3.12): a task cancelled once may carry on, and a stop that
cancels it once and then awaits it waits forever. Found as a drain that hung after its last call
when the SMS store's probe answered just as it was cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_EVERY = 0.1  # seconds: how long a task may take to end before it is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task, again while one is still running, until all have ended. Their
    outcomes are taken (no "exception was never retrieved" at exit) and not raised."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in tasks:
        if not task.cancelled():
            task.exception()
