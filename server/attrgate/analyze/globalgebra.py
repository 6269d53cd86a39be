"""Globs as automata: intersection, containment and emptiness, decided exactly, with the
shortest witness.

A glob (`*`: any run of characters, newlines too; everything else literal and case-sensitive)
is a small NFA over its positions: a literal advances on its own character, a star loops on any
character and may be skipped. A union of globs is one NFA over (glob, position) pairs. Deny
entries match case-insensitively: their automaton reads `casefold(c)` for every character `c`
and compares it with the casefolded glob, which is exactly what the engine does with
`name.casefold()` (casefolding works character by character).

The alphabet is infinite, but an automaton only tells apart the characters its globs name. A
search therefore runs over a finite alphabet (`alphabet_for`): the characters the automata that
must accept name (for a folding one, also the characters that fold onto those), plus one fresh
character that no automaton of the question names. That loses no witness: take any witness and
replace each character outside that alphabet with the fresh one. An automaton that must accept
consumed such a character with a star (it names neither it nor anything it folds onto), and a
star consumes the fresh character as well. An automaton that must not accept (an excluded glob)
still does not: had it accepted the new word, it consumed the fresh character with a star, and
would have accepted the old word too. An observed automaton (`signatures`) must name its
characters in the alphabet, and then accepts the new word exactly when it accepted the old.
Domains (domains.py) add what they tell apart: white space, the characters of a pool id.
Every conclusion drawn from a witness is checked again on the concrete word by the engine.

`search` is a breadth-first walk of the product of the automata (the NFAs determinised on the
fly), so it finds a shortest word that every `require` automaton accepts and no `exclude`
automaton accepts, or proves there is none: the product has finitely many states. A state limit
turns pathological inputs into `Undecided`, and nothing is reported from an undecided question.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache, lru_cache
from typing import Any, Generic, Protocol, TypeVar

from attrgate.policy.globs import compile_glob

STAR = "*"
# Product states a single question may visit before it is left undecided.
DEFAULT_LIMIT = 200_000
_ASCII_FRESH = "xyzqjkwvbcdfghlmnprstaeiou0123456789"

State = Any  # each automaton's own hashable state; None is the dead state
T = TypeVar("T")


class Undecided(Exception):
    """A search passed its state limit; the question it answers is left open."""


class Automaton(Protocol):
    def start(self) -> State: ...

    def step(self, state: State, char: str) -> State: ...

    def accepts(self, state: State) -> bool: ...


_Positions = frozenset[tuple[int, int]]


class Globs:
    """The union of `patterns` as one NFA. `fold`: casefolded text against casefolded globs,
    as deny entries match."""

    __slots__ = ("_cache", "_literals", "_tokens", "folds", "patterns")

    def __init__(self, patterns: Iterable[str], fold: bool = False) -> None:
        self.patterns = tuple(dict.fromkeys(patterns))
        self.folds = fold
        self._tokens = tuple(p.casefold() if fold else p for p in self.patterns)
        self._literals = frozenset(c for token in self._tokens for c in token if c != STAR)
        self._cache: dict[tuple[_Positions, str], _Positions | None] = {}

    def literals(self) -> frozenset[str]:
        """The characters the globs name (casefolded for a folding automaton)."""
        return self._literals

    def start(self) -> _Positions | None:
        return self._close({(k, 0) for k in range(len(self._tokens))})

    def accepts(self, state: _Positions) -> bool:
        return any(i == len(self._tokens[k]) for k, i in state)

    def step(self, state: _Positions, char: str) -> _Positions | None:
        key = (state, char)
        if key in self._cache:
            return self._cache[key]
        current: _Positions | None = state
        for c in char.casefold() if self.folds else char:
            assert current is not None
            moved: set[tuple[int, int]] = set()
            for k, i in current:
                token = self._tokens[k]
                if i < len(token):
                    if token[i] == STAR:
                        moved.add((k, i))
                    elif token[i] == c:
                        moved.add((k, i + 1))
            current = self._close(moved)
            if current is None:
                break
        self._cache[key] = current
        return current

    def _close(self, positions: set[tuple[int, int]]) -> _Positions | None:
        """Add the positions reachable by skipping stars; None when there are none."""
        stack = list(positions)
        while stack:
            k, i = stack.pop()
            token = self._tokens[k]
            if i < len(token) and token[i] == STAR and (k, i + 1) not in positions:
                positions.add((k, i + 1))
                stack.append((k, i + 1))
        return frozenset(positions) if positions else None


class Difference:
    """Words `first` accepts and `second` does not, as one automaton (to exclude them)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Automaton, second: Automaton) -> None:
        self.first, self.second = first, second

    def start(self) -> tuple[State, State] | None:
        state = self.first.start()
        return None if state is None else (state, self.second.start())

    def step(self, state: tuple[State, State], char: str) -> tuple[State, State] | None:
        first = self.first.step(state[0], char)
        if first is None:
            return None
        return first, None if state[1] is None else self.second.step(state[1], char)

    def accepts(self, state: tuple[State, State]) -> bool:
        return self.first.accepts(state[0]) and not (
            state[1] is not None and self.second.accepts(state[1])
        )


def may_meet(first: str, second: str) -> bool:
    """A quick test that two globs may share a string (when False, they share none): their
    literal prefixes agree as far as both go, and so do their literal suffixes; a glob without
    a star must match the other."""
    if STAR not in first or STAR not in second:
        exact, other = (first, second) if STAR not in first else (second, first)
        return _matches(other, exact)
    head, tail = first.split(STAR, 1)[0], first.rsplit(STAR, 1)[1]
    other_head, other_tail = second.split(STAR, 1)[0], second.rsplit(STAR, 1)[1]
    return (head.startswith(other_head) or other_head.startswith(head)) and (
        tail.endswith(other_tail) or other_tail.endswith(tail)
    )


def _matches(pattern: str, text: str) -> bool:
    return compile_glob(pattern)(text)


class Neighbours(Generic[T]):
    """Items keyed by globs, looked up by a glob: the items whose glob `may_meet` it, found
    through the literal prefixes (one must start with the other) without trying them all."""

    def __init__(self, items: Iterable[tuple[str, T]]) -> None:
        self._by_prefix: dict[str, list[tuple[str, T]]] = {}
        for pattern, item in items:
            self._by_prefix.setdefault(pattern.split(STAR, 1)[0], []).append((pattern, item))
        self._prefixes = sorted(self._by_prefix)

    def near(self, pattern: str) -> Iterator[T]:
        head = pattern.split(STAR, 1)[0]
        groups = [self._by_prefix.get(head[:n], []) for n in range(len(head))]
        position = bisect.bisect_left(self._prefixes, head)
        while position < len(self._prefixes) and self._prefixes[position].startswith(head):
            groups.append(self._by_prefix[self._prefixes[position]])
            position += 1
        for group in groups:
            for other, item in group:
                if may_meet(pattern, other):
                    yield item


@lru_cache(maxsize=1 << 16)
def globs(patterns: Iterable[str], fold: bool = False) -> Globs:
    """One shared automaton per list of globs (`patterns` a tuple): its caches, and the
    searches' memos keyed by it, serve every policy that repeats the list."""
    return Globs(patterns, fold)


def run(automaton: Automaton, word: str) -> bool:
    """Whether `automaton` accepts `word`."""
    state = automaton.start()
    for char in word:
        if state is None:
            return False
        state = automaton.step(state, char)
    return state is not None and automaton.accepts(state)


def search(
    alphabet: Sequence[str],
    require: Sequence[Automaton],
    exclude: Sequence[Automaton] = (),
    limit: int = DEFAULT_LIMIT,
) -> str | None:
    """A shortest word over `alphabet` that every `require` automaton accepts and no `exclude`
    automaton accepts (earliest in alphabet order among the shortest), or None when none
    exists. Raises Undecided past `limit` product states."""
    for node, word in _walk(alphabet, require, exclude, limit):
        if _accepting(node, require, exclude):
            return word
    return None


def signatures(
    alphabet: Sequence[str],
    require: Sequence[Automaton],
    members: Sequence[Automaton],
    limit: int = DEFAULT_LIMIT,
) -> dict[frozenset[int], str]:
    """For every set of `members` that accept together some word all `require` automata accept
    (the members accepting it, exactly), a shortest such word."""
    found: dict[frozenset[int], str] = {}
    n = len(require)
    for node, word in _walk(alphabet, require, members, limit):
        if all(a.accepts(s) for a, s in zip(require, node[:n], strict=True)):
            signature = frozenset(
                i
                for i, (m, s) in enumerate(zip(members, node[n:], strict=True))
                if s is not None and m.accepts(s)
            )
            found.setdefault(signature, word)
    return found


def _accepting(
    node: tuple[State, ...], require: Sequence[Automaton], exclude: Sequence[Automaton]
) -> bool:
    n = len(require)
    return all(a.accepts(s) for a, s in zip(require, node[:n], strict=True)) and not any(
        s is not None and a.accepts(s) for a, s in zip(exclude, node[n:], strict=True)
    )


def _walk(
    alphabet: Sequence[str],
    require: Sequence[Automaton],
    others: Sequence[Automaton],
    limit: int,
) -> Iterable[tuple[tuple[State, ...], str]]:
    """Breadth-first over the product: every reachable node once, with a shortest word reaching
    it. `require` automata that die prune the walk; the others may die and stay dead."""
    automata = (*require, *others)
    n = len(require)
    start = tuple(a.start() for a in automata)
    if any(s is None for s in start[:n]):
        return
    parents: dict[tuple[State, ...], tuple[tuple[State, ...], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        yield node, _word(parents, node)
        for char in alphabet:
            moved: list[State] = []
            for position, (automaton, state) in enumerate(zip(automata, node, strict=True)):
                after = None if state is None else automaton.step(state, char)
                if after is None and position < n:
                    break
                moved.append(after)
            else:
                key = tuple(moved)
                if key not in parents:
                    if len(parents) >= limit:
                        raise Undecided(f"more than {limit} states")
                    parents[key] = (node, char)
                    queue.append(key)


def _word(
    parents: dict[tuple[State, ...], tuple[tuple[State, ...], str] | None],
    node: tuple[State, ...],
) -> str:
    chars: list[str] = []
    link = parents[node]
    while link is not None:
        node, char = link
        chars.append(char)
        link = parents[node]
    return "".join(reversed(chars))


# --- alphabets (see the module's docstring) ----------------------------------------------------


def fresh_char(used: Iterable[str], candidates: str = _ASCII_FRESH) -> str:
    """A character not in `used`: ASCII letters and digits first."""
    taken = set(used)
    for char in candidates:
        if char not in taken:
            return char
    code = 0x100
    while chr(code) in taken or not chr(code).isalpha() or chr(code).casefold() != chr(code):
        code += 1
    return chr(code)


def preferred(chars: Iterable[str]) -> list[str]:
    """`chars` in the order witnesses should use them: lowercase ASCII letters, digits, plain
    punctuation, uppercase, other printable ASCII, the rest, white space and controls last."""

    def rank(c: str) -> tuple[int, str]:
        if "a" <= c <= "z":
            return 0, c
        if c.isascii() and c.isdigit():
            return 1, c
        if c in "_-:.":
            return 2, c
        if "A" <= c <= "Z":
            return 3, c
        if c.isascii() and c.isprintable() and c != " ":
            return 4, c
        if c.isprintable() and not c.isspace():
            return 5, c
        return 6, c

    return sorted(set(chars), key=rank)


def folding_onto(chars: Iterable[str]) -> frozenset[str]:
    """The characters whose casefold differs from them and contains one of `chars` (`R` for
    `r`, `ß` for `s`, the Kelvin sign for `k`): the ones a folding automaton tells apart beyond
    its own characters."""
    return _folding_onto(frozenset(chars))


@cache
def _folding_onto(wanted: frozenset[str]) -> frozenset[str]:
    return frozenset(c for c, folded in _changed_by_casefold() if wanted.intersection(folded))


def needed(automaton: Automaton) -> frozenset[str]:
    """The characters a search must try for `automaton` to accept: those it names and, when it
    folds, those that fold onto them. (Other characters it consumes with a star, as it does
    the fresh character.)"""
    if isinstance(automaton, Globs):
        named = automaton.literals()
        return named | folding_onto(named) if automaton.folds else named
    if isinstance(automaton, Difference):
        return needed(automaton.first)
    return frozenset()


def mentioned(automaton: Automaton) -> frozenset[str]:
    """Every character `automaton` names: the fresh character must be none of them."""
    if isinstance(automaton, Globs):
        return automaton.literals()
    if isinstance(automaton, Difference):
        return mentioned(automaton.first) | mentioned(automaton.second)
    return frozenset()


def alphabet_for(
    require: Iterable[Automaton],
    others: Iterable[Automaton] = (),
    keep: Callable[[str], bool] = lambda char: True,
    extra: Iterable[str] = (),
    fresh_from: str = _ASCII_FRESH,
) -> list[str]:
    """The alphabet of a search: what the `require` automata need (those `keep` takes), `extra`
    characters, and one fresh character none of the automata names. Complete for any question
    whose other automata only exclude or observe (see the module's docstring)."""
    require = list(require)
    chars = {c for a in require for c in needed(a) if keep(c)} | set(extra)
    named = set(chars).union(*(mentioned(a) for a in (*require, *others)))
    return [*preferred(chars), fresh_char(named, fresh_from)]


@cache
def _changed_by_casefold() -> tuple[tuple[str, str], ...]:
    # Casefolding changes characters only below U+20000 (about 1,500 of them; a test checks).
    return tuple((c, c.casefold()) for c in map(chr, range(0x20000)) if c.casefold() != c)


# --- plain globs over all strings (what the property tests check against brute force) ---------


def intersection(first: str, second: str) -> str | None:
    """A shortest string both globs match, or None."""
    a, b = Globs([first]), Globs([second])
    return search(alphabet_for([a, b]), [a, b])


def difference(inner: Sequence[str], outer: Sequence[str]) -> str | None:
    """A shortest string some glob of `inner` matches and no glob of `outer` does, or None."""
    a, b = Globs(inner), Globs(outer)
    return search(alphabet_for([a], [b]), [a], [b])


def contains(outer: Sequence[str], inner: Sequence[str]) -> bool:
    """Whether every string some glob of `inner` matches is matched by a glob of `outer`."""
    return difference(inner, outer) is None
