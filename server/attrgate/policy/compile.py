"""Turn validated policy documents into plain, indexed structures the engine evaluates.

Compile once, evaluate many: no pydantic model, regex compilation or scan over all policies is left
for the request path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import regex

from attrgate.domain import ViolationReason
from attrgate.policy.globs import GlobIndex
from attrgate.policy.load import LoadedPolicy
from attrgate.policy.model import VERIFIED_FLAGS, AllowEntry, AttributePolicy

# A policy pattern runs on caller-supplied values: bound its time so a pathological pattern
# denies (fail closed) instead of stalling the server.
PATTERN_TIMEOUT_SECONDS = 0.05
APPLICABLE_CACHE_SIZE = 4096

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(?:\.[^@\s.]+)+")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_INTEGER = re.compile(r"[-+]?[0-9]+")


def _is_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in value


FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "email": lambda v: _EMAIL.fullmatch(v) is not None,
    "e164": lambda v: _E164.fullmatch(v) is not None,
    "boolean": lambda v: v in ("true", "false"),
    "integer": lambda v: _INTEGER.fullmatch(v) is not None,
    "url": _is_url,
}


@dataclass(frozen=True, slots=True)
class Failure:
    reason: ViolationReason
    message: str


class CompiledAllow:
    """One allow entry with its constraints ready to run."""

    __slots__ = (
        "allow_empty",
        "enum",
        "format",
        "label",
        "max_length",
        "min_length",
        "pattern",
        "pattern_text",
    )

    def __init__(self, entry: AllowEntry, index: int) -> None:
        self.label = f"allow[{index}]"
        self.allow_empty = entry.allow_empty
        self.max_length = entry.max_length
        self.min_length = entry.min_length
        self.enum = frozenset(entry.enum) if entry.enum is not None else None
        self.format = entry.format
        self.pattern_text = entry.pattern
        self.pattern = regex.compile(entry.pattern) if entry.pattern is not None else None

    def check(self, value: str) -> list[Failure]:
        """Every constraint `value` fails; empty when the entry accepts it."""
        if not value:
            if self.allow_empty:
                return []
            return [
                Failure(
                    ViolationReason.EMPTY_VALUE_NOT_ALLOWED,
                    "an empty value deletes the attribute; the entry does not set allowEmpty",
                )
            ]
        failures: list[Failure] = []
        if self.max_length is not None and len(value) > self.max_length:
            failures.append(
                Failure(ViolationReason.MAX_LENGTH, f"longer than maxLength {self.max_length}")
            )
        if self.min_length is not None and len(value) < self.min_length:
            failures.append(
                Failure(ViolationReason.MIN_LENGTH, f"shorter than minLength {self.min_length}")
            )
        if self.enum is not None and value not in self.enum:
            failures.append(Failure(ViolationReason.ENUM, "not one of the allowed values"))
        if self.format is not None and not FORMAT_CHECKS[self.format](value):
            failures.append(Failure(ViolationReason.FORMAT, f"not a valid {self.format}"))
        if self.pattern is not None:
            try:
                matched = self.pattern.fullmatch(value, timeout=PATTERN_TIMEOUT_SECONDS)
            except TimeoutError:
                failures.append(
                    Failure(ViolationReason.PATTERN_TIMEOUT, "pattern took too long; denied")
                )
            else:
                if matched is None:
                    failures.append(
                        Failure(ViolationReason.PATTERN, f"does not match {self.pattern_text!r}")
                    )
        return failures


class CompiledPolicy:
    __slots__ = ("_allow", "_deny", "enforce", "file", "metadata_keys", "name")

    def __init__(self, policy: AttributePolicy, file: str) -> None:
        spec = policy.spec
        self.name = policy.metadata.name
        self.file = file
        self.enforce = spec.mode == "enforce"
        self._allow: GlobIndex[CompiledAllow] = GlobIndex(
            (entry.attribute, CompiledAllow(entry, index)) for index, entry in enumerate(spec.allow)
        )
        self._deny: GlobIndex[str] = GlobIndex(
            (entry.attribute, f"deny[{index}]") for index, entry in enumerate(spec.deny)
        )
        self.metadata_keys = frozenset(spec.client_metadata.allow_keys)

    def allows_for(self, name: str) -> tuple[list[CompiledAllow], bool]:
        """Allow entries matching `name`, and whether a glob matched a verified flag (which only
        an exact entry may grant)."""
        entries, _ = self._allow.match(name)
        if name not in VERIFIED_FLAGS:
            return entries, False
        exact = self._allow.exact(name)
        return exact, len(exact) != len(entries)

    def denies(self, name: str) -> list[str]:
        return self._deny.match(name)[0]


@dataclass(frozen=True, slots=True)
class Applicable:
    policies: tuple[CompiledPolicy, ...]
    examined: int  # glob patterns tried to find them: the cost of the lookup


class PolicySet:
    """A compiled, immutable policy set. A reload builds a new one, so its caches never go stale."""

    def __init__(self, loaded: Sequence[LoadedPolicy], revision: str) -> None:
        self.revision = revision
        self.policies = tuple(
            CompiledPolicy(item.document, item.file)
            for item in loaded
            if isinstance(item.document, AttributePolicy)
        )
        self._by_caller: GlobIndex[int] = GlobIndex()
        self._by_pool: GlobIndex[int] = GlobIndex()
        for position, item in enumerate(
            i.document for i in loaded if isinstance(i.document, AttributePolicy)
        ):
            for caller in dict.fromkeys(item.spec.callers):
                self._by_caller.add(caller, position)
            for pool in dict.fromkeys(item.spec.user_pools):
                self._by_pool.add(pool, position)
        self.applicable: Callable[[str, str], Applicable] = lru_cache(APPLICABLE_CACHE_SIZE)(
            self.lookup
        )

    def lookup(self, caller: str, user_pool_id: str) -> Applicable:
        """The policies whose callers match `caller` and whose userPools match the pool, in load
        order. Uncached; `applicable` is the memoised form the request path uses."""
        by_caller, tried_callers = self._by_caller.match(caller)
        if not by_caller:
            return Applicable((), tried_callers)
        by_pool, tried_pools = self._by_pool.match(user_pool_id)
        positions = sorted(set(by_caller).intersection(by_pool))
        return Applicable(tuple(self.policies[p] for p in positions), tried_callers + tried_pools)


def compile_policy_set(loaded: Sequence[LoadedPolicy], revision: str) -> PolicySet:
    return PolicySet(loaded, revision)
