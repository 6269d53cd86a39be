"""The SMS guard's pure parts: phone parsing, SMS detection, the country rule, keys, months."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from attrgate.domain import Attribute, PoolDescription, UpdateRequest
from attrgate.guards.sms import Hasher, Subject, _month, triggers_sms
from attrgate.phones import Phone, parse_phone
from attrgate.policy.compile import compile_policy_set
from attrgate.policy.load import load_policy_set


def ms(*args: int) -> int:
    return int(datetime.datetime(*args, tzinfo=datetime.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("now", "month", "next_start"),
    [
        (ms(2026, 12, 31, 23, 59, 59), "2026-12", ms(2027, 1, 1)),
        (ms(2027, 1, 1), "2027-01", ms(2027, 2, 1)),
        (ms(2028, 2, 29, 12), "2028-02", ms(2028, 3, 1)),
    ],
)
def test_calendar_months_in_utc(now: int, month: str, next_start: int) -> None:
    assert _month(now) == (month, next_start)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+14155550100", Phone("+14155550100", "US")),
        ("+4740000000", Phone("+4740000000", "NO")),
        ("+80012345678", Phone("+80012345678", "001")),
        ("+1415555", None),
        ("+1 415 555 0100", None),
        ("004740000000", None),
    ],
)
def test_parse_phone(value: str, expected: Phone | None) -> None:
    assert parse_phone(value) == expected


def request(*pairs: tuple[str, str]) -> UpdateRequest:
    return UpdateRequest("us-east-1_P", "ada", tuple(Attribute(n, v) for n, v in pairs))


def pool(auto: tuple[str, ...] = (), before: tuple[str, ...] = ()) -> PoolDescription:
    return PoolDescription("us-east-1_P", {}, frozenset(auto), frozenset(before))


def test_when_a_write_triggers_an_sms() -> None:
    phone = ("phone_number", "+14155550100")
    assert triggers_sms(pool(auto=("phone_number",)), request(phone))
    assert triggers_sms(pool(before=("phone_number",)), request(phone))
    assert not triggers_sms(pool(auto=("email",)), request(phone))
    assert not triggers_sms(
        pool(auto=("phone_number",)), request(phone, ("phone_number_verified", "true"))
    )
    assert triggers_sms(
        pool(auto=("phone_number",)), request(phone, ("phone_number_verified", "false"))
    )
    assert not triggers_sms(pool(auto=("phone_number",)), request(("phone_number", "")))
    # Without a pool description (fail-open), count it: when in doubt, count.
    assert triggers_sms(None, request(phone))


def test_counter_keys_hold_hashes_never_values(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(
        "apiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: g}\nspec:\n"
        "  userPools: ['*']\n  countries: {allow: ['001', US]}\n  limits:\n"
        + "".join(
            f"    - {{per: {per}, max: 5, window: 1h}}\n"
            for per in ("phone_number", "user", "caller", "user_pool", "country", "global")
        )
        + "  budget: {currency: USD, amount: 1, window: 30d, pricePerMessage: {default: 0.1}}\n"
    )
    loaded = load_policy_set(tmp_path)
    assert loaded.ok, loaded.errors
    (guard,) = compile_policy_set(loaded.policies, loaded.revision).guards.guards
    subject = Subject("svc-a", "us-east-1_P", Phone("+80012345678", "001"), "sub-123")
    one, other = Hasher(b"k" * 32), Hasher(b"j" * 32)
    charges = guard.charges(subject, one, ms(2026, 12, 1))
    keys = [c.counter.key for c in charges]
    assert len(set(keys)) == len(keys) == 7
    assert not any("+800" in k or "sub-123" in k or "svc-a" in k for k in keys)
    assert keys == [c.counter.key for c in guard.charges(subject, one, ms(2026, 12, 2))]
    assert keys != [c.counter.key for c in guard.charges(subject, other, ms(2026, 12, 1))]
    assert [c.counter.amount for c in charges] == [1] * 6 + [100_000]  # 001 pays `default`
    assert guard.country_rule("001") is None
    assert guard.country_rule("GB") == "countries.allow"


def test_country_codes_stay_strings_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(
        "apiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: nordic}\nspec:\n"
        "  userPools: ['*']\n  countries: {allow: [NO, SE]}\n"
        "  budget: {currency: NOK, amount: 10, window: month,"
        " pricePerMessage: {NO: 0.05, default: 0.10}}\n"
    )
    loaded = load_policy_set(tmp_path)
    assert loaded.ok, loaded.errors
    (guard,) = compile_policy_set(loaded.policies, loaded.revision).guards.guards
    assert guard.country_rule("NO") is None
    assert guard.country_rule("DK") == "countries.allow"
    assert guard.prices == {"NO": 50_000, "default": 100_000}


def _guard_from(tmp_path: Path, countries: str) -> object:
    (tmp_path / "g.yaml").write_text(
        "apiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: g}\nspec:\n"
        f"  userPools: ['*']\n{countries}"
    )
    loaded = load_policy_set(tmp_path)
    assert loaded.ok, loaded.errors
    (guard,) = compile_policy_set(loaded.policies, loaded.revision).guards.guards
    return guard


@pytest.mark.parametrize(
    ("countries", "refused_001"),
    [
        ("  countries: {allow: [US, '001']}\n", False),
        ("  countries: {allow: [US]}\n", True),
        ("  countries: {deny: [RU]}\n", True),
        ("", True),
    ],
)
def test_non_geographic_numbers_pass_only_where_001_is_allowed(
    tmp_path: Path, countries: str, refused_001: bool
) -> None:
    guard = _guard_from(tmp_path, countries)
    assert (guard.country_rule("001") is not None) == refused_001  # type: ignore[attr-defined]
    assert guard.country_rule("US") is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            "{currency: USD, amount: 99999999999999, window: month, pricePerMessage: {default: 1}}",
            "spec.budget.amount",
        ),
        (
            "{currency: USD, amount: 1, window: month, pricePerMessage: {default: 0.0000001}}",
            "more than 6 decimal places",
        ),
    ],
)
def test_budgets_that_cannot_be_counted_are_refused_at_load(
    tmp_path: Path, budget: str, message: str
) -> None:
    (tmp_path / "g.yaml").write_text(
        "apiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: g}\nspec:\n"
        f"  userPools: ['*']\n  budget: {budget}\n"
    )
    loaded = load_policy_set(tmp_path)
    assert not loaded.ok
    assert any(message in str(e) for e in loaded.errors), loaded.errors
