"""The quota governor's parts, one by one: fair shares, the share gate, per-user pacing (GCRA),
the adaptive factor, demand and the bulkhead. Clocks are injected where time matters."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attrgate.quota.adaptive import DECREASE, FLOOR, INCREASE, Adaptive
from attrgate.quota.bucket import Refused, ShareGate, TokenBucket
from attrgate.quota.bulkhead import Bulkhead
from attrgate.quota.demand import Demand
from attrgate.quota.fairshare import ClassSpec, allocate, split
from attrgate.quota.pacing import LocalPacing, gcra


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """An async test, run on a loop of its own."""

    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- fair shares ------------------------------------------------------------------------------


def test_two_equal_classes_the_quiet_one_gets_its_demand_and_the_noisy_one_the_rest() -> None:
    rates = allocate(25, [ClassSpec(1), ClassSpec(1)], [200, 5])
    assert rates == pytest.approx([20, 5])


def test_weights_share_what_is_contended() -> None:
    rates = allocate(25, [ClassSpec(4), ClassSpec(1)], [100, 100])
    assert rates == pytest.approx([20, 5])


def test_three_classes_max_min_with_weights() -> None:
    # c wants 3 (under its part), a and b split the other 22 by weight 2:1.
    rates = allocate(25, [ClassSpec(2), ClassSpec(1), ClassSpec(1)], [100, 100, 3])
    assert rates == pytest.approx([22 * 2 / 3, 22 / 3, 3])


def test_a_reserved_floor_is_kept_without_demand_and_never_lent() -> None:
    rates = allocate(25, [ClassSpec(1, floor=5), ClassSpec(1)], [0, 200])
    assert rates == pytest.approx([5, 20])


def test_a_reserved_floor_holds_under_contention_whatever_the_weights() -> None:
    rates = allocate(25, [ClassSpec(1, floor=5), ClassSpec(100)], [200, 200])
    assert rates[0] >= 5
    assert sum(rates) == pytest.approx(25)


def test_a_ceiling_caps_whatever_is_free() -> None:
    rates = allocate(25, [ClassSpec(1, ceiling=5), ClassSpec(1)], [200, 1])
    assert rates[0] == pytest.approx(5)


def test_spare_capacity_is_headroom_by_weight_up_to_the_ceilings() -> None:
    rates = allocate(25, [ClassSpec(1, ceiling=5), ClassSpec(1)], [1, 1])
    assert rates == pytest.approx([5, 20])


def test_floors_shrink_alike_when_the_capacity_drops_below_them() -> None:
    rates = allocate(4, [ClassSpec(1, floor=5), ClassSpec(1, floor=5)], [9, 9])
    assert rates == pytest.approx([2, 2])


@given(
    capacity=st.floats(0.1, 1000),
    classes=st.lists(
        st.tuples(
            st.floats(0.01, 100),
            st.floats(0, 0.3),
            st.one_of(st.just(math.inf), st.floats(0.1, 500)),
            st.floats(0, 2000),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_allocation_properties(
    capacity: float, classes: list[tuple[float, float, float, float]]
) -> None:
    specs = [ClassSpec(w, floor=min(f * capacity, c), ceiling=c) for w, f, c, _ in classes]
    demands = [d for *_, d in classes]
    rates = allocate(capacity, specs, demands)
    assert sum(rates) <= capacity * (1 + 1e-9) + 1e-9
    for spec, rate, _demand in zip(specs, rates, demands, strict=True):
        assert rate <= spec.ceiling + 1e-6
        if sum(s.floor for s in specs) <= capacity:
            assert rate >= spec.floor - 1e-6
    # Weighted max-min above the floors: a class that got less than it wanted got, per unit of
    # weight, at least as much above its floor as any other class did (nobody under its share is
    # starved by one over it).
    if sum(s.floor for s in specs) <= capacity:
        for si, ri, di in zip(specs, rates, demands, strict=True):
            if ri + 1e-6 < min(di, si.ceiling):
                level = (ri - si.floor) / si.weight
                for sj, rj in zip(specs, rates, strict=True):
                    assert (rj - sj.floor) / sj.weight <= level + 1e-6


def test_split_follows_demand_and_keeps_a_little_for_idle_replicas() -> None:
    mine = split([20.0], [100.0], [[100.0], [0.0]], idle_weight=0.5)
    other = split([20.0], [0.0], [[100.0], [0.0]], idle_weight=0.5)
    assert mine[0] + other[0] == pytest.approx(20)
    assert mine[0] > 19
    assert other[0] > 0


def test_split_of_an_idle_class_is_even() -> None:
    assert split([6.0], [0.0], [[0.0], [0.0], [0.0]], 0.5) == pytest.approx([2.0])


# --- the share gate ---------------------------------------------------------------------------


def test_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(clock)
    bucket.set_rate(10, 2)
    assert not bucket.try_take()
    clock.now += 10
    assert bucket.try_take()
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.now += 0.1
    assert bucket.try_take()
    assert bucket.seconds_for(1) == pytest.approx(0.1)


def test_a_bucket_at_rate_zero_never_refills() -> None:
    bucket = TokenBucket(Clock())
    bucket.set_rate(0, 1)
    assert bucket.seconds_for(1) == math.inf


@run
async def test_gate_serves_in_order_at_the_rate_and_refuses_what_cannot_make_it() -> None:
    gate = ShareGate()
    gate.set_rate(20, 1)  # one token every 50 ms
    await asyncio.sleep(0.06)
    served: list[int] = []

    async def call(i: int) -> None:
        await gate.take(1.0)
        served.append(i)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(call(i) for i in range(5)))
    assert served == [0, 1, 2, 3, 4]  # FIFO
    assert loop.time() - started >= 0.15  # 4 more tokens at 20/s
    # 100 in line at 20/s: the last would wait 5 s; with 0.5 s allowed it is refused at once.
    waiting = [asyncio.ensure_future(gate.take(10)) for _ in range(100)]
    await asyncio.sleep(0)
    with pytest.raises(Refused) as refused:
        await gate.take(0.5)
    assert refused.value.retry_after > 4
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert gate.waiting == 0
    gate.close()


@run
async def test_a_rate_raised_while_calls_wait_serves_them_sooner() -> None:
    gate = ShareGate()
    gate.set_rate(0, 1)  # no lease yet
    task = asyncio.ensure_future(gate.take(5))
    await asyncio.sleep(0.05)
    assert not task.done()
    gate.set_rate(100, 1)
    waited = await asyncio.wait_for(task, 2)
    assert waited < 1
    gate.close()


@run
async def test_a_call_that_waits_past_its_time_is_refused_and_leaves_the_line() -> None:
    gate = ShareGate()
    gate.set_rate(0, 1)
    with pytest.raises(Refused):
        await gate.take(0.05)
    assert gate.waiting == 0
    gate.close()


# --- per-user pacing --------------------------------------------------------------------------


def test_gcra_paces_at_the_interval_after_the_burst() -> None:
    tat = None
    slots = []
    for _ in range(5):
        slot, tat = gcra(tat, 0, interval_ms=100, tolerance_ms=100, wait_ms=1000)
        slots.append(slot.at_ms)
    assert slots == [0, 0, 100, 200, 300]  # burst 2, then every 100 ms


def test_gcra_refuses_beyond_the_wait_and_changes_nothing() -> None:
    slot, tat = gcra(1000, 0, interval_ms=100, tolerance_ms=0, wait_ms=500)
    assert not slot.ok
    assert slot.at_ms == 1000
    assert tat is None


def test_local_pacing_forgets_users_whose_turn_has_passed() -> None:
    pacing = LocalPacing(max_users=10)
    for user in range(50):
        pacing.schedule(f"u{user}", 0, 100, 0, 1000)
    assert len(pacing) <= 10
    pacing.schedule("late", 10_000, 100, 0, 1000)
    assert len(pacing) == 1


# --- adaptive ---------------------------------------------------------------------------------


def test_adaptive_drops_once_per_burst_of_throttles_and_climbs_back() -> None:
    clock = Clock()
    adaptive = Adaptive(clock)
    for n in range(10):
        adaptive.throttled(f"user{n}")  # one burst: one decrease
    assert adaptive.factor() == pytest.approx(DECREASE)
    clock.now += 1.0
    adaptive.throttled("a")  # a second signal: it climbed a step during the second, then dropped
    second = (DECREASE + INCREASE) * DECREASE
    assert adaptive.factor() == pytest.approx(second)
    clock.now += 0.5
    assert adaptive.factor() == pytest.approx(second)  # held right after a throttle
    clock.now += 30
    assert adaptive.factor() == 1.0


def test_adaptive_settles_where_throttles_and_climbing_balance_and_never_below_its_floor() -> None:
    clock = Clock()
    adaptive = Adaptive(clock)
    for n in range(100):
        clock.now += 1.0
        adaptive.throttled(f"user{n}")
    # f = (f + INCREASE) * DECREASE
    assert adaptive.factor() == pytest.approx(INCREASE * DECREASE / (1 - DECREASE))
    for n in range(100):
        clock.now += 0.01  # a storm faster than the hold: one signal per second at most
        adaptive.throttled(f"u{n}")
    assert adaptive.factor() >= FLOOR


def test_throttles_of_one_user_are_that_users_not_the_accounts() -> None:
    clock = Clock()
    adaptive = Adaptive(clock)
    adaptive.throttled("hot-user")  # the first throttle of a user is a signal...
    assert adaptive.factor() == pytest.approx(DECREASE)
    for _ in range(40):
        clock.now += 0.1
        adaptive.throttled("hot-user")  # ...its repeats are Cognito's per-user limit
    assert adaptive.factor() > DECREASE  # climbing back, not cut again
    adaptive.throttled("another")
    assert adaptive.factor() < DECREASE


# --- demand and the bulkhead ------------------------------------------------------------------


def test_demand_is_calls_per_second_over_its_window() -> None:
    clock = Clock()
    demand = Demand(clock)
    for _ in range(40):
        demand.arrived()
        clock.now += 0.05
    assert demand.rate() == pytest.approx(20, rel=0.15)
    clock.now += 5
    assert demand.rate() == 0


@run
async def test_bulkhead_bounds_calls_under_way_and_hands_slots_on_in_order() -> None:
    bulkhead = Bulkhead(2)
    assert await bulkhead.enter(0)
    assert await bulkhead.enter(0)
    assert not await bulkhead.enter(0)
    third = asyncio.ensure_future(bulkhead.enter(5))
    await asyncio.sleep(0.01)
    assert not third.done()
    bulkhead.leave()
    assert await asyncio.wait_for(third, 1)
    assert bulkhead.in_flight == 2
    assert not await bulkhead.enter(0.05)  # timed out, and out of the line
    bulkhead.leave()
    bulkhead.leave()
    assert bulkhead.in_flight == 0


@run
async def test_a_cancelled_waiter_never_keeps_a_bulkhead_slot() -> None:
    bulkhead = Bulkhead(1)
    assert await bulkhead.enter(0)
    waiter = asyncio.ensure_future(bulkhead.enter(5))
    await asyncio.sleep(0.01)
    bulkhead.leave()  # hands the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.in_flight == 0


def test_local_pacing_goes_on_from_what_the_fleet_store_scheduled() -> None:
    pacing = LocalPacing()
    pacing.note("u", 5000, now_ms=1000)
    assert pacing.tat("u") == 5000
    assert pacing.schedule("u", 1000, 100, 0, 10_000).at_ms == 5000
    pacing.note("u", 10, now_ms=1000)  # an older TAT changes nothing
    assert pacing.tat("u") == 5100
