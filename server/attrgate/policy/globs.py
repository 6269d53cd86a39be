"""Glob matching compiled once: exact names by dict, globs grouped by their literal prefix.

A lookup costs a dict probe per distinct prefix length plus one glob try per distinct glob whose
literal prefix the text starts with, so thousands of unrelated globs cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def is_glob(pattern: str) -> bool:
    return "*" in pattern


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A test for `pattern`: `*` matches any run of characters (also none, newlines too);
    everything else is literal, case-sensitive.

    Not a regex: Python's `re` backtracks, and `*a*a*a*a*b` against a long caller (which client
    certificates choose) took seconds per decision. Here the literal pieces between the stars are
    found left to right with `str.find`, each from where the last one ended; the leftmost fit is
    always right because a star absorbs whatever lies between. No backtracking: one scan of the
    text per piece at most. The usual shapes (`prefix*`, `*suffix`) are one string method call,
    as fast as `re` on short names (RE2's Python binding costs 10-20x more per call there)."""
    pieces = pattern.split("*")
    first, last = pieces[0], pieces[-1]
    middle = tuple(p for p in pieces[1:-1] if p)
    if len(pieces) == 1:
        return pattern.__eq__
    if not middle and not last:
        return lambda text: text.startswith(first)
    if not middle and not first:
        return lambda text: text.endswith(last)
    shortest = len(first) + len(last)

    def matches(text: str) -> bool:
        if len(text) < shortest or not text.startswith(first) or not text.endswith(last):
            return False
        position, end = len(first), len(text) - len(last)
        for piece in middle:
            found = text.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
        return True

    return matches


class _Glob(Generic[T]):
    __slots__ = ("items", "matches", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.matches = compile_glob(pattern)
        self.items: list[T] = []


class GlobIndex(Generic[T]):
    def __init__(self, entries: Iterable[tuple[str, T]] = ()) -> None:
        self._exact: dict[str, list[T]] = {}
        self._by_prefix: dict[str, dict[str, _Glob[T]]] = {}
        self._prefix_lengths: list[int] = []
        for pattern, item in entries:
            self.add(pattern, item)

    def add(self, pattern: str, item: T) -> None:
        if not is_glob(pattern):
            self._exact.setdefault(pattern, []).append(item)
            return
        prefix = pattern.split("*", 1)[0]
        group = self._by_prefix.setdefault(prefix, {})
        if pattern not in group:
            group[pattern] = _Glob(pattern)
        group[pattern].items.append(item)
        if len(prefix) not in self._prefix_lengths:
            self._prefix_lengths.append(len(prefix))
            self._prefix_lengths.sort()

    def exact(self, text: str) -> list[T]:
        """Items whose pattern is exactly `text` (no glob)."""
        return self._exact.get(text, [])

    def match(self, text: str) -> tuple[list[T], int]:
        """Items whose pattern matches `text` (exact patterns first), and how many distinct globs
        had to be tried: the candidates examined."""
        found = list(self._exact.get(text, ()))
        tried = 0
        for glob in self._candidates(text):
            tried += 1
            if glob.matches(text):
                found.extend(glob.items)
        return found, tried

    def pattern_of(self, text: str) -> str | None:
        """`text` itself when an exact pattern names it, else the matching glob with the
        longest literal prefix (`profile-*` before `*`), else None: a name drawn from the
        patterns only."""
        if text in self._exact:
            return text
        found = self._candidates(text, longest_first=True)
        return next((g.pattern for g in found if g.matches(text)), None)

    def _candidates(self, text: str, longest_first: bool = False) -> Iterator[_Glob[T]]:
        """The globs whose literal prefix `text` starts with."""
        lengths = reversed(self._prefix_lengths) if longest_first else self._prefix_lengths
        for length in lengths:
            if length > len(text):
                if longest_first:
                    continue
                break
            group = self._by_prefix.get(text[:length])
            if group is not None:
                yield from group.values()


class PoolMatcher:
    """A policy's userPools: exact ids by set, then globs."""

    __slots__ = ("_exact", "_globs", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in patterns if not is_glob(p))
        self._globs = tuple((p, compile_glob(p)) for p in dict.fromkeys(patterns) if is_glob(p))

    def __call__(self, pool_id: str) -> bool:
        return pool_id in self._exact or any(g(pool_id) for _, g in self._globs)

    def pattern_of(self, pool_id: str) -> str | None:
        """The pattern that matches `pool_id`: the id itself when listed exactly, else the
        first glob that matches it."""
        if pool_id in self._exact:
            return pool_id
        return next((p for p, g in self._globs if g(pool_id)), None)
