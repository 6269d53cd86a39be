"""Turn validated policy documents into plain, indexed structures the engine evaluates.

Compile once, evaluate many: no pydantic model, regex compilation or scan over all policies is left
for the request path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from attrgate.guards.sms import GuardSet
from attrgate.policy.constraints import CompiledAllow
from attrgate.policy.globs import GlobIndex, PoolMatcher
from attrgate.policy.load import LoadedPolicy, LoadResult, load_policy_set, load_snapshot
from attrgate.policy.model import VERIFIED_FLAGS, AttributePolicy, SmsGuard
from attrgate.policy.model import CognitoQuota as CognitoQuotaDocument
from attrgate.policy.patterns import pattern_scope
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES, Snapshot
from attrgate.quota.compiled import CompiledQuota

APPLICABLE_CACHE_SIZE = 4096


class CompiledPolicy:
    __slots__ = (
        "_allow",
        "_callers",
        "_deny",
        "deny_patterns",
        "enforce",
        "file",
        "metadata_keys",
        "name",
        "pools",
    )

    def __init__(self, policy: AttributePolicy, file: str) -> None:
        spec = policy.spec
        self.name = policy.metadata.name
        self.file = file
        self.enforce = spec.mode == "enforce"
        self.pools = PoolMatcher(spec.user_pools)
        self._callers: GlobIndex[None] = GlobIndex((c, None) for c in spec.callers)
        self._allow: GlobIndex[CompiledAllow] = GlobIndex(
            (entry.attribute, CompiledAllow(entry, index)) for index, entry in enumerate(spec.allow)
        )
        # Denies match case-insensitively: a deny of custom:role must also stop custom:Role
        # (widening a deny fails closed; allows stay exact).
        self._deny: GlobIndex[str] = GlobIndex(
            (entry.attribute.casefold(), f"deny[{index}]") for index, entry in enumerate(spec.deny)
        )
        self.deny_patterns = {f"deny[{i}]": entry.attribute for i, entry in enumerate(spec.deny)}
        self.metadata_keys = frozenset(spec.client_metadata.allow_keys)

    def caller_pattern(self, caller: str) -> str | None:
        """The callers entry that matches `caller` (for explanations; the request path asks the
        set's index)."""
        return self._callers.pattern_of(caller)

    def all_allows_for(self, name: str) -> list[CompiledAllow]:
        """Every allow entry whose name or glob matches `name`, verified flags included (for
        explanations: `allows_for` is what decides)."""
        return self._allow.match(name)[0]

    def allows_for(self, name: str) -> tuple[list[CompiledAllow], bool]:
        """Allow entries matching `name`, and whether a glob matched a verified flag (which only
        an exact entry may grant)."""
        entries, _ = self._allow.match(name)
        # Email_Verified is no verified flag to Cognito, but a glob must not grant it either.
        if name.casefold() not in VERIFIED_FLAGS:
            return entries, False
        exact = self._allow.exact(name)
        return exact, len(exact) != len(entries)

    def denies(self, name: str) -> list[str]:
        return self._deny.match(name.casefold())[0]


@dataclass(frozen=True, slots=True)
class Applicable:
    """The policies that apply to one (caller, pool), split once for every request of the pair."""

    enforce: tuple[CompiledPolicy, ...]
    audit: tuple[CompiledPolicy, ...]
    names: tuple[str, ...]
    examined: int  # candidate policies tested to find them: the cost of the lookup


class PolicySet:
    """A compiled, immutable policy set. A reload builds a new one, so its caches never go stale."""

    def __init__(self, loaded: Sequence[LoadedPolicy], revision: str) -> None:
        self.revision = revision
        documents = [
            (item.document, item.file)
            for item in loaded
            if isinstance(item.document, AttributePolicy)
        ]
        self.policies = tuple(CompiledPolicy(document, file) for document, file in documents)
        self.guards = GuardSet([i.document for i in loaded if isinstance(i.document, SmsGuard)])
        # At most one (the loader refuses a second).
        self.quota: CompiledQuota | None = next(
            (
                CompiledQuota(i.document, i.file)
                for i in loaded
                if isinstance(i.document, CognitoQuotaDocument)
            ),
            None,
        )
        self._by_caller: GlobIndex[int] = GlobIndex()
        for position, (document, _) in enumerate(documents):
            for caller in dict.fromkeys(document.spec.callers):
                self._by_caller.add(caller, position)
        self.applicable: Callable[[str, str], Applicable] = lru_cache(APPLICABLE_CACHE_SIZE)(
            self.lookup
        )
        # Metrics label every RPC with it: memoised as `applicable` is.
        self.caller_label: Callable[[str], str | None] = lru_cache(APPLICABLE_CACHE_SIZE)(
            self.label_of
        )

    @property
    def size(self) -> int:
        """Documents in the set, guards included (as `attrgate check` counts them)."""
        return len(self.policies) + len(self.guards.guards) + (self.quota is not None)

    def label_of(self, caller: str) -> str | None:
        """A name for `caller` drawn from the policies (so bounded by them, whatever callers
        present): the caller when a policy names it exactly, else the first `callers` glob that
        matches it, else None. Uncached; `caller_label` is the memoised form."""
        return self._by_caller.pattern_of(caller)

    def lookup(self, caller: str, user_pool_id: str) -> Applicable:
        """The policies whose callers match `caller` and whose userPools match the pool, in load
        order. Callers are indexed; only the policies naming the caller are tested for the pool.
        Uncached; `applicable` is the memoised form the request path uses."""
        positions, _ = self._by_caller.match(caller)
        candidates = [self.policies[p] for p in sorted(set(positions))]
        found = [p for p in candidates if p.pools(user_pool_id)]
        return Applicable(
            enforce=tuple(p for p in found if p.enforce),
            audit=tuple(p for p in found if not p.enforce),
            names=tuple(p.name for p in found),
            examined=len(candidates),
        )


def compile_policy_set(loaded: Sequence[LoadedPolicy], revision: str) -> PolicySet:
    return PolicySet(loaded, revision)


def load_and_compile(
    path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[LoadResult, PolicySet | None]:
    """One snapshot of the set at `path`, loaded and compiled as `serve` does (its patterns
    compiled once, for validation and compilation alike, within one budget); the compiled set
    is None when the load found errors. Serve, explain and analyze all load through this."""
    with pattern_scope():
        return _compiled(load_policy_set(path, max_bytes))


def compile_snapshot(snapshot: Snapshot, root: str) -> tuple[LoadResult, PolicySet | None]:
    """load_and_compile for files read elsewhere (a policy bundle's)."""
    with pattern_scope():
        return _compiled(load_snapshot(snapshot, root))


def _compiled(result: LoadResult) -> tuple[LoadResult, PolicySet | None]:
    if not result.ok:
        return result, None
    return result, compile_policy_set(result.policies, result.revision)
