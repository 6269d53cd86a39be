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

from attrgate.analyze.globalgebra import Automaton, Globs, alphabet_for, run, search
from attrgate.identity import CALLER_MAX
from attrgate.policy.model import VERIFIED_FLAGS
from attrgate.validate import (
    _ATTRIBUTE_NAME,
    ATTRIBUTE_NAME_MAX,
    POOL_ID_MAX,
    RESERVED_NAMES,
    RESERVED_PREFIX,
)

_WHITE_SPACE = " \t\n\r"  # the only white space Cognito's name characters include (see tests)
_POOL_FRESH = "xyzqjkw0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_POOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class NameDomain:
    """Attribute names validate.py accepts, but for their length and reserved names (see
    `Names.find`). States: 0 empty, 1 ends in a name character, 2 ends in white space."""

    def __init__(self) -> None:
        self._valid: dict[str, bool] = {}

    def valid_char(self, char: str) -> bool:
        found = self._valid.get(char)
        if found is None:
            found = self._valid[char] = _ATTRIBUTE_NAME.fullmatch(char)
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
    """Searches over valid attribute names. Each search runs on its own alphabet (see
    globalgebra.alphabet_for): what its automata need, and a fresh lowercase letter or digit
    that none of them (nor the reserved names) names."""

    def __init__(self) -> None:
        self.domain = NameDomain()
        self.reserved = Globs(RESERVED, fold=True)
        self.flags = Globs(sorted(VERIFIED_FLAGS), fold=True)
        self._found: dict[tuple[object, ...], str | None] = {}

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
        key = (tuple(require), tuple(exclude), reserved)
        if key in self._found:
            found = self._found[key]
        else:
            excluded = [*exclude] if reserved else [self.reserved, *exclude]
            alphabet = alphabet_for(require, [self.reserved, *excluded], self.domain.valid_char)
            found = self._found[key] = search(alphabet, [self.domain, *require], excluded)
        if found is None or (len(found) > ATTRIBUTE_NAME_MAX and not any_length):
            return None
        return found


class Words:
    """Searches over user pool ids or callers, each on its own alphabet (see Names)."""

    def __init__(self, pools: bool) -> None:
        self.domain: Automaton = PoolDomain() if pools else CallerDomain()
        self.longest = POOL_ID_MAX if pools else CALLER_MAX
        self._pools = pools
        self._found: dict[tuple[object, ...], str | None] = {}

    def valid(self, word: str) -> bool:
        return len(word) <= self.longest and run(self.domain, word)

    def alphabet(self, require: Sequence[Automaton], others: Sequence[Automaton] = ()) -> list[str]:
        if not self._pools:
            return alphabet_for(require, others)
        # A pool id tells apart `_`, `-` and the rest; one fresh letter or digit stands for all
        # the letters and digits no glob names.
        return alphabet_for(
            require,
            others,
            _POOL_CHARS.__contains__,
            "_-",
            "xyzqjkw0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        )

    def find(self, require: Sequence[Automaton], exclude: Sequence[Automaton] = ()) -> str | None:
        key = (tuple(require), tuple(exclude))
        if key not in self._found:
            alphabet = self.alphabet(require, exclude)
            self._found[key] = search(alphabet, [self.domain, *require], exclude)
        found = self._found[key]
        return found if found is not None and len(found) <= self.longest else None
