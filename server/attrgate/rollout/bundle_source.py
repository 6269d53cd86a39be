"""A signed policy bundle in S3 as a policy source (placeholder until bundles land)."""

from __future__ import annotations

from attrgate.config import ConfigError, Settings
from attrgate.policy.compile import PolicySet
from attrgate.rollout.status import POLL


class BundleSource:
    follows = POLL

    def __init__(self, url: str, settings: Settings) -> None:
        raise ConfigError(f"{url}: S3 policy bundles are not built yet")

    @property
    def source(self) -> str:
        return ""

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> PolicySet | None:
        return None
