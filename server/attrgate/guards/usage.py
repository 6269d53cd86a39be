"""`attrgate sms usage`: what every limit and budget of every SmsGuard holds now, read from the
same store the servers count in. Subjects (numbers, users, callers) appear only as counts."""

from __future__ import annotations

from decimal import Decimal

from attrgate.guards.sms import GuardSet
from attrgate.policy.model import MICROS
from attrgate.store.base import Store

# Limits keyed by something that is not personal are listed key by key.
_LISTED = {"global", "user_pool", "country"}


async def usage_report(guards: GuardSet, store: Store, now_ms: int) -> list[str]:
    lines: list[str] = []
    for guard in guards.guards:
        lines.append(f"SmsGuard {guard.name} ({'enforce' if guard.enforce else 'audit'})")
        for index, per, most, window_ms, window_text in guard.limits:
            prefix = guard.limit_prefix(index)
            found = await store.usage_by_prefix(prefix, window_ms, now_ms)
            head = f"  limits[{index}] per {per}, at most {most} per {window_text}:"
            if not found:
                lines.append(f"{head} nothing counted")
            elif per in _LISTED:
                lines.append(head)
                for key, used in sorted(found.items()):
                    lines.append(f"    {key.removeprefix(prefix)}: {used}/{most}")
            else:
                full = sum(1 for used in found.values() if used >= most)
                lines.append(
                    f"{head} {len(found)} {per} counted, highest {max(found.values())}/{most}, "
                    f"{full} at the limit"
                )
        counter = guard.budget_counter(now_ms, 0)
        if counter is not None:
            (spent,) = await store.usage([counter], now_ms)
            share = Decimal(spent * 100) / Decimal(counter.limit) if counter.limit else Decimal(0)
            lines.append(
                f"  {guard.budget_text}: {Decimal(spent) / MICROS} spent "
                f"({share.quantize(Decimal('0.1'))}%)"
            )
    if not lines:
        lines.append("no SmsGuard in this policy set")
    return lines
