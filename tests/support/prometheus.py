"""Read a running attrgate's /metrics: the raw text, or its samples as a Prometheus parser sees
them; the metrics a PromQL expression names; promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

# A metric a query or rule names (recording rules' names hold a colon: not matched).
METRIC_NAME = re.compile(r"\b(attrgate_[a-z_]+)\b")

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


def named_metrics(expression: str) -> set[str]:
    """attrgate's metrics that a PromQL expression names."""
    return set(METRIC_NAME.findall(expression))


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool's answer; the test fails (never skips) where it is not installed."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus)")
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
