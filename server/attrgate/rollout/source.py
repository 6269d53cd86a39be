"""Where a policy set comes from. Every source gives a compiled PolicySet through the one loader
(policy/compile.py), so the same files make the same revision from any of them."""

from __future__ import annotations

import os
from typing import Protocol

from attrgate.config import ConfigError, Settings
from attrgate.policy.compile import PolicySet
from attrgate.rollout.status import SIGHUP, WATCH

S3_PREFIX = "s3://"


class SourceUnavailable(ConfigError):
    """The source could not be read this time (S3 unreachable, denying access, missing the
    object, answering 5xx): nothing was said about the set itself. The serving set stays; the
    reloader reports it apart from a rejected set (reloads result "unavailable")."""


class PolicySource(Protocol):
    """`load` runs in a thread of its own (reloading._Load), never on the event loop."""

    @property
    def source(self) -> str:
        """What the operator gave (a path, s3://bucket/key), for logs and status."""
        ...

    @property
    def follows(self) -> str:
        """WATCH, POLL or SIGHUP: what besides SIGHUP reloads it."""
        ...

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> PolicySet | None:
        """The set as it is now, or raise ConfigError in one line. None: unchanged since the
        last load that returned a set (only when not `force`, and only for sources that can tell
        cheaply, as an S3 ETag can)."""
        ...


class LocalSource:
    """A policy file or folder, read as one consistent snapshot (policy/snapshot.py)."""

    def __init__(self, path: str, watch: bool) -> None:
        self._path = path
        self.follows = WATCH if watch else SIGHUP

    @property
    def source(self) -> str:
        return self._path

    @property
    def is_folder(self) -> bool:
        return os.path.isdir(self._path)

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> PolicySet | None:
        """SourceUnavailable when the path is missing (a folder deleted, not yet back): no
        set to judge, as with an S3 object that is missing."""
        from attrgate.reloading import load_policies

        try:
            return load_policies(self._path, max_bytes, pause_gc)
        except ConfigError:
            if os.path.exists(self._path):
                raise
            raise SourceUnavailable(f"{self._path} is missing") from None


def open_source(path: str, settings: Settings) -> PolicySource:
    """The source for `path` (--policies, --candidate-policies, --policies-fallback)."""
    if path.startswith(S3_PREFIX):
        from attrgate.rollout.bundle_source import BundleSource

        return BundleSource(path, settings)
    watch = settings.policy_watch is not False
    return LocalSource(path, watch)
