"""Spans: a server span per RPC continuing the caller's traceparent, children for each stage,
the Cognito call parented correctly from its executor thread, and no values anywhere."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from attrgate.tracing import exporters_wanted, service_resource
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, error
from support.policies import svc_policy
from support.rpc import as_caller, attrs_request
from support.waiting import wait_until

POLICY = svc_policy()
POOL = "us-east-1_Pool1"
MARK = "Tr4cepersonal"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def everything_said(spans: InMemorySpanExporter) -> str:
    parts = []
    for span in spans.get_finished_spans():
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        parts.append(str(span.status.description))
    return "\n".join(parts)


def test_spans_continue_the_caller_trace_and_nest(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    server = serve(POLICY, stub.endpoint, decision_log=str(tmp_path / "d"))
    metadata = (*as_caller("svc"), ("traceparent", PARENT))
    with server.channel() as channel:
        response = server.stub(channel).UpdateUserAttributes(
            attrs_request(POOL, [("given_name", MARK)], username=MARK), metadata=metadata
        )
    name = "attrgate.v1.UserAttributes/UpdateUserAttributes"
    # The server ends its span just after the caller has its answer.
    assert wait_until(lambda: any(s.name == name for s in spans.get_finished_spans()))
    finished = {s.name: s for s in spans.get_finished_spans()}
    root = finished[name]
    assert root.kind == SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    for child in (
        "attrgate.validate",
        "attrgate.policy",
        "attrgate.pool_metadata",
        "cognito-idp.AdminUpdateUserAttributes",
    ):
        assert finished[child].parent is not None, child
        assert finished[child].parent.span_id == root.context.span_id, child
        assert finished[child].context.trace_id == root.context.trace_id
    cognito = finished["cognito-idp.AdminUpdateUserAttributes"]
    assert cognito.kind == SpanKind.CLIENT
    assert cognito.attributes["aws.request_id"] == response.cognito_request_id
    attributes = root.attributes or {}
    assert attributes["attrgate.caller"] == "svc"
    assert attributes["attrgate.user_pool_id"] == POOL
    assert attributes["attrgate.decision"] == "allowed"
    assert list(attributes["attrgate.attributes"]) == ["given_name"]
    assert attributes["attrgate.decision_id"] == response.decision.decision_id
    assert attributes["attrgate.cognito.request_id"] == response.cognito_request_id
    assert "attrgate.username_hash" not in attributes  # no key configured: not at all
    assert MARK not in everything_said(spans)


def test_denied_and_failed_calls_say_nothing_personal(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    server = serve(POLICY, stub.endpoint, decision_log=str(tmp_path / "d"))
    with server.channel() as channel:
        stub_ = server.stub(channel)
        with pytest.raises(grpc.RpcError):
            stub_.UpdateUserAttributes(
                attrs_request(POOL, [("email", MARK)], username=MARK), metadata=as_caller("svc")
            )
        stub.program(error("InvalidParameterException", f"bad value {MARK}"))
        with pytest.raises(grpc.RpcError):
            stub_.UpdateUserAttributes(
                attrs_request(POOL, [("given_name", MARK)], username=MARK),
                metadata=as_caller("svc"),
            )

    def roots() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]

    # The server ends its span just after the caller has its answer: wait for both.
    assert wait_until(lambda: len(roots()) == 2)
    assert [(r.attributes or {}).get("rpc.grpc.status_code") for r in roots()] == [
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
    ]
    assert (roots()[0].attributes or {})["attrgate.violation_count"] == 1
    assert MARK not in everything_said(spans)


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ],
)
def test_exporters_follow_the_standard_environment(
    environ: dict[str, str], wanted: list[str]
) -> None:
    assert exporters_wanted(environ) == wanted


def test_service_name_defaults_to_attrgate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource().attributes["service.name"] == "attrgate"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=id")
    assert service_resource().attributes["service.name"] == "from-attributes"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "attrgate-eu")
    assert service_resource().attributes["service.name"] == "attrgate-eu"
    assert service_resource().attributes["team"] == "id"


def test_spans_cost_nothing_until_a_provider_is_installed() -> None:
    """Without a TracerProvider a span is the current span again (what OpenTelemetry's no-op
    tracer would make, minus its cost); once one is installed, spans are recorded. In a process
    of its own: this one has a provider from the start (conftest)."""
    script = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "from attrgate.tracing import start_span\n"
        "with start_span('a') as span:\n"
        "    assert span is trace.get_current_span()\n"
        "    assert not span.is_recording()\n"
        "spans = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(spans))\n"
        "trace.set_tracer_provider(provider)\n"
        "with start_span('outer') as outer, start_span('inner') as inner:\n"
        "    assert inner.is_recording() and inner is trace.get_current_span()\n"
        "assert [s.name for s in spans.get_finished_spans()] == ['inner', 'outer']\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


class GrpcCollector:
    """OTLP over gRPC: a TraceService on loopback."""

    def __init__(self, received: list[ExportTraceServiceRequest], arrived: threading.Event):
        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # type: ignore[no-untyped-def]
                received.append(request)
                arrived.set()
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)


class HttpCollector:
    """OTLP over HTTP: protobuf bodies POSTed to /v1/traces."""

    def __init__(self, received: list[ExportTraceServiceRequest], arrived: threading.Event):
        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    received.append(ExportTraceServiceRequest.FromString(body))
                    arrived.set()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize(
    ("protocol", "collector_type"), [("grpc", GrpcCollector), ("http/protobuf", HttpCollector)]
)
def test_a_served_attrgate_exports_to_a_real_otlp_receiver(
    tmp_path: Path, protocol: str, collector_type: type[GrpcCollector | HttpCollector]
) -> None:
    import signal

    from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
    from support.moto_cognito import free_port
    from support.served import start_serve

    received: list[ExportTraceServiceRequest] = []
    arrived = threading.Event()
    collector = collector_type(received, arrived)
    (tmp_path / "p.yaml").write_text(POLICY)
    port = free_port()
    process = start_serve(
        tmp_path / "p.yaml",
        port,
        "--decision-log",
        str(tmp_path / "d"),
        output=tmp_path,
        OTEL_SERVICE_NAME="attrgate-under-test",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            pb_grpc.UserAttributesStub(channel).CheckUpdateUserAttributes(
                attrs_request(POOL, [("given_name", MARK)], username=MARK),
                metadata=(*as_caller("svc"), ("traceparent", PARENT)),
                timeout=5,
            )
        assert arrived.wait(15), "no spans reached the OTLP receiver"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        collector.stop()
    spans = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans}
    assert "attrgate.v1.UserAttributes/CheckUpdateUserAttributes" in names
    assert {"attrgate.validate", "attrgate.policy"} <= names
    assert all(span.trace_id.hex() == TRACE_ID for _, span in spans)
    services = {
        a.value.string_value
        for resource, _ in spans
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert services == {"attrgate-under-test"}
    said = f"traces of service attrgate-under-test: OTLP over {protocol} to http://127.0.0.1:"
    assert said + str(collector.port) in (tmp_path / "err").read_text()
    assert MARK not in str(received)
