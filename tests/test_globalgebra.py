"""The glob algebra behind `attrgate analyze`, against brute force: every string over a small
alphabet up to a length, matched with the engine's own glob matcher. A search must find a
witness exactly when brute force does, and a shortest one; where brute force finds none within
its bound, a witness must be longer than the bound."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from attrgate.analyze.domains import Names, PoolDomain, Words
from attrgate.analyze.globalgebra import (
    Globs,
    Neighbours,
    alphabet_for,
    contains,
    difference,
    intersection,
    may_meet,
    run,
    search,
    signatures,
)
from attrgate.domain import Attribute, UpdateRequest
from attrgate.policy.globs import compile_glob
from attrgate.validate import validate_request

# "c" is a character no pattern below names: it stands for all the others.
PLAIN = "abc"
BOUND = 7


def strings(alphabet: str, longest: int) -> Iterator[str]:
    """Every string over `alphabet` up to `longest` characters, shortest first."""
    for length in range(longest + 1):
        for chars in product(alphabet, repeat=length):
            yield "".join(chars)


WORDS = list(strings(PLAIN, BOUND))
globs = st.text("ab*", min_size=1, max_size=5)


def agrees(found: str | None, brute: Callable[[str], bool], words: list[str], bound: int) -> None:
    """`found` (a search's answer) against the first of `words` (shortest first) `brute` takes."""
    first = next((w for w in words if brute(w)), None)
    if found is None:
        assert first is None, f"missed {first!r}"
        return
    assert brute(found), f"{found!r} is no witness"
    if first is None:
        assert len(found) > bound
    else:
        assert len(found) == len(first), (found, first)


@settings(max_examples=400, deadline=None)
@given(globs, globs)
def test_intersection_is_exact_and_shortest(a: str, b: str) -> None:
    ma, mb = compile_glob(a), compile_glob(b)
    agrees(intersection(a, b), lambda w: ma(w) and mb(w), WORDS, BOUND)


@settings(max_examples=400, deadline=None)
@given(st.lists(globs, min_size=1, max_size=2), st.lists(globs, min_size=1, max_size=3))
def test_difference_and_containment_are_exact(inner: list[str], outer: list[str]) -> None:
    ins = [compile_glob(g) for g in inner]
    outs = [compile_glob(g) for g in outer]

    def brute(w: str) -> bool:
        return any(m(w) for m in ins) and not any(m(w) for m in outs)

    found = difference(inner, outer)
    agrees(found, brute, WORDS, BOUND)
    assert contains(outer, inner) is (found is None)


FOLDING = "aAsSßſc"  # ß folds to ss, ſ (long s) to s
FOLD_WORDS = list(strings(FOLDING, 4))


@settings(max_examples=150, deadline=None)
@given(st.text("aAsSß*", min_size=1, max_size=4), st.text("aAsSß*", min_size=1, max_size=4))
def test_casefolding_globs_match_as_the_engine_folds(deny: str, allow: str) -> None:
    folded, raw = Globs([deny], fold=True), Globs([allow])
    denies, allows = compile_glob(deny.casefold()), compile_glob(allow)
    for word in FOLD_WORDS:
        assert run(folded, word) is denies(word.casefold())
    # An allowed name that escapes the deny, and one it catches.
    escapes = search(alphabet_for([raw], [folded]), [raw], [folded])
    agrees(escapes, lambda w: allows(w) and not denies(w.casefold()), FOLD_WORDS, 4)
    caught = search(alphabet_for([raw, folded]), [raw, folded])
    agrees(caught, lambda w: allows(w) and denies(w.casefold()), FOLD_WORDS, 4)


@settings(max_examples=200, deadline=None)
@given(globs, st.lists(globs, min_size=1, max_size=3))
def test_signatures_are_every_combination_and_its_shortest_word(
    within: str, members: list[str]
) -> None:
    automata = [Globs([m]) for m in members]
    inside = Globs([within])
    found = signatures(alphabet_for([inside, *automata]), [inside], automata)
    matchers = [compile_glob(m) for m in members]
    brute: dict[frozenset[int], str] = {}
    for word in WORDS:
        if compile_glob(within)(word):
            key = frozenset(i for i, m in enumerate(matchers) if m(word))
            brute.setdefault(key, word)
    for key, word in found.items():
        assert frozenset(i for i, m in enumerate(matchers) if m(word)) == key
        if key in brute:
            assert len(word) == len(brute[key])
        else:
            assert len(word) > BOUND
    assert set(brute) <= set(found)


@settings(max_examples=400, deadline=None)
@given(globs, globs)
def test_the_quick_test_never_rules_out_globs_that_meet(a: str, b: str) -> None:
    if intersection(a, b) is not None:
        assert may_meet(a, b)
    index = Neighbours([(a, "a")])
    assert list(index.near(b)) == (["a"] if may_meet(b, a) else [])


@settings(max_examples=300, deadline=None)
@given(st.lists(globs, min_size=1, max_size=2), st.lists(globs, max_size=2))
def test_caller_searches_on_their_own_alphabet_are_exact(
    require: list[str], exclude: list[str]
) -> None:
    words = Words(pools=False)
    found = words.find([Globs([g]) for g in require], [Globs(exclude)] if exclude else [])
    ins = [compile_glob(g) for g in require]
    outs = [compile_glob(g) for g in exclude]

    def brute(w: str) -> bool:
        return bool(w) and all(m(w) for m in ins) and not any(m(w) for m in outs)

    agrees(found, brute, WORDS, BOUND)


# --- the domains: what validate.py lets through --------------------------------------------


def test_pool_ids_are_what_validation_takes() -> None:
    domain = PoolDomain()
    for word in strings("a1_-:", 6):
        request = UpdateRequest(word, "ada", (Attribute("given_name", "x"),))
        takes = not any(v.field == "user_pool_id" for v in validate_request(request))
        assert run(domain, word) is takes, repr(word)


POOL_WORDS = list(strings("a1_-:", 6))


@settings(max_examples=300, deadline=None)
@given(st.text("a_-:*", min_size=1, max_size=5), st.text("a_-:*", min_size=1, max_size=5))
def test_pool_searches_are_exact_over_pool_ids(inside: str, outside: str) -> None:
    domain, within, without = PoolDomain(), compile_glob(inside), compile_glob(outside)
    found = Words(pools=True).find([Globs([inside])], [Globs([outside])])
    agrees(found, lambda w: run(domain, w) and within(w) and not without(w), POOL_WORDS, 6)


NAME_CHARS = "aSub \té\x00ſ"


def _valid_name(name: str) -> bool:
    request = UpdateRequest("us-east-1_A", "ada", (Attribute(name, "x"),))
    return validate_request(request) == ()


def test_attribute_names_are_what_validation_takes() -> None:
    names = Names()
    for word in strings(NAME_CHARS, 4):
        assert names.valid(word) is _valid_name(word), repr(word)
    assert names.valid("x" * 32)
    assert not names.valid("x" * 33)


NAME_WORDS = [w for w in strings("subSßſ x", 4) if _valid_name(w)]


@settings(max_examples=300, deadline=None)
@given(st.text("subS*", min_size=1, max_size=4), st.text("subSß*", min_size=1, max_size=4))
def test_name_searches_are_exact_over_valid_names(allow: str, deny: str) -> None:
    names = Names()
    allows, denies = compile_glob(allow), compile_glob(deny.casefold())
    escapes = names.find([Globs([allow])], [Globs([deny], fold=True)])
    agrees(escapes, lambda w: allows(w) and not denies(w.casefold()), NAME_WORDS, 4)
    caught = names.find([Globs([allow]), Globs([deny], fold=True)])
    agrees(caught, lambda w: allows(w) and denies(w.casefold()), NAME_WORDS, 4)


def test_a_name_longer_once_casefolded_still_counts() -> None:
    # 17 characters, 34 once folded: `ßßß...` is a valid name a deny of `ssss...` catches.
    names = Names()
    assert names.find([Globs(["s" * 34], fold=True)]) == "ß" * 17
    assert names.find([Globs(["x" * 33])]) is None
    assert names.find([Globs(["x" * 33])], any_length=True) == "x" * 33


def test_casefolding_changes_nothing_past_the_characters_the_table_holds() -> None:
    assert not [c for c in map(chr, range(0x20000, 0x110000)) if c.casefold() != c]
