"""Cognito's input limits, enforced before any policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attrgate.domain import Attribute, UpdateRequest
from attrgate.validate import (
    ATTRIBUTE_NAME_MAX,
    ATTRIBUTE_VALUE_MAX,
    METADATA_ENTRIES_MAX,
    POOL_ID_MAX,
    USERNAME_MAX,
    validate_request,
)

POOL = "us-east-1_AbC123"


def make(
    pool: str = POOL,
    username: str = "ada",
    attributes: tuple[tuple[str, str], ...] = (("given_name", "Ada"),),
    metadata: dict[str, str] | None = None,
) -> UpdateRequest:
    return UpdateRequest(
        pool, username, tuple(Attribute(n, v) for n, v in attributes), metadata or {}
    )


def problems(request: UpdateRequest) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in validate_request(request)]


def test_a_well_formed_request_passes() -> None:
    assert problems(make()) == []


@pytest.mark.parametrize(
    ("pool", "reason"),
    [
        ("", "REQUIRED"),
        ("no-underscore", "BAD_FORMAT"),
        ("us-east-1_", "BAD_FORMAT"),
        ("us east-1_abc", "BAD_FORMAT"),
        ("us-east-1_ab!", "BAD_FORMAT"),
        ("us-east-1_" + "a" * (POOL_ID_MAX - 9), "TOO_LONG"),
    ],
)
def test_pool_id_limits(pool: str, reason: str) -> None:
    assert problems(make(pool=pool)) == [("user_pool_id", reason)]


def test_pool_id_at_the_limit_passes() -> None:
    assert problems(make(pool="us-east-1_" + "a" * (POOL_ID_MAX - 10))) == []


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("", "REQUIRED"),
        ("a" * (USERNAME_MAX + 1), "TOO_LONG"),
        ("ada lovelace", "BAD_FORMAT"),  # spaces are not in Cognito's username class
        ("ada\tx", "BAD_FORMAT"),
        ("ada\x00", "BAD_FORMAT"),
    ],
)
def test_username_limits(username: str, reason: str) -> None:
    assert problems(make(username=username)) == [("username", reason)]


@pytest.mark.parametrize("username", ["ada", "ädä", "用户", "a+b@example.com", "a" * USERNAME_MAX])
def test_usernames_cognito_accepts(username: str) -> None:
    assert problems(make(username=username)) == []


def test_every_bad_attribute_is_named() -> None:
    request = make(
        attributes=(
            ("given_name", "x" * (ATTRIBUTE_VALUE_MAX + 1)),
            ("n" * (ATTRIBUTE_NAME_MAX + 1), "v"),
            ("", "v"),
            ("sub", "x"),
            ("cognito:user_status", "x"),
            ("identities", "[]"),
            ("family_name", "a"),
            ("family_name", "b"),
            ("bad\x00name", "v"),
        )
    )
    assert problems(request) == [
        ("user_attributes[0].value", "TOO_LONG"),
        ("user_attributes[1].name", "TOO_LONG"),
        ("user_attributes[2].name", "REQUIRED"),
        ("user_attributes[3].name", "RESERVED_ATTRIBUTE"),
        ("user_attributes[4].name", "RESERVED_ATTRIBUTE"),
        ("user_attributes[5].name", "RESERVED_ATTRIBUTE"),
        ("user_attributes[7].name", "DUPLICATE"),
        ("user_attributes[8].name", "BAD_FORMAT"),
    ]


def test_values_at_the_limit_and_empty_values_are_well_formed() -> None:
    # An empty value deletes the attribute: a policy question, not a malformed request.
    request = make(attributes=(("given_name", "x" * ATTRIBUTE_VALUE_MAX), ("family_name", "")))
    assert problems(request) == []


def test_no_attributes() -> None:
    assert problems(make(attributes=())) == [("user_attributes", "REQUIRED")]


def test_client_metadata_bounds() -> None:
    too_many = {f"k{i}": "v" for i in range(METADATA_ENTRIES_MAX + 1)}
    assert problems(make(metadata=too_many)) == [("client_metadata", "TOO_MANY")]
    assert problems(make(metadata={"source": "x" * 5000})) == [
        ("client_metadata.source", "TOO_LONG")
    ]
    assert problems(make(metadata={"bad key": "v"})) == [("client_metadata", "BAD_FORMAT")]


def test_descriptions_never_echo_values() -> None:
    marker = "VALUE-MARKER-7f3a"
    request = make(
        username=marker + " x",
        attributes=(("given_name", marker * 200), ("sub", marker)),
        metadata={"source": marker * 200},
    )
    found = validate_request(request)
    assert len(found) == 4
    assert all(marker not in v.description and marker not in v.field for v in found)


@given(
    st.text(max_size=70),
    st.text(max_size=140),
    st.lists(st.tuples(st.text(max_size=40), st.text(max_size=40)), max_size=5),
)
def test_validation_never_raises_and_names_fields(
    pool: str, username: str, attributes: list[tuple[str, str]]
) -> None:
    for violation in validate_request(make(pool, username, tuple(attributes))):
        assert violation.field.split("[")[0].split(".")[0] in (
            "user_pool_id",
            "username",
            "user_attributes",
            "client_metadata",
        )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (" sub", "BAD_FORMAT"),
        ("custom:role\t", "BAD_FORMAT"),
        ("email_verified\n", "BAD_FORMAT"),
        ("Sub", "RESERVED_ATTRIBUTE"),
        ("IDENTITIES", "RESERVED_ATTRIBUTE"),
        ("Cognito:user_status", "RESERVED_ATTRIBUTE"),
    ],
)
def test_names_that_only_dodge_exact_rules(name: str, reason: str) -> None:
    assert problems(make(attributes=((name, "v"),))) == [("user_attributes[0].name", reason)]


def test_pool_id_word_characters_are_ascii() -> None:
    assert problems(make(pool="uséeast_abc")) == [("user_pool_id", "BAD_FORMAT")]


def test_the_ascii_shortcut_agrees_with_cognitos_patterns() -> None:
    """Printable ASCII skips the regex: it must answer what the regex answers, for every ASCII
    character alone, beside a letter, and doubled."""
    from attrgate.validate import _ATTRIBUTE_NAME, _METADATA_KEY, _USERNAME

    texts = [chr(c) for c in range(128)]
    texts += [f"a{t}" for t in texts] + [f"{t}{t}" for t in texts] + ["", "é", "a é", "a\u00a0b"]
    for pattern in (_USERNAME, _ATTRIBUTE_NAME, _METADATA_KEY):
        for text in texts:
            assert pattern.fullmatch(text) == bool(pattern._regex.fullmatch(text)), repr(text)
