"""Weighted max-min fairness with reserved floors and ceilings: how a capacity (requests per
second) is split among classes of callers, given what each wants. Pure arithmetic.

1. Every class first gets its floor (reserved), demand or not: the others never borrow it, so a
   critical caller that starts never waits for the fleet to rebalance.
2. The rest is filled by weight (progressive filling): classes that want less than their
   weighted part get what they want, and what they leave is shared among the others, again by
   weight, until every class is satisfied or the capacity is gone.
3. Capacity still left (every class satisfied) is handed out by weight to classes below their
   ceiling, as headroom: demand is measured a moment late, and spare capacity unused helps
   nobody.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class ClassSpec:
    weight: float
    floor: float = 0.0  # requests per second kept for the class
    ceiling: float = math.inf  # requests per second, at most


def allocate(
    capacity: float, classes: Sequence[ClassSpec], demands: Sequence[float]
) -> list[float]:
    """Each class's rate; the rates add up to at most `capacity`."""
    if capacity <= 0 or not classes:
        return [0.0] * len(classes)
    give = [min(c.floor, c.ceiling) for c in classes]
    floors = sum(give)
    if floors >= capacity:  # capacity cut below the floors (adaptive): floors shrink alike
        return [g * capacity / floors for g in give]
    left = capacity - floors
    want = [max(0.0, min(d, c.ceiling) - g) for c, d, g in zip(classes, demands, give, strict=True)]
    left = _fill(left, classes, give, want)
    if left > EPSILON:  # everyone satisfied: the rest as headroom, up to the ceilings
        room = [c.ceiling - g for c, g in zip(classes, give, strict=True)]
        _fill(left, classes, give, room)
    return give


def _fill(left: float, classes: Sequence[ClassSpec], give: list[float], want: list[float]) -> float:
    """Progressive filling of `left` by weight into `want`; what is left over."""
    active = [i for i, w in enumerate(want) if w > EPSILON]
    while left > EPSILON and active:
        weights = sum(classes[i].weight for i in active)
        part = {i: left * classes[i].weight / weights for i in active}
        satisfied = [i for i in active if want[i] <= part[i] + EPSILON]
        if not satisfied:
            for i in active:
                give[i] += part[i]
                want[i] -= part[i]
            return 0.0
        for i in satisfied:
            give[i] += want[i]
            left -= want[i]
            want[i] = 0.0
        active = [i for i in active if want[i] > EPSILON]
    return max(left, 0.0)


def split(
    allocation: Sequence[float],
    mine: Sequence[float],
    everyone: Sequence[Sequence[float]],
    idle_weight: float,
) -> list[float]:
    """This replica's part of each class's fleet allocation: in proportion to its demand among
    all replicas' (`everyone` includes `mine`), each replica counting `idle_weight` requests per
    second more than it measured, so a replica without demand keeps a little (new traffic
    starts at once) and idle classes are split evenly."""
    replicas = max(len(everyone), 1)
    parts = []
    for i, rate in enumerate(allocation):
        total = sum(row[i] for row in everyone) + replicas * idle_weight
        parts.append(rate * (mine[i] + idle_weight) / total if total > 0 else rate / replicas)
    return parts
