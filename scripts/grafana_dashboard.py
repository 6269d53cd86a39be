"""deploy/grafana/attrgate.json, built with grafana-foundation-sdk (a dashboard Grafana's own
schema types describe), so that its JSON is valid by construction:

    python scripts/grafana_dashboard.py > deploy/grafana/attrgate.json

tests/test_grafana_dashboard.py checks that the file is this script's output, and that every
metric its queries name is one a running attrgate exports."""

from __future__ import annotations

import sys

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'job=~"$job"'


def query(expr: str, legend: str = "") -> Dataquery:
    built = Dataquery().expr(expr).datasource(PROMETHEUS)
    return built.legend_format(legend) if legend else built


def series(title: str, unit: str, *queries: Dataquery, description: str = "") -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(PROMETHEUS).span(8).height(8)
    if description:
        panel = panel.description(description)
    for each in queries:
        panel = panel.with_target(each)
    return panel


def stat(title: str, unit: str, expr: str, legend: str, description: str = "") -> Stat:
    panel = (
        Stat()
        .title(title)
        .unit(unit)
        .datasource(PROMETHEUS)
        .span(8)
        .height(8)
        .with_target(query(expr, legend))
    )
    return panel.description(description) if description else panel


def quantile(q: float, histogram: str, by: str = "") -> str:
    keys = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({keys}) "
        f"(rate({histogram}_bucket{{{JOB}}}[$__rate_interval])))"
    )


def spent(which: str) -> str:
    """The SMS budget's `reserved` or `released` micros per second, by guard, over 6 hours."""
    return f"sum by (guard) (rate(attrgate_sms_budget_{which}_micros_total{{{JOB}}}[6h]))"


def rate(counter: str, by: str, where: str = "") -> str:
    selector = f"{JOB}, {where}" if where else JOB
    return f"sum by ({by}) (rate({counter}{{{selector}}}[$__rate_interval]))"


def dashboard() -> Dashboard:
    return (
        Dashboard("attrgate")
        .uid("attrgate")
        .description(
            "Who is being denied, what Cognito is saying, how close the SMS budget is: "
            "attrgate's own metrics (README, Traces and metrics)."
        )
        .tags(["attrgate", "cognito"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            QueryVariable("job")
            .label("job")
            .datasource(PROMETHEUS)
            .query("label_values(attrgate_policy_set, job)")  # there before any request
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            QueryVariable("caller")
            .label("caller")
            .datasource(PROMETHEUS)
            .query(f"label_values(attrgate_requests_total{{{JOB}}}, caller)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
        )
        .with_row(Row("Requests and decisions"))
        .with_panel(
            series(
                "Requests by caller and outcome",
                "reqps",
                query(
                    rate("attrgate_requests_total", "caller, outcome", 'caller=~"$caller"'),
                    "{{caller}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Denials by reason",
                "reqps",
                query(
                    rate(
                        "attrgate_requests_total",
                        "reason, caller",
                        'outcome="denied", caller=~"$caller"',
                    ),
                    "{{reason}} ({{caller}})",
                ),
                description="Denied requests by the reason the caller got (README, Reasons).",
            )
        )
        .with_panel(
            series(
                "Latency: decision and end to end (p50, p99)",
                "s",
                query(quantile(0.5, "attrgate_decision_duration_seconds"), "decision p50"),
                query(quantile(0.99, "attrgate_decision_duration_seconds"), "decision p99"),
                query(quantile(0.5, "attrgate_request_duration_seconds"), "end to end p50"),
                query(quantile(0.99, "attrgate_request_duration_seconds"), "end to end p99"),
            )
        )
        .with_row(Row("Cognito"))
        .with_panel(
            series(
                "Cognito calls by operation and error code",
                "reqps",
                query(
                    rate("attrgate_cognito_calls_total", "operation, error_code"),
                    "{{operation}} {{error_code}}",
                ),
                description="error_code none: answered; TooManyRequestsException: throttled.",
            )
        )
        .with_panel(
            series(
                "Cognito call latency (p99)",
                "s",
                query(
                    quantile(0.99, "attrgate_cognito_call_duration_seconds", "operation"),
                    "{{operation}}",
                ),
            )
        )
        .with_panel(
            series(
                "Metadata lookups by answer",
                "reqps",
                query(
                    rate("attrgate_metadata_lookups_total", "operation, answer"),
                    "{{operation}} {{answer}}",
                ),
            )
        )
        .with_row(Row("SMS"))
        .with_panel(
            series(
                "SMS-triggering writes: sent and refused",
                "reqps",
                query(rate("attrgate_sms_decisions_total", "outcome"), "{{outcome}}"),
                description="allowed: sent on to Cognito; refused: by an SmsGuard's countries, "
                "limits or budget; denied: by another stage.",
            )
        )
        .with_panel(
            stat(
                "SMS budget: 30 days at the last 6 hours' pace",
                "percentunit",
                f"({spent('reserved')} - ({spent('released')} or 0 * {spent('reserved')}))"
                f" * 86400 * 30"
                f' / max by (guard) (attrgate_sms_budget_micros{{{JOB}, window="month"}})',
                "{{guard}}",
                description="Spending (reserved minus given back) kept up for 30 days, as a "
                "share of each guard's monthly budget: what AttrgateSmsBudgetBurn pages on above "
                "100 %. `attrgate sms usage` reads the month so far from the store.",
            )
        )
        .with_panel(
            series(
                "SMS store up, by instance",
                "bool",
                query(f"attrgate_sms_store_up{{{JOB}}}", "{{instance}}"),
            )
        )
        .with_row(Row("Cognito quota"))
        .with_panel(
            series(
                "Quota tokens by share and result",
                "reqps",
                query(rate("attrgate_quota_tokens_total", "share, result"), "{{share}} {{result}}"),
            )
        )
        .with_panel(
            series(
                "Quota rate, demand and calls in flight by share",
                "short",
                query(f"sum by (share) (attrgate_quota_rate{{{JOB}}})", "{{share}} rate"),
                query(f"sum by (share) (attrgate_quota_demand{{{JOB}}})", "{{share}} demand"),
                query(f"sum by (share) (attrgate_quota_in_flight{{{JOB}}})", "{{share}} in flight"),
            )
        )
        .with_panel(
            series(
                "Quota wait (p99)",
                "s",
                query(quantile(0.99, "attrgate_quota_wait_seconds", "share"), "{{share}}"),
            )
        )
        .with_panel(
            series(
                "Quota mode, by instance",
                "none",
                query(f"attrgate_quota_mode{{{JOB}}} > 0", "{{instance}} {{mode}}"),
                description="fleet: leases through Redis; emergency: Redis does not answer "
                "(rate / --quota-replicas); local: no Redis.",
            )
        )
        .with_row(Row("Policies and the server"))
        .with_panel(
            stat(
                "Serving policy revision",
                "none",
                f"count by (revision) (attrgate_policy_set{{{JOB}}})",
                "{{revision}}",
                description="One value per revision served: more than one during a rollout.",
            )
        )
        .with_panel(
            series(
                "Policy reloads by result",
                "short",
                query(
                    f"sum by (set, result) (increase(attrgate_policy_reloads_total{{{JOB}}}"
                    "[$__rate_interval]))",
                    "{{set}} {{result}}",
                ),
                query(
                    f"sum(increase(attrgate_decision_log_dropped_total{{{JOB}}}[$__rate_interval]))",
                    "decision-log entries dropped",
                ),
            )
        )
        .with_panel(
            series(
                "Requests in flight, shadow mode",
                "short",
                query(f"sum by (method) (attrgate_in_flight_requests{{{JOB}}})", "{{method}}"),
                query(f"max(attrgate_shadow_mode{{{JOB}}})", "shadow mode"),
            )
        )
    )


def main() -> None:
    sys.stdout.write(JSONEncoder(sort_keys=True, indent=2).encode(dashboard().build()) + "\n")


if __name__ == "__main__":
    main()
