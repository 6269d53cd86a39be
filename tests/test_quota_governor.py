"""The governor on one event loop, without a server: its promises at every await point
(cancellation, deadlines), the order of bulkhead, pacing and token, and reloads while calls
wait. Local mode (no fleet store), real asyncio, real compiled policies."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from attrgate.policy.compile import load_and_compile
from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.governor import IN_FLIGHT, SHARE, USER, Governor, QuotaRefusal, Ticket
from attrgate.quota.leases import LeaseKeeper


def run(test: Callable[[Path], Coroutine[Any, Any, None]]) -> Callable[[Path], None]:
    @functools.wraps(test)
    def sync(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), 30))

    return sync


def compiled(tmp_path: Path, spec: str, name: str = "q.yaml") -> CompiledQuota:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    path = tmp_path / name
    path.write_text(
        f"apiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {{name: q}}\nspec:\n{body}\n"
    )
    result, policy_set = load_and_compile(path)
    assert policy_set is not None, result.errors
    assert policy_set.quota is not None
    return policy_set.quota


async def governed(quota: CompiledQuota) -> Governor:
    governor = Governor(LeaseKeeper(None, None), default_in_flight=32)
    serving = [quota]
    governor.serving = lambda: serving[0]
    await governor.renew()
    governor.start()
    return governor


@run
async def test_a_hot_user_waiting_for_its_turn_holds_no_bulkhead_slot(tmp_path: Path) -> None:
    quota = compiled(
        tmp_path, "rate: 100\nothers: {maxInFlight: 4}\nperUser: {rate: 2}\nqueue: {maxWait: 5s}"
    )
    governor = await governed(quota)
    await asyncio.sleep(0.2)
    hot = [
        asyncio.ensure_future(governor.acquire(quota, "svc", "pool", "hot", None)) for _ in range(6)
    ]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    other = await governor.acquire(quota, "svc", "pool", "someone-else", None)
    assert isinstance(other, Ticket)
    assert time.monotonic() - started < 1.0  # not behind the hot user's sleeping writes
    other.release()
    tickets = await asyncio.gather(*hot)
    for ticket in tickets:
        if isinstance(ticket, Ticket):
            ticket.release()
    assert governor.shares[-1].bulkhead.in_flight == 0
    await governor.close()


@run
async def test_cancelled_at_any_await_the_call_keeps_no_slot(tmp_path: Path) -> None:
    quota = compiled(
        tmp_path,
        "rate: 2\nburst: 1\nothers: {maxInFlight: 2}\nperUser: {rate: 1}\nqueue: {maxWait: 10s}",
    )
    governor = await governed(quota)
    share = governor.shares[-1]
    for pause in (0.0, 0.05, 0.3, 0.7, 1.2):  # during pacing sleeps and the token line
        calls = [
            asyncio.ensure_future(governor.acquire(quota, "svc", "pool", f"u{n % 2}", None))
            for n in range(6)
        ]
        await asyncio.sleep(pause)
        for call in calls:
            call.cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, Ticket):
                result.release()
        assert share.bulkhead.in_flight == 0, pause
        assert share.gate.waiting == 0, pause
    await governor.close()


@run
async def test_the_deadline_bounds_every_wait(tmp_path: Path) -> None:
    quota = compiled(tmp_path, "rate: 1\nburst: 1\nperUser: {rate: 1}\nqueue: {maxWait: 30s}")
    governor = await governed(quota)
    await asyncio.sleep(1.1)
    first = await governor.acquire(quota, "svc", "pool", "u", None)
    assert isinstance(first, Ticket)
    first.release()
    for user in ("u", "v"):  # the user's turn, then the share's token, are a second away
        started = time.monotonic()
        refused = await governor.acquire(quota, "svc", "pool", user, time.monotonic() + 0.5)
        assert isinstance(refused, QuotaRefusal)
        assert refused.scope in (USER, SHARE)
        assert time.monotonic() - started < 0.5
    await governor.close()


@run
async def test_a_reload_that_drops_a_share_refuses_its_line_at_once(tmp_path: Path) -> None:
    old = compiled(
        tmp_path, "rate: 1\nburst: 1\nshares: [{name: a, callers: [svc]}]\nqueue: {maxWait: 20s}"
    )
    governor = await governed(old)
    waiting = [
        asyncio.ensure_future(governor.acquire(old, "svc", "pool", f"u{n}", None)) for n in range(5)
    ]
    await asyncio.sleep(0.3)
    new = compiled(
        tmp_path,
        "rate: 1\nburst: 1\nshares: [{name: b, callers: [svc]}]\nqueue: {maxWait: 20s}",
        "q2.yaml",
    )
    governor.serving = lambda: new
    governor.follow(new)
    started = time.monotonic()
    answers = await asyncio.gather(*waiting)
    assert time.monotonic() - started < 1.0  # refused now, not served unbacked for 20 s
    assert sum(isinstance(a, QuotaRefusal) for a in answers) >= 4
    # A call decided under the old set is governed by the serving set's shares: it never turns
    # the governor back.
    late = asyncio.ensure_future(governor.acquire(old, "svc", "pool", "late", None))
    await asyncio.sleep(0.05)
    assert [s.name for s in governor.shares] == ["b", "others"]
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    # A reload that lifts the quota: calls decided before it go ungoverned.
    governor.serving = lambda: None
    governor.follow(None)
    assert await governor.acquire(new, "svc", "pool", "u", None) is None
    await governor.close()


@run
async def test_a_full_bulkhead_refuses_with_its_scope(tmp_path: Path) -> None:
    quota = compiled(tmp_path, "rate: 100\nothers: {maxInFlight: 1}\nqueue: {maxWait: 200ms}")
    governor = await governed(quota)
    await asyncio.sleep(0.1)
    held = await governor.acquire(quota, "svc", "pool", "a", None)
    assert isinstance(held, Ticket)
    refused = await governor.acquire(quota, "svc", "pool", "b", None)
    assert isinstance(refused, QuotaRefusal)
    assert refused.scope == IN_FLIGHT
    held.release()
    again = await governor.acquire(quota, "svc", "pool", "b", None)
    assert isinstance(again, Ticket)
    again.release()
    await governor.close()


@run
async def test_when_the_grace_begins_waiting_calls_are_refused_at_once(tmp_path: Path) -> None:
    quota = compiled(tmp_path, "rate: 1\nburst: 1\nothers: {maxInFlight: 1}\nqueue: {maxWait: 30s}")
    governor = await governed(quota)
    await asyncio.sleep(1.1)
    held = await governor.acquire(quota, "svc", "pool", "a", None)  # the only slot
    assert isinstance(held, Ticket)
    waiting = [
        asyncio.ensure_future(governor.acquire(quota, "svc", "pool", f"u{n}", None))
        for n in range(4)
    ]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    governor.stop_waiting()
    answers = await asyncio.gather(*waiting)
    assert time.monotonic() - started < 1.0  # not held for the whole 30 s
    assert all(isinstance(a, QuotaRefusal) for a in answers)
    assert isinstance(await governor.acquire(quota, "svc", "pool", "new", None), QuotaRefusal)
    held.release()
    assert governor.shares[-1].bulkhead.in_flight == 0
    await governor.close()
