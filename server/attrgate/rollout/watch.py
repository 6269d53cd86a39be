"""Reloading a local policy file or folder when it changes (placeholder until the watcher lands)."""

from __future__ import annotations

from attrgate.reloading import PolicyReloader


async def watch_and_reload(reloader: PolicyReloader, debounce: float) -> None:
    return
