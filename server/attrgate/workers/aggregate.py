"""One /metrics for all workers: their expositions merged into one.

Counters, histograms and summaries add up per series (the same name and labels). Gauges add up
too, unless GAUGES says otherwise: a gauge that states something (which policy set serves,
whether the SMS store answers) is not a quantity. `_created` samples take the earliest. A series
only some workers have is merged from those.

The workers render their expositions with prometheus_client's text format, which writes each
series' labels sorted and escaped the same way: the text of a series up to its value is its
key, and merging needs no label parsing (prometheus_client's own parser costs about ten times
as much per line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SUM, MIN, MAX, FIRST = "sum", "min", "max", "first"
# How each gauge merges (a test fails on a gauge of attrgate's that is not named here).
GAUGES: dict[str, str] = {
    # quantities of each worker: the pod's are their sum
    "attrgate_in_flight_requests": SUM,
    "attrgate_quota_rate": SUM,
    "attrgate_quota_demand": SUM,
    "attrgate_quota_in_flight": SUM,
    # 0 when one worker's store fails; the most lowered rate
    "attrgate_sms_store_up": MIN,
    "attrgate_quota_adaptive_factor": MIN,
    # states the workers share; while they differ (a reload reaching one first), each one's
    # series shows (policy_set by revision, quota_mode by mode)
    "attrgate_policy_set": MAX,
    "attrgate_shadow_mode": MAX,
    "attrgate_quota_mode": MAX,
    "attrgate_quota_configured_rate": MAX,
    # the process's resource attributes (a service.instance.id each): the first worker's
    "target_info": FIRST,
}
_COMBINE: dict[str, Callable[[float, float], float]] = {
    SUM: lambda a, b: a + b,
    MIN: min,
    MAX: max,
    FIRST: lambda a, b: a,
}


@dataclass
class _Family:
    header: list[str]  # its HELP and TYPE lines, as the first worker wrote them
    rule: str
    values: dict[str, float] = field(default_factory=dict)  # series -> value


def merge(texts: Sequence[str], extra: str = "") -> bytes:
    """The workers' expositions (Prometheus text format 0.0.4) as one, `extra` (lines in the
    same format) after them."""
    families: dict[str, _Family] = {}
    for index, text in enumerate(texts):
        family: _Family | None = None
        help_line = ""
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) == 4 and parts[1] == "HELP":
                    help_line = line
                elif len(parts) == 4 and parts[1] == "TYPE":
                    name, kind = parts[2], parts[3]
                    family = families.get(name)
                    if family is None:
                        rule = GAUGES.get(name, SUM) if kind == "gauge" else SUM
                        header = [help_line, line] if help_line else [line]
                        family = families[name] = _Family(header, rule)
                    help_line = ""
                    if family.rule == FIRST and index:
                        family = None  # skip its samples
                continue
            if not line or family is None:
                continue
            series, value = _sample(line)
            old = family.values.get(series)
            if old is None:
                family.values[series] = value
            elif series.partition("{")[0].endswith("_created"):
                family.values[series] = min(old, value)
            else:
                family.values[series] = _COMBINE[family.rule](old, value)
    out: list[str] = []
    for family in families.values():
        out.extend(family.header)
        out.extend(f"{series} {_number(v)}" for series, v in family.values.items())
    return ("\n".join(out) + "\n" + extra).encode()


def _sample(line: str) -> tuple[str, float]:
    """`name{labels} value [timestamp]` -> (`name{labels}`, value). A label value may hold
    spaces and braces, never after the last `}`."""
    end = line.rfind("}") + 1 if "{" in line else line.find(" ")
    return line[:end], float(line[end:].split()[0])


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
