"""The store's circuit breaker (store/breaker.py), driven call by call with an injected clock:
closed until N failures in a row, then open (refusing) for the cooldown, then half open (one
trial at a time), closed by a success, reopened by a failure."""

from __future__ import annotations

import math

import pytest

from attrgate.store.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opened(clock: Clock, failures: int = 3, cooldown: float = 1.0, **options: float) -> Breaker:
    breaker = Breaker(failures, cooldown, clock, **options)
    for _ in range(failures):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == OPEN
    return breaker


def test_it_opens_after_n_failures_in_a_row_not_before(clock: Clock) -> None:
    breaker = Breaker(3, 1.0, clock)
    assert breaker.state == CLOSED
    breaker.failed()
    breaker.failed()
    assert breaker.state == CLOSED
    assert breaker.allow()
    assert breaker.retry_in() == 0.0
    breaker.failed()
    assert breaker.state == OPEN
    assert not breaker.allow()


def test_a_success_between_failures_starts_the_count_again(clock: Clock) -> None:
    breaker = Breaker(3, 1.0, clock)
    for _ in range(5):
        breaker.failed()
        breaker.failed()
        breaker.succeeded()
    assert breaker.state == CLOSED
    breaker.failed()
    breaker.failed()
    assert breaker.allow()


def test_open_refuses_every_call_for_the_cooldown(clock: Clock) -> None:
    breaker = opened(clock, cooldown=2.0)
    for step in range(1, 16):  # steps of 1/8 s: exact in binary
        clock.now += 0.125
        assert not breaker.allow(), f"let through {0.125 * step}s into a 2s cooldown"
        assert breaker.retry_in() == 2.0 - 0.125 * step
    clock.now += 0.125
    assert breaker.state == HALF_OPEN
    assert breaker.retry_in() == 0.0


def test_half_open_lets_exactly_one_trial_through(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 1.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the trial
    for _ in range(10):
        assert not breaker.allow()
        clock.now += 0.05
    assert breaker.state == HALF_OPEN
    assert breaker.retry_in() > 0  # the next trial waits for this one


def test_a_successful_trial_closes_it(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 1.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(10))
    # and it takes N fresh failures to open it again
    breaker.failed()
    breaker.failed()
    assert breaker.state == CLOSED


def test_a_failed_trial_opens_it_again_for_a_whole_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 1.5
    assert breaker.allow()
    clock.now += 0.3  # the trial takes a while to fail
    breaker.failed()  # one failure is enough now, not N
    assert breaker.state == OPEN
    assert breaker.retry_in() == pytest.approx(1.0)
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.allow()


def test_a_trial_that_never_reports_stops_blocking_after_another_cooldown(clock: Clock) -> None:
    """Its caller was cancelled: neither succeeded() nor failed() ever comes."""
    breaker = opened(clock)
    clock.now += 1.0
    assert breaker.allow()  # the trial, lost
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.allow()  # a second trial
    assert not breaker.allow()  # and only one
    breaker.succeeded()
    assert breaker.state == CLOSED


def test_a_trial_may_be_given_longer_than_the_cooldown(clock: Clock) -> None:
    """A store call may take the whole store timeout: a slow trial is not joined by another."""
    breaker = opened(clock, cooldown=1.0, trial_timeout=4.0)
    clock.now += 1.0
    assert breaker.allow()
    clock.now += 3.9
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow()


def test_a_success_closes_it_from_any_state(clock: Clock) -> None:
    """The probe's answer closes it although the probe never asked allow()."""
    breaker = opened(clock)
    breaker.succeeded()  # while open
    assert breaker.state == CLOSED
    assert breaker.allow()


def test_failures_while_open_keep_it_open(clock: Clock) -> None:
    """A failing probe (or a call that was already out) proves the store still down."""
    breaker = opened(clock)
    clock.now += 0.9
    breaker.failed()
    clock.now += 0.9
    assert not breaker.allow()
    assert breaker.state == OPEN


def test_one_failure_may_be_enough(clock: Clock) -> None:
    breaker = Breaker(1, 0.5, clock)
    breaker.failed()
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


@pytest.mark.parametrize(
    ("failures", "cooldown", "trial_timeout"),
    [
        (0, 1.0, None),
        (3, 0.0, None),
        (3, -1.0, None),
        (3, math.nan, None),  # compares false both ways: it would never open
        (3, math.inf, None),
        (3, 1.0, 0.0),
        (3, 1.0, math.nan),
    ],
)
def test_nonsense_is_refused(failures: int, cooldown: float, trial_timeout: float | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        Breaker(failures, cooldown, trial_timeout=trial_timeout)
