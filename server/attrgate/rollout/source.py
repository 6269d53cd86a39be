"""Where a policy set comes from. Every source gives a compiled PolicySet through the one loader
(policy/compile.py), so the same files make the same revision from any of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from attrgate.config import S3_PREFIX, ConfigError, Settings
from attrgate.policy.compile import PolicySet
from attrgate.policy.loading import load_policies
from attrgate.rollout.status import SIGHUP, WATCH


class SourceUnavailable(ConfigError):
    """The source could not be read this time (S3 unreachable, denying access, missing the
    object, answering 5xx): nothing was said about the set itself. The serving set stays; the
    reloader reports it apart from a rejected set (reloads result "unavailable")."""


class Refused(ConfigError):
    """The source's bytes were read and refused for what they hold (a bad signature, a manifest
    that does not match, an invalid set): tied to `version`, so that the source, once told
    (`settle`), repeats the refusal while that version is there instead of reading it again."""

    def __init__(self, message: str, version: object) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class Loaded:
    """What one load gave: the set (None: unchanged since the version last settled, only when
    not forced) and the source's own name for what it read (an S3 ETag and signing time; None
    for a source that cannot tell versions apart)."""

    policy_set: PolicySet | None
    version: object = None


class PolicySource(Protocol):
    """`load` runs in a thread of its own (reloading._Load), never on the event loop, one at a
    time per source (reloading.SourceLoader); it commits nothing. What it read counts only once
    the reloader `settle`s it, on the event loop, after acting on it: a load that overran its
    time and was given up is never settled, so its version is read again next time."""

    @property
    def source(self) -> str:
        """What the operator gave (a path, s3://bucket/key), for logs and status."""
        ...

    @property
    def follows(self) -> str:
        """WATCH, POLL or SIGHUP: what besides SIGHUP reloads it."""
        ...

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> Loaded:
        """The set as it is now, or raise ConfigError in one line (Refused when tied to the
        version read; SourceUnavailable when nothing could be read). A set of None: the version
        last settled is still there (only when not `force`, and only for sources that can tell
        cheaply, as an S3 ETag can)."""
        ...

    def settle(self, version: object, refusal: str = "") -> None:
        """The reloader acted on the load that read `version`: installed it, found it the
        serving set (refusal ""), or refused it for what it holds (`refusal`, in one line)."""
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

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> Loaded:
        """SourceUnavailable when the path is missing (a folder deleted, not yet back): no
        set to judge, as with an S3 object that is missing."""
        try:
            return Loaded(load_policies(self._path, max_bytes, pause_gc))
        except ConfigError:
            if os.path.exists(self._path):
                raise
            raise SourceUnavailable(f"{self._path} is missing") from None

    def settle(self, version: object, refusal: str = "") -> None:
        """A folder is read whole every time: nothing to remember."""


def open_source(path: str, settings: Settings) -> PolicySource:
    """The source for `path` (--policies, --candidate-policies, --policies-fallback)."""
    if path.startswith(S3_PREFIX):
        from attrgate.rollout.bundle_source import BundleSource

        return BundleSource(path, settings)
    watch = settings.policy_watch is not False
    return LocalSource(path, watch)
