"""The attrgate.v1.UserAttributes servicer: a thin edge around the pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from opentelemetry.trace import INVALID_TRACE_ID, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from attrgate.api.admission import Admission
from attrgate.api.convert import decision_to_proto, request_from_proto
from attrgate.api.errors import (
    denied,
    grace_ended,
    internal_error,
    invalid_request,
    lookup_limited,
    malformed_request,
    quota_exceeded,
    shutting_down,
    unauthenticated,
    unavailable,
    upstream_failed,
)
from attrgate.api.record import DecisionRecord, UsernameHash
from attrgate.api.status import DECISION_ID_METADATA, ErrorStatus
from attrgate.domain import (
    Caller,
    Forwarded,
    Invalid,
    LookupLimited,
    QuotaLimited,
    Unavailable,
)
from attrgate.identity import identify_header, identify_mtls
from attrgate.pipeline import Pipeline, new_decision_id
from attrgate.reasons import Reason
from attrgate.tracing import start_span, tracer_installed
from attrgate.v1 import attrgate_pb2 as pb

log = logging.getLogger("attrgate.api")
T = TypeVar("T")

Context = grpc.aio.ServicerContext[pb.UpdateUserAttributesRequest, object]
Identify = Callable[[Context], Caller | None]


def mtls_identity(context: Context) -> Caller | None:
    return identify_mtls(context.auth_context())


def header_identity(context: Context) -> Caller | None:
    return identify_header(context.invocation_metadata() or ())


SERVICE_NAME = "attrgate.v1.UserAttributes"
_TRACE_CONTEXT = TraceContextTextMapPropagator()
NO_TRACE_ID = format(INVALID_TRACE_ID, "032x")  # the decision log's trace_id outside any trace


class Malformed:
    """A request body protobuf could not decode (invalid UTF-8 in a string, corrupt wire data).

    Decoding in the handler rather than in gRPC keeps these from surfacing as UNKNOWN with a
    logged traceback: they get INVALID_ARGUMENT with the usual rich details."""


MALFORMED = Malformed()
Request = pb.UpdateUserAttributesRequest | Malformed


def _parse_request(data: bytes) -> Request:
    try:
        return pb.UpdateUserAttributesRequest.FromString(data)
    except DecodeError:
        return MALFORMED


def add_to_server(service: UserAttributesService, server: grpc.aio.Server) -> None:
    handlers = {
        "UpdateUserAttributes": grpc.unary_unary_rpc_method_handler(
            service.UpdateUserAttributes,
            request_deserializer=_parse_request,
            response_serializer=pb.UpdateUserAttributesResponse.SerializeToString,
        ),
        "CheckUpdateUserAttributes": grpc.unary_unary_rpc_method_handler(
            service.CheckUpdateUserAttributes,
            request_deserializer=_parse_request,
            response_serializer=pb.Decision.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class _Abort(Exception):
    def __init__(self, status: ErrorStatus, decision_id: str) -> None:
        self.status = status
        self.decision_id = decision_id


Recorder = Callable[[dict[str, Any]], None]


class UserAttributesService:
    def __init__(
        self,
        pipeline: Pipeline,
        identify: Identify,
        record: Recorder | None = None,
        username_hash: UsernameHash | None = None,
        in_flight: Callable[[int, str], None] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._admission = admission or Admission()
        self._identify = identify
        self._record = record
        self._username_hash = username_hash
        self._in_flight = in_flight or (lambda delta, method: None)

    def _cut(self) -> bool:
        return self._admission.cut

    async def UpdateUserAttributes(
        self, request: Request, context: Context
    ) -> pb.UpdateUserAttributesResponse:
        record = DecisionRecord("UpdateUserAttributes", self._username_hash, self._pipeline.shadow)
        admitted = self._admission.enter()

        async def handle() -> pb.UpdateUserAttributesResponse:
            if not admitted:
                raise _refused(record)
            caller = self._caller(context, record)
            domain_request = request_from_proto(_decoded(request, record))
            record.request(domain_request)
            outcome = await self._pipeline.update(
                caller,
                domain_request,
                _deadline(context),
                lambda decision, at: record.decision(decision, domain_request, at),
            )
            if isinstance(outcome, Invalid):
                record.invalid(outcome)
                raise _Abort(
                    invalid_request(outcome.violations, outcome.policy_revision),
                    outcome.decision_id,
                )
            if isinstance(outcome, Unavailable):
                record.unavailable(outcome)
                raise _Abort(unavailable(outcome), outcome.decision_id)
            if isinstance(outcome, LookupLimited):
                record.limited(outcome)
                raise _Abort(lookup_limited(outcome), outcome.decision_id)
            if isinstance(outcome, QuotaLimited):
                record.quota(outcome)  # its decision is recorded by the forwarding callback
                raise _Abort(quota_exceeded(outcome), outcome.decision.decision_id)
            if not isinstance(outcome, Forwarded):
                record.decision(outcome, domain_request)
                raise _Abort(denied(outcome, domain_request, _now_ms()), outcome.decision_id)
            decision = outcome.decision  # recorded by the pipeline's forwarding callback
            record.upstream(outcome.upstream)
            if not outcome.upstream.ok:
                raise _Abort(
                    upstream_failed(outcome.upstream, decision.policy_revision),
                    decision.decision_id,
                )
            context.set_trailing_metadata(((DECISION_ID_METADATA, decision.decision_id),))
            return pb.UpdateUserAttributesResponse(
                decision=decision_to_proto(decision),
                cognito_request_id=outcome.upstream.request_id,
                pending_verification=list(decision.pending_verification),
            )

        self._in_flight(1, "UpdateUserAttributes")
        try:
            return await _answer(
                context, handle, record, self._record, "UpdateUserAttributes", self._cut
            )
        finally:
            self._in_flight(-1, "UpdateUserAttributes")
            if admitted:
                self._admission.leave()

    async def CheckUpdateUserAttributes(self, request: Request, context: Context) -> pb.Decision:
        record = DecisionRecord(
            "CheckUpdateUserAttributes", self._username_hash, self._pipeline.shadow
        )
        admitted = self._admission.enter()

        async def handle() -> pb.Decision:
            if not admitted:
                raise _refused(record)
            caller = self._caller(context, record)
            domain_request = request_from_proto(_decoded(request, record))
            record.request(domain_request)
            decided = await self._pipeline.check(caller, domain_request)
            if isinstance(decided, Invalid):
                record.invalid(decided)
                raise _Abort(
                    invalid_request(decided.violations, decided.policy_revision),
                    decided.decision_id,
                )
            if isinstance(decided, Unavailable):
                record.unavailable(decided)
                raise _Abort(unavailable(decided, check=True), decided.decision_id)
            if isinstance(decided, LookupLimited):
                record.limited(decided)
                raise _Abort(lookup_limited(decided), decided.decision_id)
            record.decision(decided, domain_request)
            context.set_trailing_metadata(((DECISION_ID_METADATA, decided.decision_id),))
            return decision_to_proto(decided)

        self._in_flight(1, "CheckUpdateUserAttributes")
        try:
            return await _answer(
                context, handle, record, self._record, "CheckUpdateUserAttributes", self._cut
            )
        finally:
            self._in_flight(-1, "CheckUpdateUserAttributes")
            if admitted:
                self._admission.leave()

    def _caller(self, context: Context, record: DecisionRecord) -> Caller:
        caller = self._identify(context)
        if caller is None:
            record.decided()
            raise _Abort(unauthenticated(), new_decision_id())
        record.caller(caller)
        return caller


async def _answer(
    context: Context,
    handle: Callable[[], Awaitable[T]],
    record: DecisionRecord,
    recorder: Recorder | None,
    method: str,
    cut: Callable[[], bool],
) -> T:
    """Run `handle` in a server span that continues the caller's traceparent, turning an _Abort
    or an unexpected failure into a rich status, and log the decision whatever the ending."""
    traceparent = _traceparent(context)
    if traceparent is None and not tracer_installed():
        # No trace to continue and nothing to record it: the span would be OpenTelemetry's
        # no-op one, which still costs its context switching and attribute building per call.
        record.entry["trace_id"] = NO_TRACE_ID
        return await _handle(context, handle, record, recorder, cut)
    parent = _TRACE_CONTEXT.extract({"traceparent": traceparent} if traceparent else {})
    with start_span(f"{SERVICE_NAME}/{method}", kind=SpanKind.SERVER, context=parent) as span:
        record.entry["trace_id"] = format(span.get_span_context().trace_id, "032x")
        try:
            return await _handle(context, handle, record, recorder, cut)
        finally:
            if span.is_recording():  # a sampled-out span ignores attributes: spare building them
                _annotate(span, record.entry)


def _traceparent(context: Context) -> str | None:
    """The caller's traceparent header (the last one, if several). Only traceparent: the SDK
    logs malformed tracestate and baggage headers verbatim, and their content is the caller's
    (baggage often carries user ids)."""
    found = None
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            found = value
    return found


def _annotate(span: Span, entry: dict[str, Any]) -> None:
    """Names, codes and ids of the decision on its span; never values."""
    sms = entry.get("sms") or {}
    cognito = entry.get("cognito") or {}
    candidate = entry.get("candidate") or {}
    attributes = {
        "rpc.system": "grpc",
        "rpc.grpc.status_code": entry.get("status", ""),
        "attrgate.decision_id": entry.get("decision_id", ""),
        "attrgate.caller": entry.get("caller", ""),
        "attrgate.user_pool_id": entry.get("user_pool_id", ""),
        "attrgate.username_hash": entry.get("username_hash", ""),
        "attrgate.decision": entry.get("outcome", ""),
        "attrgate.denied_by": entry.get("denied_by", ""),
        "attrgate.reason": entry.get("reason", ""),
        "attrgate.matched_policies": list(entry.get("matched_policies", [])),
        "attrgate.attributes": list(entry.get("attributes", [])),
        "attrgate.violation_count": len(entry.get("violations", [])),
        "attrgate.would_deny_count": len(entry.get("would_deny", [])),
        "attrgate.sms.triggers": bool(sms.get("triggers_sms", False)),
        "attrgate.sms.outcome": sms.get("outcome", ""),
        "attrgate.cognito.request_id": cognito.get("request_id", ""),
        "attrgate.cognito.error_code": cognito.get("error_code", ""),
        "attrgate.shadow": entry.get("shadow", ""),
        "attrgate.candidate.revision": candidate.get("policy_revision", ""),
        "attrgate.candidate.disagreement": candidate.get("disagreement", ""),
    }
    span.set_attributes({k: v for k, v in attributes.items() if v not in ("", [])})
    if entry.get("status") not in ("OK", None):
        span.set_status(Status(StatusCode.ERROR, str(entry.get("status"))))


async def _handle(
    context: Context,
    handle: Callable[[], Awaitable[T]],
    record: DecisionRecord,
    recorder: Recorder | None,
    cut: Callable[[], bool],
) -> T:
    """`cut`: whether a cancellation is the drain cutting the call off at the grace's end (then
    the caller hears so, ABORTED) rather than the caller or gRPC ending it (CANCELLED)."""
    status, reason, decision_id = "OK", "", ""
    try:
        return await handle()
    except _Abort as abort:
        status, reason = abort.status.code.name, str(abort.status.reason)
        decision_id = abort.decision_id
        await _abort(context, abort.status, abort.decision_id)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not cut() or task is None or context.cancelled():
            status = "CANCELLED"
            raise
        task.uncancel()
        status, reason = "ABORTED", str(Reason.ATTRGATE_GRACE_ENDED)
        decision_id = str(record.entry.get("decision_id", "")) or new_decision_id()
        await _abort(context, grace_ended(), decision_id)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        decision_id = new_decision_id()
        status, reason = "INTERNAL", "INTERNAL_ERROR"
        _log_internal(exc, decision_id)
        await _abort(context, internal_error(), decision_id)
    finally:
        if recorder is not None:
            recorder(record.finish(status, reason, decision_id))
    raise AssertionError("unreachable: context.abort raises")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _refused(record: DecisionRecord) -> _Abort:
    """A call that arrived after the server closed its gate (draining): nothing decided."""
    record.shutting_down()
    return _Abort(shutting_down(), new_decision_id())


def _decoded(request: Request, record: DecisionRecord) -> pb.UpdateUserAttributesRequest:
    if isinstance(request, Malformed):
        record.decided()
        raise _Abort(malformed_request(), new_decision_id())
    return request


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _abort(context: Context, status: ErrorStatus, decision_id: str) -> None:
    error = status.to_grpc(decision_id)
    await context.abort(error.code, error.details, error.trailing_metadata)


def _log_internal(exc: BaseException, decision_id: str) -> None:
    # The frames, not the message: an exception's text may carry request values.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("internal error decision_id=%s type=%s\n%s", decision_id, type(exc).__name__, frames)
