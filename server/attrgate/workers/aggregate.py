"""One /metrics for all workers: their expositions merged into one.

Counters, histograms and summaries add up per series (the same name and labels). Gauges add up
too, unless GAUGES says otherwise: a gauge that states something (which policy set serves,
whether the SMS store answers) is not a quantity. `_created` samples take the earliest. A series
only some workers have is merged from those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

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
}


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    rule: str
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.type)
        metric.samples = [
            Sample(name, dict(labels), value) for (name, labels), value in self.values.items()
        ]
        return metric


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(texts: Sequence[str], extra: Iterable[Metric] = ()) -> bytes:
    """The workers' expositions (Prometheus text format) as one, and `extra` families after
    them."""
    families: dict[str, _Family] = {}
    for index, text in enumerate(texts):
        for parsed in text_string_to_metric_families(text):
            rule = GAUGES.get(parsed.name, SUM) if parsed.type == "gauge" else SUM
            if rule == FIRST and index:
                continue
            family = families.get(parsed.name)
            if family is None:
                family = families[parsed.name] = _Family(
                    parsed.name, parsed.documentation, parsed.type, rule
                )
            for sample in parsed.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = family.values.get(key)
                if old is None:
                    family.values[key] = sample.value
                elif sample.name.endswith("_created"):
                    family.values[key] = min(old, sample.value)
                else:
                    family.values[key] = _COMBINE[rule](old, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*(f.metric() for f in families.values()), *extra]))
    return generate_latest(registry)
