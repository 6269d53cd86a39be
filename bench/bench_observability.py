"""What observability costs per RPC, next to the decision itself.

Side by side, microseconds per request: the policy decision alone (the baseline); the decision-log
entry built and queued; the Prometheus metrics observed; the spans of one RPC (server span and
three stage spans) with tracing off, and with the SDK batching to an exporter that drops them;
and all of them together (tracing on). Then how many entries per second the decision-log writer
thread puts in a file. Run with `make bench`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from attrgate.api.record import DecisionRecord
from attrgate.decisionlog import DecisionLog
from attrgate.domain import Attribute, Caller, Decision, UpdateRequest
from attrgate.metrics import Metrics
from attrgate.policy.compile import compile_policy_set
from attrgate.policy.engine import evaluate
from attrgate.policy.load import load_policy_set

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 20_000
REQUEST = UpdateRequest(
    "us-east-1_Bench1",
    "ada",
    (Attribute("given_name", "Ada"), Attribute("custom:tier", "pro")),
    {"source": "bench"},
)
CALLER = Caller("profile-api", "header")


class Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def per_call_us(work: Callable[[], object], rounds: int = ROUNDS) -> float:
    for _ in range(rounds // 10):
        work()
    started = time.perf_counter()
    for _ in range(rounds):
        work()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    loaded = load_policy_set(REPO / "policies")
    assert loaded.ok, loaded.errors
    policy_set = compile_policy_set(loaded.policies, loaded.revision)
    verdict = evaluate(policy_set, CALLER.name, REQUEST)
    decision = Decision(
        "0" * 32,
        policy_set.revision,
        verdict.allowed,
        verdict.violations,
        verdict.matched_policies,
        verdict.would_deny,
    )
    metrics = Metrics()
    metrics.watch_policy_set(lambda: policy_set)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping(), max_queue_size=65536))
    tracer = provider.get_tracer("bench")
    log = DecisionLog(os.devnull, capacity=ROUNDS * 4)
    log.start()

    def decide() -> object:
        return evaluate(policy_set, CALLER.name, REQUEST)

    def entry() -> dict[str, object]:
        record = DecisionRecord("UpdateUserAttributes", lambda pool, user: "h" * 32)
        record.caller(CALLER)
        record.request(REQUEST)
        record.decision(decision, REQUEST)
        return record.finish("OK")

    def logged() -> None:
        log.record(entry())

    finished = entry()

    def observed() -> None:
        metrics.observe(finished)

    def spans(through: trace.Tracer) -> Callable[[], None]:
        def traced() -> None:
            with through.start_as_current_span("rpc", kind=SpanKind.SERVER) as span:
                for stage in ("attrgate.validate", "attrgate.policy", "attrgate.sms_guard"):
                    with through.start_as_current_span(stage):
                        pass
                span.set_attributes(
                    {"attrgate.caller": "profile-api", "attrgate.decision": "allowed"}
                )

        return traced

    traced = spans(tracer)

    def everything() -> None:
        decide()
        traced()
        made = entry()
        metrics.observe(made)
        log.record(made)

    base = per_call_us(decide)
    rows = [
        ("decision alone (baseline)", base),
        ("decision-log entry built + queued", per_call_us(logged)),
        ("metrics observed", per_call_us(observed)),
        ("4 spans, tracing off (no OTEL_*)", per_call_us(spans(trace.NoOpTracer()))),
        ("4 spans, SDK batching", per_call_us(traced)),
        ("all of it, tracing on", per_call_us(everything)),
    ]
    log.close()
    provider.shutdown()
    print(f"per RPC, {ROUNDS} rounds, example policies ({policy_set.size} documents)")
    for name, us in rows:
        print(f"  {name:36s} {us:8.1f} µs   {us / base:6.1f}× the decision")

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "decisions.jsonl"
        writer = DecisionLog(str(path), capacity=ROUNDS * 2)
        writer.start()
        made = entry()
        started = time.perf_counter()
        for _ in range(ROUNDS):
            writer.record(made)
        writer.close()  # drains the queue
        elapsed = time.perf_counter() - started
        lines = len(path.read_text().splitlines())
    print(
        f"decision-log writer: {lines} entries in {elapsed * 1000:.0f} ms "
        f"({lines / elapsed:,.0f} per second), {ROUNDS - lines} dropped"
    )


if __name__ == "__main__":
    main()
