"""The SMS cost guard, compiled: which guards apply to a pool, the country rule, and the counters
(limits and budget) an SMS-triggering request charges. Pure: the store does the counting.

Counter keys hold no personal data: phone numbers, users and callers become keyed hashes.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from attrgate.domain import PoolDescription, UpdateRequest, Violation, ViolationReason
from attrgate.phones import NON_GEOGRAPHIC, Phone
from attrgate.policy.globs import PoolMatcher
from attrgate.policy.model import SmsGuard, duration_ms, to_micros
from attrgate.store.base import Counter


def triggers_sms(pool: PoolDescription | None, request: UpdateRequest) -> bool:
    """A non-empty phone_number, its verified flag not set to true in the same request, and a
    pool that verifies phone numbers (auto-verify or verify-before-update). Without a pool
    description (fail-open), assume it does: when in doubt, count."""
    if not request.writes_unverified("phone_number"):
        return False
    if pool is None:
        return True
    return "phone_number" in pool.auto_verified or "phone_number" in pool.verify_before_update


class Hasher:
    """Keyed hashes (HMAC-SHA256) for counter keys: stable across replicas sharing the key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom an SMS-triggering request concerns; the inputs of every counter key."""

    caller: str
    pool_id: str
    phone: Phone
    user_sub: str | None  # only resolved when a guard limits per user


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter a request charges, and what to tell a caller it refuses."""

    guard: str
    rule: str  # "limits[0]", "budget"
    description: str
    counter: Counter


def _month(now_ms: int) -> tuple[str, int]:
    """The UTC calendar month of `now_ms` and the ms at which the next one starts."""
    now = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC)
    start_next = (now.replace(day=28) + datetime.timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return f"{now:%Y-%m}", int(start_next.timestamp()) * 1000


class CompiledGuard:
    __slots__ = (
        "allow",
        "budget_limit",
        "budget_month",
        "budget_text",
        "budget_window",
        "budget_window_ms",
        "deny",
        "enforce",
        "limits",
        "name",
        "needs_user",
        "pools",
        "prices",
    )

    def __init__(self, guard: SmsGuard) -> None:
        spec = guard.spec
        self.name = guard.metadata.name
        self.enforce = spec.mode == "enforce"
        self.pools = PoolMatcher(spec.user_pools)
        countries = spec.countries
        self.allow = (
            frozenset(countries.allow) if countries and countries.allow is not None else None
        )
        self.deny = frozenset(countries.deny) if countries and countries.deny is not None else None
        self.limits = tuple(
            (index, limit.per, limit.max, duration_ms(limit.window), limit.window)
            for index, limit in enumerate(spec.limits)
        )
        self.needs_user = any(limit.per == "user" for limit in spec.limits)
        budget = spec.budget
        self.budget_limit = to_micros(budget.amount, "amount") if budget else None
        self.budget_month = budget is not None and budget.window == "month"
        self.budget_window = budget.window if budget else ""
        self.budget_window_ms = (
            duration_ms(budget.window) if budget and budget.window != "month" else None
        )
        self.budget_text = (
            f"budget: {budget.amount} {budget.currency} per {budget.window}" if budget else ""
        )
        self.prices = (
            {k: to_micros(v, k) for k, v in budget.price_per_message.items()} if budget else {}
        )

    def country_rule(self, country: str) -> str | None:
        """The rule that refuses `country`, or None. Non-geographic numbers (001: international
        premium and shared-cost ranges, a favourite of SMS pumping) pass only a guard whose
        allow list names 001; a deny list or no country rule at all does not let them through."""
        if country == NON_GEOGRAPHIC and (self.allow is None or country not in self.allow):
            return "countries.allow"
        if self.allow is not None and country not in self.allow:
            return "countries.allow"
        if self.deny is not None and country in self.deny:
            return "countries.deny"
        return None

    @property
    def key_prefix(self) -> str:
        mode = "e" if self.enforce else "a"  # an audit guard counts in its own keys
        return f"sms:{self.name}:{mode}"

    def limit_prefix(self, index: int) -> str:
        return f"{self.key_prefix}:l{index}:"

    def budget_counter(self, now_ms: int, amount: int) -> Counter | None:
        if self.budget_limit is None:
            return None
        if self.budget_month:
            month, period_end = _month(now_ms)
            return Counter(
                f"{self.key_prefix}:budget:{month}",
                limit=self.budget_limit,
                amount=amount,
                period_end_ms=period_end,
            )
        return Counter(
            f"{self.key_prefix}:budget",
            limit=self.budget_limit,
            amount=amount,
            window_ms=self.budget_window_ms,
        )

    def charges(self, subject: Subject, hasher: Hasher, now_ms: int) -> list[Charge]:
        found = []
        for index, per, most, window_ms, window_text in self.limits:
            key = self.limit_prefix(index) + self._subject_key(per, subject, hasher)
            found.append(
                Charge(
                    self.name,
                    f"limits[{index}]",
                    f"limits[{index}]: at most {most} SMS per {per} in {window_text}",
                    Counter(key, limit=most, amount=1, window_ms=window_ms),
                )
            )
        price = self.prices.get(subject.phone.country, self.prices.get("default", 0))
        counter = self.budget_counter(now_ms, price)
        if counter is not None:
            found.append(Charge(self.name, "budget", self.budget_text, counter))
        return found

    @staticmethod
    def _subject_key(per: str, subject: Subject, hasher: Hasher) -> str:
        if per == "phone_number":
            return hasher("phone", subject.phone.e164)
        if per == "user":
            return hasher("user", f"{subject.pool_id}\0{subject.user_sub or ''}")
        if per == "caller":
            return hasher("caller", subject.caller)
        if per == "user_pool":
            return subject.pool_id
        if per == "country":
            return subject.phone.country
        return "global"


class GuardSet:
    """The compiled SmsGuards of a policy set."""

    def __init__(self, guards: Sequence[SmsGuard]) -> None:
        self.guards = tuple(CompiledGuard(g) for g in guards)
        self.applicable = lru_cache(1024)(self._applicable)

    def _applicable(self, pool_id: str) -> tuple[CompiledGuard, ...]:
        return tuple(g for g in self.guards if g.pools(pool_id))

    def __bool__(self) -> bool:
        return bool(self.guards)


def country_findings(
    guards: Sequence[CompiledGuard], phone: Phone
) -> tuple[list[Violation], list[Violation]]:
    """What the guards' country rules say of `phone`: denials (enforcing guards) and would-deny
    findings (audit guards)."""
    denials: list[Violation] = []
    would_deny: list[Violation] = []
    for guard in guards:
        rule = guard.country_rule(phone.country)
        if rule is None:
            continue
        violation = Violation(
            "phone_number",
            guard.name,
            rule,
            ViolationReason.SMS_COUNTRY_NOT_ALLOWED,
            f"destination country {phone.country} is not allowed by SmsGuard {guard.name}",
        )
        (denials if guard.enforce else would_deny).append(violation)
    return denials, would_deny


def charges_for(
    guards: Sequence[CompiledGuard], subject: Subject, hasher: Hasher, now_ms: int
) -> tuple[tuple[Charge, ...], tuple[Charge, ...]]:
    """Every counter an SMS-triggering write charges: enforcing guards' and audit guards'."""
    enforce = tuple(c for g in guards if g.enforce for c in g.charges(subject, hasher, now_ms))
    audit = tuple(c for g in guards if not g.enforce for c in g.charges(subject, hasher, now_ms))
    return enforce, audit
