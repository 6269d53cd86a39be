"""What a valid request can hold in each place a policy speaks about, as automata, and the
alphabets searches over them run on.

- Attribute names: what validate.py lets through: Cognito's name characters, no leading or
  trailing white space, at most 32 characters, and not reserved (`sub`, `identities`,
  `cognito:*`, in any case).
- User pool ids: Cognito's shape `[\\w-]+_[0-9a-zA-Z]+` (ASCII), at most 55 characters.
- Callers: any identity of 1 to 512 characters (mTLS names may hold anything; callers naming
  themselves in the dev header are printable ASCII, which witnesses prefer).

Length bounds are not states of the automata: searches find shortest words, so a question has
a witness within the bound exactly when its shortest witness is within it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrgate.analyze.globalgebra import (
    Automaton,
    Globs,
    folding_onto,
    fresh_char,
    preferred,
    run,
    search,
)
from attrgate.identity import CALLER_MAX
from attrgate.policy.model import VERIFIED_FLAGS
from attrgate.validate import (
    _ATTRIBUTE_NAME,
    ATTRIBUTE_NAME_MAX,
    POOL_ID_MAX,
    RESERVED_NAMES,
    RESERVED_PREFIX,
)

_WHITE_SPACE = " \t\n\r"  # the only white space Cognito's name characters include
_POOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class NameDomain:
    """Attribute names validate.py accepts, but for their length and reserved names (see
    `Names.find`). States: 0 empty, 1 ends in a name character, 2 ends in white space."""

    def __init__(self) -> None:
        self._valid: dict[str, bool] = {}

    def valid_char(self, char: str) -> bool:
        found = self._valid.get(char)
        if found is None:
            found = self._valid[char] = _ATTRIBUTE_NAME.fullmatch(char) is not None
        return found

    def start(self) -> int:
        return 0

    def step(self, state: int, char: str) -> int | None:
        if not self.valid_char(char):
            return None
        if char in _WHITE_SPACE:
            return None if state == 0 else 2
        return 1

    def accepts(self, state: int) -> bool:
        return state == 1


class PoolDomain:
    """`[\\w-]+_[0-9a-zA-Z]+` as a DFA: 0 empty; 1 no usable separator yet; 2 just after a
    `_` that follows at least one character; 3 alphanumerics after such a `_` (accepting)."""

    def start(self) -> int:
        return 0

    def step(self, state: int, char: str) -> int | None:
        if char not in _POOL_CHARS:
            return None
        if char == "-":
            return 1
        if char == "_":
            return 1 if state == 0 else 2
        return 3 if state in (2, 3) else 1

    def accepts(self, state: int) -> bool:
        return state == 3


class CallerDomain:
    """Any non-empty text."""

    def start(self) -> int:
        return 0

    def step(self, state: int, char: str) -> int:
        return 1

    def accepts(self, state: int) -> bool:
        return state == 1


RESERVED = (*sorted(RESERVED_NAMES), RESERVED_PREFIX + "*")


class Names:
    """Searches over valid attribute names, on one alphabet for a whole policy set: every
    character its allow globs name, its deny globs name once casefolded, the reserved names
    and verified flags name, every character that casefolds onto one of those, white space,
    and a fresh character."""

    def __init__(self, allow_globs: Iterable[str], deny_globs: Iterable[str]) -> None:
        self.domain = NameDomain()
        self.reserved = Globs(RESERVED, fold=True)
        self.flags = Globs(sorted(VERIFIED_FLAGS), fold=True)
        folded = set(Globs(deny_globs, fold=True).literals())
        folded |= self.reserved.literals() | self.flags.literals()
        named = set(Globs(allow_globs).literals()) | folded | set(_WHITE_SPACE)
        named |= folding_onto(folded)
        named = {c for c in named if self.domain.valid_char(c)}
        fresh = fresh_char(named | {c.casefold() for c in named})
        self.alphabet = [*preferred(named), fresh]

    def valid(self, name: str) -> bool:
        """Whether a request may name `name` (validate.py's rules)."""
        return (
            len(name) <= ATTRIBUTE_NAME_MAX
            and run(self.domain, name)
            and not run(self.reserved, name)
        )

    def find(
        self,
        require: Sequence[Automaton],
        exclude: Sequence[Automaton] = (),
        prefer: Iterable[str] = (),
        reserved: bool = False,
        any_length: bool = False,
    ) -> str | None:
        """A valid name every `require` automaton accepts and no `exclude` one does: the first
        of `prefer` that fits, else a shortest one; None when there is none. `reserved`,
        `any_length`: let reserved names, or names past 32 characters, count as valid (to tell
        why there is none)."""
        for name in prefer:
            if (
                self.valid(name)
                and all(run(a, name) for a in require)
                and not any(run(a, name) for a in exclude)
            ):
                return name
        found = search(
            self.alphabet,
            [self.domain, *require],
            [*exclude] if reserved else [self.reserved, *exclude],
        )
        if found is None or (len(found) > ATTRIBUTE_NAME_MAX and not any_length):
            return None
        return found


class Words:
    """Searches over user pool ids or callers for one policy set: the characters their globs
    name and a fresh one."""

    def __init__(self, globs: Iterable[str], pools: bool) -> None:
        self.domain: Automaton = PoolDomain() if pools else CallerDomain()
        self.longest = POOL_ID_MAX if pools else CALLER_MAX
        named = Globs(globs).literals()
        if pools:
            named = (named & _POOL_CHARS) | {"_", "-"}
            fresh = fresh_char(named, "xyzqjkw0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        else:
            fresh = fresh_char(named)
        self.alphabet = [*preferred(named), fresh]

    def valid(self, word: str) -> bool:
        return len(word) <= self.longest and run(self.domain, word)

    def find(self, require: Sequence[Automaton], exclude: Sequence[Automaton] = ()) -> str | None:
        found = search(self.alphabet, [self.domain, *require], exclude)
        return found if found is not None and len(found) <= self.longest else None
