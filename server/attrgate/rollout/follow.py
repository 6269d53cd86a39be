"""Following a policy source while serving: reload when it changes."""

from __future__ import annotations

from attrgate.config import DEFAULT_POLL, Settings
from attrgate.reloading import PolicyReloader
from attrgate.rollout.status import POLL, WATCH


async def follow_changes(reloader: PolicyReloader, settings: Settings) -> None:
    """Runs until cancelled: a watched source reloads on change, a polled one on a new version;
    a source followed by SIGHUP only returns at once."""
    if reloader.source.follows == WATCH:
        from attrgate.rollout.watch import watch_and_reload

        await watch_and_reload(reloader, settings.policy_debounce)
    elif reloader.source.follows == POLL:
        from attrgate.rollout.poll import poll_and_reload

        await poll_and_reload(reloader, settings.policy_poll or DEFAULT_POLL)
