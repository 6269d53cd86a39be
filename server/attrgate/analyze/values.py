"""What an allow entry's constraints accept: containment between two entries (certain, or not
claimed), and sample values it accepts.

Containment is decided from the constraints, never guessed: a finite set of values (an enum, or
`format: boolean`) is checked value by value with the entry's own `check`; otherwise every
constraint of the outer entry must follow from the inner one's (a length bound inside the
other, the same format, the very same pattern). Two different RE2 patterns are never compared:
where only that would decide, nothing is claimed.

Sample values are tried, not trusted: every one is checked with `CompiledAllow.check` (and the
caller's own test) before use.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from attrgate.phones import parse_phone
from attrgate.policy.constraints import CompiledAllow
from attrgate.validate import ATTRIBUTE_VALUE_MAX

# Lengths every value of a format has (from the checks in policy/constraints.py): an address
# is at least `a@b.cc` and at most 254 characters; E.164 is + and 2 to 15 digits; a URL at
# least `http://a`.
FORMAT_LENGTHS: dict[str, tuple[int, int | None]] = {
    "email": (6, 254),
    "e164": (3, 16),
    "boolean": (4, 5),
    "integer": (1, None),
    "url": (8, None),
}
FORMAT_EXAMPLES = {
    "email": "ada@example.com",
    "e164": "+14155550100",
    "boolean": "true",
    "integer": "42",
    "url": "https://example.com/",
}
# Values a reader recognises, for the standard attributes.
NAME_EXAMPLES = {
    "address": "12 St James's Square, London",
    "birthdate": "1815-12-10",
    "email": "ada@example.com",
    "email_verified": "true",
    "family_name": "Lovelace",
    "gender": "female",
    "given_name": "Ada",
    "locale": "en-GB",
    "middle_name": "King",
    "name": "Ada Lovelace",
    "nickname": "ada",
    "phone_number": "+14155550100",
    "phone_number_verified": "true",
    "picture": "https://example.com/ada.png",
    "preferred_username": "ada",
    "profile": "https://example.com/ada",
    "updated_at": "1700000000",
    "website": "https://example.com/",
    "zoneinfo": "Europe/London",
}


def finite_values(entry: CompiledAllow) -> list[str] | None:
    """The non-empty values `entry` accepts when they are few and known (an enum, or
    `format: boolean`), else None."""
    if entry.enum is not None:
        candidates = sorted(entry.enum)
    elif entry.format == "boolean":
        candidates = ["false", "true"]
    else:
        return None
    return [v for v in candidates if v and not entry.check(v)]


def length_bounds(entry: CompiledAllow) -> tuple[int, int | None]:
    """Bounds every non-empty value `entry` accepts keeps to (inclusive; None: no upper)."""
    low, high = FORMAT_LENGTHS.get(entry.format or "", (1, None))
    if entry.min_length is not None:
        low = max(low, entry.min_length)
    if entry.max_length is not None:
        high = entry.max_length if high is None else min(high, entry.max_length)
    return max(low, 1), high


def accepts_nothing(entry: CompiledAllow) -> bool:
    """Certain that `entry` accepts no value at all (not even an empty one)."""
    if entry.allow_empty:
        return False
    finite = finite_values(entry)
    if finite is not None:
        return not finite
    low, high = length_bounds(entry)
    return high is not None and low > high


def within(inner: CompiledAllow, outer: CompiledAllow) -> bool:
    """Certain that `outer` accepts every value `inner` accepts. False also when it cannot be
    told for sure (two different patterns, a pattern against an enum)."""
    if inner.allow_empty and not outer.allow_empty:
        return False
    finite = finite_values(inner)
    if finite is not None:
        return all(not outer.check(v) for v in finite)
    if outer.enum is not None:
        return False
    low, high = length_bounds(inner)
    if outer.max_length is not None and (high is None or high > outer.max_length):
        return False
    if outer.min_length is not None and outer.min_length > low:
        return False
    if outer.format is not None and outer.format != inner.format:
        return False
    return outer.pattern_text is None or outer.pattern_text == inner.pattern_text


def value_for(
    entry: CompiledAllow,
    name: str,
    accept: Callable[[str], bool] = lambda value: True,
    lengths: Iterable[int] = (),
    extra: Iterable[str] = (),
) -> str | None:
    """A value `entry` accepts for `name` that a request may carry and `accept` likes: a
    natural one first, then ones of the given `lengths`, then `extra`; None when no candidate
    fits."""
    for value in _candidates(entry, name, lengths, extra):
        if (
            len(value) <= ATTRIBUTE_VALUE_MAX
            and not entry.check(value)
            and (name != "phone_number" or not value or parse_phone(value) is not None)
            and accept(value)
        ):
            return value
    return None


def _candidates(
    entry: CompiledAllow, name: str, lengths: Iterable[int], extra: Iterable[str]
) -> Iterator[str]:
    if name in NAME_EXAMPLES:
        yield NAME_EXAMPLES[name]
    yield from finite_values(entry) or ()
    if entry.format is not None:
        yield FORMAT_EXAMPLES[entry.format]
    if entry.pattern_text is not None:
        sample = pattern_sample(entry.pattern_text)
        if sample is not None:
            yield sample
    low, high = length_bounds(entry)
    yield "x" * low
    if high is not None:
        yield "x" * high
    for length in lengths:
        yield from _sized(entry, length)
    yield from extra
    if entry.allow_empty:
        yield ""


def _sized(entry: CompiledAllow, length: int) -> Iterator[str]:
    """Values of `length` characters, when the entry's format or pattern allows one."""
    if length < 1:
        return
    if entry.format == "email":
        yield "a" * (length - len("@example.com")) + "@example.com"
    elif entry.format == "e164":
        yield "+1" + "5" * (length - 2)
    elif entry.format == "integer":
        yield "1" * length
    elif entry.format == "url":
        yield "https://example.com/" + "a" * (length - len("https://example.com/"))
    elif entry.pattern_text is not None:
        sample = pattern_sample(entry.pattern_text, length)
        if sample is not None:
            yield sample
    else:
        yield "x" * length


# --- a sample string for an RE2 pattern ------------------------------------------------------
# Python's own regex parser reads the RE2 syntax policies use (classes, repeats, groups,
# alternation); what it cannot read, or reads differently, gives no sample or one that the
# compiled RE2 pattern then refuses: a sample is only ever a candidate.

_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")


def pattern_sample(pattern: str, length: int | None = None) -> str | None:
    """A shortest string the pattern (probably) matches, or one of `length` characters by
    repeating one of its repeats more often; None when no such string was found."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning on RE2's [[:alpha:]]
            parsed = _parser.parse(pattern)
    except (_constants.error, ValueError, TypeError, OverflowError, RecursionError):
        return None
    shortest = _shortest(list(parsed), {})
    if shortest is None or length is None or len(shortest) == length:
        return shortest
    for repeat in _repeats(list(parsed)):
        low, high, body = repeat[1]
        unit = _shortest(list(body), {})
        missing = length - len(shortest)
        if not unit or missing % len(unit):
            continue
        count = low + missing // len(unit)
        if count > high:
            continue
        found = _shortest(list(parsed), {id(repeat): count})
        if found is not None and len(found) == length:
            return found
    return None


def _repeats(items: list[Any]) -> Iterator[Any]:
    for item in items:
        op, argument = item
        if op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT):
            yield item
            yield from _repeats(list(argument[2]))
        elif op == _constants.SUBPATTERN:
            yield from _repeats(list(argument[3]))
        elif op == _constants.BRANCH:
            for branch in argument[1]:
                yield from _repeats(list(branch))


def _shortest(items: list[Any], counts: dict[int, int]) -> str | None:
    out: list[str] = []
    for item in items:
        op, argument = item
        piece: str | None
        if op == _constants.LITERAL:
            piece = chr(argument)
        elif op in (_constants.NOT_LITERAL, _constants.ANY):
            piece = "b" if op == _constants.NOT_LITERAL and argument == ord("a") else "a"
        elif op == _constants.IN:
            piece = _member(argument)
        elif op == _constants.AT:
            piece = ""
        elif op == _constants.SUBPATTERN:
            piece = _shortest(list(argument[3]), counts)
        elif op == _constants.BRANCH:
            options = [_shortest(list(b), counts) for b in argument[1]]
            found = [o for o in options if o is not None]
            piece = min(found, key=len) if found else None
        elif op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT):
            body = _shortest(list(argument[2]), counts)
            times = counts.get(id(item), argument[0])
            piece = None if body is None and times else (body or "") * times
        else:  # backreferences, lookaround: not RE2
            return None
        if piece is None:
            return None
        out.append(piece)
    return "".join(out)


_CATEGORY_SAMPLES = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
}


def _member(items: list[Any]) -> str | None:
    """A character of a class: the first one it names, or for a negated class the first of a
    few common characters it leaves out."""
    if items and items[0][0] == _constants.NEGATE:
        named = {c for c in "aA0_-. x" if _in_class(items[1:], c)}
        return next((c for c in "aA0_-. x" if c not in named), None)
    for op, argument in items:
        if op == _constants.LITERAL:
            return chr(argument)
        if op == _constants.RANGE:
            return chr(argument[0])
        if op == _constants.CATEGORY:
            return _CATEGORY_SAMPLES.get(str(argument))
    return None


def _in_class(items: list[Any], char: str) -> bool:
    code = ord(char)
    for op, argument in items:
        if op == _constants.LITERAL and argument == code:
            return True
        if op == _constants.RANGE and argument[0] <= code <= argument[1]:
            return True
        if op == _constants.CATEGORY:
            sample = _CATEGORY_SAMPLES.get(str(argument))
            if sample is None:
                return True  # unknown: assume it is in, so it is not offered
            positive = "NOT" not in str(argument)
            kind = str(argument).rsplit("_", 1)[-1]
            inside = {"DIGIT": char.isdigit(), "WORD": char.isalnum() or char == "_"}.get(
                kind, char.isspace()
            )
            if inside == positive:
                return True
    return False
