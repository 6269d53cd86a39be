"""deploy/grafana/attrgate.json: the output of scripts/grafana_dashboard.py (built with
grafana-foundation-sdk, Grafana's schema types, so a valid dashboard), loadable by the SDK's own
model, and every metric its queries name is one a running attrgate exports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from support.observed import Observed, metric_names, observed_attrgate
from support.prometheus import named_metrics, promtool

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "attrgate.json"


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_the_dashboard_is_the_generators_output() -> None:
    generated = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "grafana_dashboard.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert DASHBOARD.read_text() == generated, (
        "deploy/grafana/attrgate.json is stale: python scripts/grafana_dashboard.py > "
        "deploy/grafana/attrgate.json"
    )


def test_the_sdk_loads_every_field_of_it() -> None:
    """Grafana's dashboard model reads the file back to the same JSON: no field it does not
    know, none it would drop."""
    data = json.loads(DASHBOARD.read_text())
    loaded = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data)))
    assert loaded == data


def test_a_misspelt_panel_field_is_caught() -> None:
    """The premise of the test above (a query's own fields are the metrics test's to judge)."""
    data = json.loads(DASHBOARD.read_text())
    data["panels"][1]["gridPoss"] = data["panels"][1].pop("gridPos")
    assert json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data))) != data


def test_the_dashboard_answers_the_issue_s_questions() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"] for p in panels(dashboard)).lower()
    for subject in (
        "caller",
        "denials by reason",
        "latency",
        "cognito calls by operation and error code",
        "sms",
        "budget",
        "quota",
        "reloads",
        "revision",
    ):
        assert subject in titles, subject
    uses_datasource = [t["datasource"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert uses_datasource
    assert all(d == {"type": "prometheus", "uid": "${datasource}"} for d in uses_datasource)


def test_every_query_is_promql_prometheus_parses(tmp_path: Path) -> None:
    """Each query, Grafana's variables given values, as a recording rule promtool checks."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(exprs) >= 20
    concrete = [
        e.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$caller", ".*")
        for e in exprs
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"q:{i}", "expr": e} for i, e in enumerate(concrete)],
            }
        ]
    }
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(tmp_path / "queries.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    with observed_attrgate(tmp_path_factory.mktemp("observed")) as server:
        yield server


def test_every_metric_the_dashboard_queries_is_exported(observed: Observed) -> None:
    exported = metric_names(observed.scrape())
    named = set().union(*map(named_metrics, queries(json.loads(DASHBOARD.read_text()))))
    assert len(named) >= 15
    assert not named - exported, sorted(named - exported)
