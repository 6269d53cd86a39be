"""A CognitoQuota document compiled for the request path: plain numbers, and which share a
caller belongs to (memoised, bounded: callers are whatever names clients present)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from attrgate.policy.globs import GlobIndex
from attrgate.policy.model import OTHERS, CognitoQuota, QuotaClass, wait_ms
from attrgate.quota.fairshare import ClassSpec

SHARE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    spec: ClassSpec
    max_in_flight: int | None  # None: the server's default (half of --executor-threads)


@dataclass(frozen=True, slots=True)
class PerUser:
    rate: float
    burst: int


class CompiledQuota:
    """Immutable; a reload compiles a new one. `shares[-1]` is always `others`."""

    def __init__(self, document: CognitoQuota, file: str) -> None:
        spec = document.spec
        self.name = document.metadata.name
        self.file = file
        self.rate = float(spec.rate)
        self.burst = spec.burst if spec.burst is not None else math.ceil(spec.rate)
        self.max_wait = wait_ms(spec.queue.max_wait) / 1000
        self.per_user = (
            PerUser(float(spec.per_user.rate), spec.per_user.burst) if spec.per_user else None
        )
        classes: list[tuple[str, QuotaClass]] = [
            (share.name or share.callers[0], share) for share in spec.shares
        ]
        classes.append((OTHERS, spec.others))
        self.shares = tuple(
            Share(
                name,
                ClassSpec(
                    weight=float(c.weight),
                    floor=float(c.reserved) * self.rate,
                    ceiling=float(c.max_rate) if c.max_rate is not None else math.inf,
                ),
                c.max_in_flight,
            )
            for name, c in classes
        )
        self.specs = tuple(s.spec for s in self.shares)
        # Replicas whose shares differ (a reload under way) count in each other's leases, but
        # not in each other's fairness.
        self.signature = hashlib.sha256(
            "\0".join(s.name for s in self.shares).encode()
        ).hexdigest()[:16]
        index: GlobIndex[int] = GlobIndex()
        for position, share in enumerate(spec.shares):
            for caller in share.callers:
                index.add(caller, position)
        self._index = index
        others = len(self.shares) - 1
        self.share_of: Callable[[str], int] = lru_cache(SHARE_CACHE_SIZE)(
            lambda caller: min(index.match(caller)[0], default=others)
        )

    def same_shares(self, other: CompiledQuota) -> bool:
        """Whether `other` has the same shares in the same order (the governor keeps its
        state across a reload that changed only numbers)."""
        return [s.name for s in self.shares] == [s.name for s in other.shares]
