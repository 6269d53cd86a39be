"""OpenTelemetry metrics, served for Prometheus on --metrics-listen (/metrics).

Every metric is named attrgate_*; labels are bounded: method, outcome, gRPC code, ErrorInfo
reason, Cognito error code, and a caller label drawn from the policies: the caller when a policy
names it exactly, else the `callers` glob it matched, else `unmatched` (anyone can present any
name, so only the policy sets may mint series: the serving set's names first, then the candidate
set's, so a caller only the candidate names is counted under its own name). No usernames, no
values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.view import View
from prometheus_client import CollectorRegistry, start_http_server

from attrgate.config import split_host_port
from attrgate.domain import Reserved
from attrgate.histograms import SecondsHistogram
from attrgate.lookups import Answer
from attrgate.policy.compile import PolicySet
from attrgate.tracing import service_resource

# Decisions take tens of microseconds when nothing is fetched: the low buckets are theirs.
LATENCY_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
QUOTA_WAIT_BUCKETS = (0.0, 0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
UNMATCHED_CALLER = "unmatched"
CARDINALITY_LIMIT = 20_000
EMPTY_POLICY_SET = PolicySet((), "")


class QuotaView(Protocol):
    """What the gauges read from the quota governor."""

    @property
    def modes(self) -> Sequence[str]: ...

    @property
    def mode(self) -> str: ...

    def factor(self) -> float: ...

    def configured_rate(self) -> float | None: ...

    def snapshot(self) -> Sequence[tuple[str, float, float, int]]: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._reader = PrometheusMetricReader(registry=self.registry)
        # Labels are bounded by the policy set, which may name thousands of callers: above the
        # SDK's default of 2000 series a metric folds new ones into one unlabelled overflow.
        everything = View(instrument_name="*", aggregation_cardinality_limit=CARDINALITY_LIMIT)
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            views=[everything],
            resource=service_resource(),
            # The Prometheus exporter drops exemplars: sampling them is work for nothing.
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        meter = self._meter = self._provider.get_meter("attrgate")

        def seconds(name: str, description: str) -> Histogram:
            return meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
            )

        # What every RPC moves is counted in plain dicts and lists (event loop only) and read at
        # scrape time: an SDK measurement costs ~15 µs, a dict increment well under one.
        self._requests: dict[tuple[str, str, str, str, str], int] = {}
        self._in_flight: dict[str, int] = {}
        meter.create_observable_counter(
            "attrgate_requests",
            callbacks=[self._observe_requests],
            description="RPCs by method, caller, outcome and gRPC code",
        )
        self._duration = SecondsHistogram(
            "attrgate_request_duration", "end-to-end RPC latency", ["method"], LATENCY_BUCKETS
        )
        self._decision = SecondsHistogram(
            "attrgate_decision_duration",
            "time to decide (validation, policy, pool metadata, SMS guard), "
            "without the forwarded call",
            ["method", "outcome"],
            LATENCY_BUCKETS,
        )
        self.registry.register(self._duration)
        self.registry.register(self._decision)
        # Every forwarded RPC makes a Cognito call: counted as the RPCs are (event loop only).
        self._cognito_calls: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "attrgate_cognito_calls",
            callbacks=[self._observe_cognito_calls],
            description="Cognito calls sent, by operation and Cognito error code (none: success)",
        )
        self._cognito_duration = SecondsHistogram(
            "attrgate_cognito_call_duration",
            "Cognito call latency by operation, retries included",
            ["operation"],
            LATENCY_BUCKETS,
        )
        self.registry.register(self._cognito_duration)
        self._reloads = meter.create_counter(
            "attrgate_policy_reloads",
            description="policy reloads by set (serving, candidate) and result (loaded, rejected, "
            "unchanged: a change on disk or a poll that found the revision serving; unavailable: "
            "the source could not be read, e.g. S3 unreachable or denying)",
        )
        self._sms = meter.create_counter(
            "attrgate_sms_decisions",
            description="SMS-triggering requests by outcome: allowed, refused (an SmsGuard's "
            "country rule or limit), denied (another stage)",
        )
        self._reserved = meter.create_counter(
            "attrgate_sms_reservations",
            description="places reserved in SMS limits and budgets, by guard and rule "
            "(later released ones included)",
        )
        self._spent = meter.create_counter(
            "attrgate_sms_budget_reserved_micros",
            description="budget reserved by SMS-triggering requests, in micro-units, by guard",
        )
        # Released: Cognito provably sent nothing. Spent = reserved - released.
        self._released = meter.create_counter(
            "attrgate_sms_releases",
            description="SMS reservations given back because Cognito provably sent nothing, "
            "by guard and rule",
        )
        self._refunded = meter.create_counter(
            "attrgate_sms_budget_released_micros",
            description="budget given back because Cognito provably sent nothing, in "
            "micro-units, by guard",
        )
        meter.create_observable_up_down_counter(
            "attrgate_in_flight_requests",
            callbacks=[self._observe_in_flight],
            description="RPCs being handled now",
        )
        self._store_failures = meter.create_counter(
            "attrgate_sms_store_failures",
            description="SMS store calls that failed, by reason (SMS-triggering writes answered "
            "UNAVAILABLE meanwhile)",
        )
        self._dropped = meter.create_counter(
            "attrgate_decision_log_dropped",
            description="decision-log entries dropped because the queue was full",
        )
        self._lookups = meter.create_counter(
            "attrgate_metadata_lookups",
            description="DescribeUserPool/AdminGetUser lookups not answered by a fresh cache "
            "entry, by answer: cognito (called), negative_cache, stale, limited (refused)",
        )
        self._disagreements = meter.create_counter(
            "attrgate_candidate_disagreements",
            description="requests on which the candidate policy set's verdict differs from the "
            "serving set's, by caller and kind (would_deny_now_allowed, would_allow_now_denied, "
            "different_violations)",
        )
        self._quota_tokens = meter.create_counter(
            "attrgate_quota_tokens",
            description="CognitoQuota tokens by share and result: granted, exceeded (no token "
            "of the share's rate in time), user_exceeded (per-user pacing), in_flight_exceeded "
            "(the share's bulkhead), cancelled (the caller left while waiting), retry and "
            "retry_refused (a retry inside a Cognito call)",
        )
        self._quota_wait = meter.create_histogram(
            "attrgate_quota_wait",
            unit="s",
            description="time a call granted a CognitoQuota token waited for it, by share",
            explicit_bucket_boundaries_advisory=QUOTA_WAIT_BUCKETS,
        )
        self._quota_failures = meter.create_counter(
            "attrgate_quota_store_failures",
            description="CognitoQuota calls to the fleet store (Redis) that failed, by reason "
            "(the governor used its local share meanwhile)",
        )
        self._server: Any = None
        self._serving: Callable[[], PolicySet] = lambda: EMPTY_POLICY_SET
        self._candidate: Callable[[], PolicySet | None] = lambda: None
        # Series an alert watches exist from the start, at zero (the reloads' once the sets are
        # known: reload_series).
        self._dropped.add(0)
        for operation in ("DescribeUserPool", "AdminGetUser"):
            for answer in (Answer.STALE, Answer.LIMITED):
                self._lookups.add(0, {"operation": operation, "answer": answer})

    def observe(self, entry: Mapping[str, Any]) -> None:
        """Count one finished RPC from its decision-log entry."""
        method = str(entry.get("method", ""))
        caller = self._caller_label(str(entry.get("caller", "")))
        outcome = str(entry.get("outcome", ""))
        key = (method, caller, outcome, str(entry.get("status", "")), str(entry.get("reason", "")))
        self._requests[key] = self._requests.get(key, 0) + 1
        self._duration.observe(float(entry.get("latency_ms", 0)) / 1000, method)
        if "decision_ms" in entry:  # not for an RPC cancelled or failed before its decision
            self._decision.observe(float(entry["decision_ms"]) / 1000, method, outcome)
        sms = entry.get("sms")
        if isinstance(sms, Mapping) and sms.get("triggers_sms"):
            self._sms.add(1, {"method": method, "outcome": str(sms.get("outcome", ""))})
        candidate = entry.get("candidate")
        if isinstance(candidate, Mapping) and candidate.get("disagreement"):
            self._disagreements.add(1, {"caller": caller, "kind": str(candidate["disagreement"])})

    def _caller_label(self, named: str) -> str:
        if not named:
            return UNMATCHED_CALLER
        label = self._serving().caller_label(named)
        if label is None:
            candidate = self._candidate()  # read once: a reload may swap it meanwhile
            label = candidate.caller_label(named) if candidate is not None else None
        return label or UNMATCHED_CALLER

    def sms_reserved(self, reserved: Sequence[Reserved]) -> None:
        """Reservations the store acknowledged (the pipeline's SmsEvents)."""
        _count(self._reserved, self._spent, reserved)

    def sms_released(self, released: Sequence[Reserved]) -> None:
        _count(self._released, self._refunded, released)

    def cognito_call(self, operation: str, seconds: float, error_code: str) -> None:
        """One Cognito call sent (retries included), on the event loop."""
        key = (operation, error_code or "none")
        self._cognito_calls[key] = self._cognito_calls.get(key, 0) + 1
        self._cognito_duration.observe(seconds, operation)

    def metadata_lookup(self, operation: str, answer: str) -> None:
        self._lookups.add(1, {"operation": operation, "answer": answer})

    def reload_series(self, policy_sets: Iterable[str], results: Iterable[str]) -> None:
        """attrgate_policy_reloads_total at zero for every set and result: an alert on
        rejected or unavailable reloads needs the series before the first one."""
        results = tuple(results)
        for policy_set in policy_sets:
            for result in results:
                self._reloads.add(0, {"result": result, "set": policy_set})

    def policy_reload(self, result: str, policy_set: str = "serving") -> None:
        """`policy_set`: "serving" or "candidate"."""
        self._reloads.add(1, {"result": result, "set": policy_set})

    def in_flight(self, delta: int, method: str) -> None:
        """On the event loop only (as `observe`)."""
        self._in_flight[method] = self._in_flight.get(method, 0) + delta

    def _observe_requests(self, _: CallbackOptions) -> Iterable[Observation]:
        # A copy: the scrape runs in the HTTP server's thread while the loop counts on.
        for (method, caller, outcome, code, reason), count in self._requests.copy().items():
            labels = {"method": method, "caller": caller, "outcome": outcome}
            yield Observation(count, {**labels, "code": code, "reason": reason})

    def _observe_cognito_calls(self, _: CallbackOptions) -> Iterable[Observation]:
        for (operation, error_code), count in self._cognito_calls.copy().items():
            yield Observation(count, {"operation": operation, "error_code": error_code})

    def _observe_in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        for method, count in self._in_flight.copy().items():
            yield Observation(count, {"method": method})

    def watch_policy_set(
        self,
        serving: Callable[[], PolicySet],
        candidate: Callable[[], PolicySet | None] = lambda: None,
    ) -> None:
        """Follow the serving policy set: attrgate_policy_set{revision} = its document count,
        and the caller labels it allows; and the candidate set's caller labels."""
        self._serving = serving
        self._candidate = candidate

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            policy_set = serving()  # read once: a reload may swap it meanwhile
            yield Observation(policy_set.size, {"revision": policy_set.revision})

        self._meter.create_observable_gauge(
            "attrgate_policy_set", callbacks=[observe], description="the policy set serving now"
        )

        def budgets(_: CallbackOptions) -> Iterable[Observation]:
            for guard in serving().guards.guards:
                if guard.budget_limit is not None:
                    window = "month" if guard.budget_month else guard.budget_window
                    yield Observation(guard.budget_limit, {"guard": guard.name, "window": window})

        # Beside attrgate_sms_budget_reserved_micros_total: what the alert rules project the
        # spending against.
        self._meter.create_observable_gauge(
            "attrgate_sms_budget_micros",
            callbacks=[budgets],
            description="each serving SmsGuard's budget for one window, in micro-units, by "
            "guard and window",
        )

    def watch_shadow(self, shadow: bool) -> None:
        """attrgate_shadow_mode: 1 in shadow mode (serve --shadow), 0 otherwise; always there,
        so an alert on it needs no absent()."""

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(1 if shadow else 0)

        self._meter.create_observable_gauge(
            "attrgate_shadow_mode",
            callbacks=[observe],
            description="1 while the server runs in shadow mode (policies not enforced), else 0",
        )

    def watch_sms_store(self, up: Callable[[], bool], reasons: Iterable[str]) -> None:
        """attrgate_sms_store_up: 1 while the SMS store answers; its failures by reason start
        at 0 (an alert on them needs the series)."""
        for reason in reasons:
            self._store_failures.add(0, {"reason": reason})

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(1 if up() else 0)

        self._meter.create_observable_gauge(
            "attrgate_sms_store_up",
            callbacks=[observe],
            description="1 while the SMS counting store answers, 0 while it fails",
        )

    def sms_store_failure(self, reason: str) -> None:
        self._store_failures.add(1, {"reason": reason})

    def quota_token(self, share: str, result: str) -> None:
        """The quota governor's QuotaEvents (worker threads too: instruments are thread-safe)."""
        self._quota_tokens.add(1, {"share": share, "result": result})

    def quota_waited(self, share: str, seconds: float) -> None:
        self._quota_wait.record(seconds, {"share": share})

    def quota_store_failure(self, reason: str) -> None:
        self._quota_failures.add(1, {"reason": reason})

    def watch_quota(
        self, governor: QuotaView, results: Sequence[str], reasons: Sequence[str]
    ) -> None:
        """The governor's state as gauges, read at each scrape: per share the rate this replica
        may send at, the demand it measures and the calls under way; the fleet's mode
        (fleet, emergency, local) and the adaptive factor. Every result and failure reason of a
        share the serving set names starts at 0."""
        self._quota_results = tuple(results)
        for reason in reasons:
            self._quota_failures.add(0, {"reason": reason})

        def shares(value: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                for row in governor.snapshot():
                    yield Observation(float(row[value]), {"share": str(row[0])})

            return observe

        for name, column, description in (
            (
                "attrgate_quota_rate",
                1,
                "requests per second this replica may send now, by "
                "CognitoQuota share (its lease times the adaptive factor)",
            ),
            (
                "attrgate_quota_demand",
                2,
                "requests per second asking for a token on this "
                "replica, by share (refused ones included)",
            ),
            (
                "attrgate_quota_in_flight",
                3,
                "calls holding a bulkhead slot, by share: waiting for their token or under way "
                "at Cognito",
            ),
        ):
            self._meter.create_observable_gauge(
                name, callbacks=[shares(column)], description=description
            )

        def mode(_: CallbackOptions) -> Iterable[Observation]:
            current = governor.mode
            for name in governor.modes:
                yield Observation(1 if name == current else 0, {"mode": name})

        def factor(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(governor.factor())

        def configured(_: CallbackOptions) -> Iterable[Observation]:
            rate = governor.configured_rate()
            if rate is not None:
                yield Observation(rate)

        self._meter.create_observable_gauge(
            "attrgate_quota_mode",
            callbacks=[mode],
            description="1 for the governor's mode: fleet (leases in Redis), emergency (Redis "
            "does not answer: rate / expected replicas), local (no Redis)",
        )
        self._meter.create_observable_gauge(
            "attrgate_quota_adaptive_factor",
            callbacks=[factor],
            description="the fraction of its lease this replica sends at: below 1 while Cognito "
            "throttles although the quota holds",
        )
        self._meter.create_observable_gauge(
            "attrgate_quota_configured_rate",
            callbacks=[configured],
            description="the CognitoQuota's rate for the whole fleet (requests per second)",
        )

    def quota_shares(self, shares: Sequence[str]) -> None:
        """attrgate_quota_tokens_total at 0 for every share and result (alerts need them)."""
        for share in shares:
            for result in getattr(self, "_quota_results", ()):
                self._quota_tokens.add(0, {"share": share, "result": result})

    def decision_log_dropped(self) -> None:
        self._dropped.add(1)

    def serve(self, address: str) -> int:
        host, port = split_host_port(address)
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._provider.shutdown()


def _count(places: Counter, budget: Counter, items: Iterable[Reserved]) -> None:
    """One per place in a limit or budget, by guard and rule; budget amounts by guard."""
    for guard, rule, amount in items:
        places.add(1, {"guard": str(guard), "rule": str(rule)})
        if rule == "budget":
            budget.add(int(amount), {"guard": str(guard)})
