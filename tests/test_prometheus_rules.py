"""deploy/prometheus/attrgate-rules.yaml: promtool checks the rules and runs their unit tests
(attrgate-rules.test.yaml); every metric they name is one a running attrgate exports; and a real
Prometheus scraping a running attrgate evaluates them: the recording rules fill, and a rejected
policy reload fires AttrgatePolicyReloadFailed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.moto_cognito import free_port
from support.observed import Observed, metric_names, observed_attrgate
from support.prometheus import named_metrics, promtool
from support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "attrgate-rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "attrgate-rules.test.yaml"


def expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The premise: a rule that drifts from what its tests expect fails them."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 0.5", "> 0.9"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "AttrgateDenialSpike" in result.stdout + result.stderr


# --- against a running attrgate ------------------------------------------------------------


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    with observed_attrgate(tmp_path_factory.mktemp("observed")) as server:
        yield server


def test_every_metric_the_rules_name_is_exported(observed: Observed) -> None:
    exported = metric_names(observed.scrape())
    named = set().union(*map(named_metrics, expressions()))
    assert len(named) >= 10
    assert not named - exported, sorted(named - exported)


class Prometheus:
    def __init__(self, folder: Path, target: str) -> None:
        if shutil.which("prometheus") is None:
            pytest.fail("prometheus is not installed (.ci/run installs Debian's prometheus)")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "attrgate", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = folder / "prometheus.log"
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (http://, built here)
            return json.loads(answer.read())["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def firing(self) -> set[str]:
        return {
            a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_a_real_prometheus_scrapes_attrgate_and_fires_a_rule(
    observed: Observed, tmp_path: Path
) -> None:
    metrics = f"127.0.0.1:{observed.metrics_port}"
    prometheus = Prometheus(tmp_path, metrics)
    try:
        assert wait_until(prometheus.ready, 30), prometheus.log.read_text()[-2000:]
        # The scrape works and the recording rules fill from attrgate's own series.
        assert wait_until(
            lambda: bool(prometheus.api("query", query='up{job="attrgate"} == 1')["result"]), 30
        )
        assert wait_until(
            lambda: bool(prometheus.api("query", query="attrgate:requests:rate5m")["result"]), 30
        )
        groups = prometheus.api("rules")["groups"]
        assert {g["name"] for g in groups} == {"attrgate.rules", "attrgate.alerts"}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        # A policy change that does not load: the last good set serves, the alert fires.
        (observed.policies / "broken.yaml").write_text("apiVersion: attrgate/v1\nkind: Nope\n")
        observed.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "AttrgatePolicyReloadFailed" in prometheus.firing(), 60), (
            prometheus.api("alerts")
        )
    finally:
        (observed.policies / "broken.yaml").unlink(missing_ok=True)
        prometheus.stop()
