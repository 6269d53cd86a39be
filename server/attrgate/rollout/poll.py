"""Polling an S3 policy bundle for new versions: every --policy-poll seconds, a conditional
GET (If-None-Match on the last ETag) through the set's reloader, which swaps a new valid bundle
in whole, and keeps the serving set through a refused bundle or an S3 outage."""

from __future__ import annotations

import asyncio
import random

from attrgate.reloading import PolicyReloader

JITTER = 0.1  # replicas started together drift apart instead of polling in step


async def poll_and_reload(reloader: PolicyReloader, every: float) -> None:
    while True:
        await asyncio.sleep(every * random.uniform(1 - JITTER, 1 + JITTER))
        await reloader.reload(force=False)
