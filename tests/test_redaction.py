"""Nothing personal leaves the process (a served process, and one in this process where log records
and spans can be read directly): unique markers in the username, every attribute value and
every client-metadata value go through allowed, denied, invalid and failing requests of a real
`attrgate serve` at DEBUG (botocore's included), with spans printed to stdout, metrics served and
the decision log written, while the Cognito stand-in echoes the markers back in its errors."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, describe_reply, error
from support.moto_cognito import free_port
from support.policies import svc_policy
from support.prometheus import metrics_text
from support.rpc import as_caller
from support.served import start_serve

POLICY = (
    svc_policy(
        "[{attribute: given_name}, {attribute: family_name, maxLength: 40},"
        " {attribute: phone_number}]",
        "[source]",
    )
    + """---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: sms}
spec:
  userPools: ["*"]
  limits: [{per: phone_number, max: 1, window: 1h}]
"""
)
USER = "mkUSERq1"
GIVEN = "mkGIVENq2"
FAMILY = "mkFAMILYq3"
META = "mkMETAq4"
PHONE = "+14155550142"
MARKERS = (USER, GIVEN, FAMILY, META, PHONE, PHONE.removeprefix("+"))


def request(**attributes: str) -> pb.UpdateUserAttributesRequest:
    return pb.UpdateUserAttributesRequest(
        user_pool_id="us-east-1_Pool1",
        username=USER,
        user_attributes=[pb.AttributeType(name=k, value=v) for k, v in attributes.items()],
        client_metadata={"source": META},
    )


def exercise(attrgate: pb_grpc.UserAttributesStub, cognito: CognitoStub) -> None:
    """Allowed, SMS-refused, denied, invalid, unauthenticated and Cognito-failed requests, all
    carrying the markers; Cognito's errors echo them back."""
    echo = " ".join(MARKERS)
    caller = as_caller("svc")
    # Trace headers are the caller's too: malformed ones the SDK would log verbatim.
    traced = (
        *caller,
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", f"vendor={USER}!,{META} bad"),
        ("baggage", f"user.id={USER},{GIVEN} is no list-member"),
    )
    attrgate.UpdateUserAttributes(request(given_name=GIVEN, phone_number=PHONE), metadata=traced)
    calls = [
        request(given_name=GIVEN, phone_number=PHONE),  # SMS limit refuses
        request(family_name=FAMILY * 10),  # policy: maxLength
        request(given_name=GIVEN * 300),  # invalid: too long
        request(email=FAMILY),  # policy: not allowed
    ]
    for message in calls:
        with pytest.raises(grpc.RpcError):
            attrgate.UpdateUserAttributes(message, metadata=caller)
    with pytest.raises(grpc.RpcError):
        attrgate.UpdateUserAttributes(request(given_name=GIVEN), metadata=())
    for code in ("UserLambdaValidationException", "InvalidParameterException"):
        cognito.program(error(code, echo))
        with pytest.raises(grpc.RpcError) as failed:
            attrgate.UpdateUserAttributes(request(given_name=GIVEN), metadata=caller)
        said = str(failed.value.details()) + str(failed.value.trailing_metadata())
        assert not any(m in said for m in MARKERS), said
    # Retried (no SMS in this write): every attempt fails.
    cognito.program(*[error("InternalErrorException", echo, status=500)] * 3)
    with pytest.raises(grpc.RpcError):
        attrgate.UpdateUserAttributes(request(family_name=FAMILY), metadata=caller)
    attrgate.CheckUpdateUserAttributes(request(given_name=GIVEN), metadata=caller)


def assert_no_marker(**where: str) -> None:
    for name, text in where.items():
        leaked = [m for m in MARKERS if m in text]
        assert leaked == [], f"{leaked} in {name}"


def test_no_marker_leaves_the_process(
    stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    (tmp_path / "p.yaml").write_text(POLICY)
    key = tmp_path / "key"
    key.write_bytes(b"r" * 32)
    port, metrics_port = free_port(), free_port()
    decisions = tmp_path / "decisions.jsonl"
    process = start_serve(
        tmp_path / "p.yaml",
        port,
        *("--log-level", "DEBUG", "--decision-log", str(decisions)),
        *("--metrics-listen", f"127.0.0.1:{metrics_port}", "--hmac-key-file", str(key)),
        *("--state", str(tmp_path / "state.sqlite"), "--cognito-endpoint", stub.endpoint),
        output=tmp_path,
        OTEL_TRACES_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            exercise(pb_grpc.UserAttributesStub(channel), stub)
        metrics = metrics_text(metrics_port)
        process.send_signal(signal.SIGTERM)  # spans still queued are printed at exit
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    log = decisions.read_text()
    assert "attrgate.v1.UserAttributes/UpdateUserAttributes" in out, "spans were not printed"
    assert "DEBUG" in err, "DEBUG logging was not on"
    assert "botocore" in err, "botocore's DEBUG logging was not on"
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in err
    assert "traces of service attrgate: console" in err
    assert len(log.splitlines()) == 10
    assert "attrgate_requests_total" in metrics
    assert_no_marker(stdout=out, stderr=err, decision_log=log, metrics=metrics)


def test_no_marker_in_log_records_spans_or_metrics_of_an_in_process_server(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The same requests against attrgate in this process, where every log record (botocore's
    DEBUG included, with its arguments and exceptions), every span with its attributes, events
    and status, and every metric label can be read directly."""
    stub.describe = describe_reply(auto_verified=("phone_number",))
    key = tmp_path / "key"
    key.write_bytes(b"r" * 32)
    port = free_port()
    decisions = tmp_path / "decisions.jsonl"
    caplog.set_level(logging.DEBUG)
    server = serve(
        POLICY,
        stub.endpoint,
        decision_log=str(decisions),
        metrics_listen=f"127.0.0.1:{port}",
        hmac_key_file=str(key),
        state=str(tmp_path / "state.sqlite"),
    )
    with server.channel() as channel:
        exercise(server.stub(channel), stub)
    metrics = metrics_text(port)
    server.stop()

    formatter = logging.Formatter()
    records = [formatter.format(r) + repr(r.__dict__) for r in caplog.records]
    assert any(r.name.startswith("botocore") for r in caplog.records), "no botocore DEBUG"
    finished = spans.get_finished_spans()
    cognito_spans = [s for s in finished if s.name == "cognito-idp.AdminUpdateUserAttributes"]
    assert any(not s.status.is_ok for s in cognito_spans), "no failed Cognito call was traced"
    stages = {"attrgate.validate", "attrgate.policy", "attrgate.sms_guard"}
    assert stages <= {s.name for s in finished}
    out, err = capfd.readouterr()
    assert_no_marker(
        log_records="\n".join(records),
        spans="\n".join(s.to_json() for s in finished),  # attributes, events, status, links
        metrics=metrics,
        decision_log=decisions.read_text(),
        stdout=out,
        stderr=err,
    )
