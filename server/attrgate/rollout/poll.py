"""Polling an S3 policy bundle for new versions (placeholder until bundles land)."""

from __future__ import annotations

from attrgate.reloading import PolicyReloader


async def poll_and_reload(reloader: PolicyReloader, every: float) -> None:
    return
