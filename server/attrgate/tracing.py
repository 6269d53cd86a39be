"""Traces with the OpenTelemetry SDK, configured from the standard OTEL_* environment.

OTLP export (grpc, or http/protobuf by OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL) when
OTEL_EXPORTER_OTLP(_TRACES)_ENDPOINT is set or OTEL_TRACES_EXPORTER asks for `otlp`; `console`
on request; otherwise nothing is exported and no connection is attempted.
Service name, resource attributes and sampler come from the SDK's own OTEL_* handling.
Span attributes carry names, codes and ids only: never attribute values, never usernames.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.trace import Span, SpanKind

if TYPE_CHECKING:  # the trace SDK is imported only when traces are exported (0.05 s at start)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

tracer = trace.get_tracer("attrgate")


def start_span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Mapping[str, str] | None = None,
) -> AbstractContextManager[Span]:
    """A span of attrgate's, made current. Exceptions are neither recorded as events nor put in
    the status: their text may carry request values.

    With no TracerProvider installed, OpenTelemetry's no-op tracer would only make the current
    span current again, at ~40 µs a span (3 per decision: ~40 % of an offline decision in
    `attrgate test`); a span without an explicit parent then costs nothing instead. A span
    with one (the server's, continuing the caller's traceparent) still goes through the
    tracer, so the decision log's trace_id is the same either way."""
    if context is None and not tracer_installed():
        return nullcontext(trace.get_current_span())
    return tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def tracer_installed() -> bool:
    """Whether a TracerProvider is installed: without one, every span is OpenTelemetry's no-op
    span and records nothing.

    Asked three times per request. OpenTelemetry's get_tracer_provider() looks
    OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every call while none is installed (a
    KeyError raised and caught each time), so the global it keeps is read first; the public
    call remains for an API without that global, and for the variable's lazy provider."""
    installed = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if installed is _UNKNOWN or (installed is None and _PROVIDER_FROM_ENVIRONMENT):
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return installed is not None


_UNKNOWN = object()
# Read once: set in a process's environment at start, not while it runs.
_PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


log = logging.getLogger("attrgate.tracing")


def _otlp_endpoint(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )


def _otlp_protocol(environ: Mapping[str, str]) -> str:
    return environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )


def exporters_wanted(environ: Mapping[str, str]) -> list[str]:
    named = [e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if named:
        return [e for e in named if e != "none"]
    return ["otlp"] if _otlp_endpoint(environ) else []


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not otlp, console or none")
    protocol = _otlp_protocol(environ)
    # Endpoint, headers, TLS and compression come from the OTEL_* variables in both exporters.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as OTLPHttpSpanExporter,
        )

        return OTLPHttpSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not grpc or http/protobuf")


def service_resource() -> Resource:
    """The SDK's resource from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; named `attrgate`
    when neither names the service (the SDK would say unknown_service:python)."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "attrgate"}))
    return resource


def configure_tracing(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install a TracerProvider when the environment asks for export; None when it does not
    (then spans are no-ops, or go wherever an embedding program already sent them)."""
    env = os.environ if environ is None else environ
    wanted = exporters_wanted(env)
    if not wanted:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = service_resource()
    provider = TracerProvider(resource=resource)
    for name in wanted:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    log.info(
        "traces of service %s: %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(_describe(name, env) for name in wanted),
    )
    return provider


def _describe(name: str, environ: Mapping[str, str]) -> str:
    """Where spans go, for the start-up log (no credentials: only scheme, host and port)."""
    if name != "otlp":
        return name
    try:
        url = urllib.parse.urlsplit(_otlp_endpoint(environ))
        where = f"{url.scheme}://{url.hostname}:{url.port or ''}" if url.hostname else "default"
    except ValueError:
        where = "an endpoint that is not a URL"
    return f"OTLP over {_otlp_protocol(environ)} to {where}"
