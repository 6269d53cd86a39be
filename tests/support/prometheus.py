"""Read a running attrgate's /metrics: the raw text, or its samples as a Prometheus parser sees
them."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def samples_of(text: str) -> Samples:
    """Every sample by name, with its labels and value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    """The sum of the samples whose labels include `labels`."""
    return sum(v for found, v in samples if all(found.get(k) == x for k, x in labels.items()))
