"""The decision log: one JSON line per decision, nothing personal, never blocking a request."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from attrgate.decisionlog import DecisionLog
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, error
from support.policies import svc_policy
from support.rpc import as_caller, attrs_request, rich
from support.waiting import json_lines, wait_until

POLICY = svc_policy("[{attribute: given_name}, {attribute: family_name}]", "[source]")
MARK = "Zz9personal"
POOL = "us-east-1_Pool1"


entries = json_lines


def test_every_decision_is_one_line_and_nothing_personal_is_in_it(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "decisions.jsonl"
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    server = serve(POLICY, stub.endpoint, decision_log=str(log_file), hmac_key_file=str(key))
    user = f"user-{MARK}"
    ids: list[str] = []
    with server.channel() as channel:
        stub_ = server.stub(channel)
        allowed = stub_.UpdateUserAttributes(
            attrs_request(POOL, [("given_name", MARK)], username=user), metadata=as_caller("svc")
        )
        ids.append(allowed.decision.decision_id)
        for message, caller in (
            (attrs_request(POOL, [("email", MARK)], username=user), "svc"),  # denied
            (attrs_request(POOL, [("given_name", MARK * 200)], username=user), "svc"),  # invalid
            (attrs_request(POOL, [("given_name", MARK)], username=user), None),  # no caller
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub_.UpdateUserAttributes(message, metadata=as_caller(caller) if caller else ())
            ids.append(rich(caught.value).info.metadata["decision_id"])
        stub.program(error("UserLambdaValidationException", f"lambda said {MARK}"))
        with pytest.raises(grpc.RpcError) as failed:
            stub_.UpdateUserAttributes(
                pb.UpdateUserAttributesRequest(
                    user_pool_id=POOL,
                    username=user,
                    user_attributes=[pb.AttributeType(name="family_name", value=MARK)],
                    client_metadata={"source": MARK},
                ),
                metadata=as_caller("svc"),
            )
        ids.append(rich(failed.value).info.metadata["decision_id"])
        check = stub_.CheckUpdateUserAttributes(
            attrs_request(POOL, [("given_name", MARK)], username=user), metadata=as_caller("svc")
        )
        ids.append(check.decision_id)

    found = entries(log_file, 6)
    assert MARK not in log_file.read_text()
    assert [e["decision_id"] for e in found] == ids
    assert [(e["method"], e["outcome"], e["status"]) for e in found] == [
        ("UpdateUserAttributes", "allowed", "OK"),
        ("UpdateUserAttributes", "denied", "PERMISSION_DENIED"),
        ("UpdateUserAttributes", "invalid", "INVALID_ARGUMENT"),
        ("UpdateUserAttributes", "error", "UNAUTHENTICATED"),
        ("UpdateUserAttributes", "allowed", "FAILED_PRECONDITION"),
        ("CheckUpdateUserAttributes", "allowed", "OK"),
    ]
    allowed_entry, denied_entry, invalid_entry, anonymous, failed_entry, _ = found
    assert allowed_entry["caller"] == "svc"
    assert allowed_entry["attributes"] == ["given_name"]
    assert allowed_entry["cognito"]["ok"] is True
    assert allowed_entry["cognito"]["request_id"] == allowed.cognito_request_id
    assert len(allowed_entry["username_hash"]) == 32
    assert allowed_entry["latency_ms"] > 0
    assert denied_entry["violations"] == [{"attribute": "email", "reason": "ATTRIBUTE_NOT_ALLOWED"}]
    assert "cognito" not in denied_entry
    assert invalid_entry["invalid_fields"] == [
        {"field": "user_attributes[0].value", "reason": "TOO_LONG"}
    ]
    assert anonymous["reason"] == "CALLER_UNAUTHENTICATED"
    assert failed_entry["client_metadata_keys"] == ["source"]
    assert failed_entry["cognito"]["error_code"] == "UserLambdaValidationException"
    assert failed_entry["reason"] == "COGNITO_LAMBDA_REJECTED"


def test_without_a_key_the_username_is_left_out(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    log_file = tmp_path / "d.jsonl"
    server = serve(POLICY, stub.endpoint, decision_log=str(log_file))
    with server.channel() as channel:
        server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(POOL, [("given_name", "x")], username="zelda-no-hex"),
            metadata=as_caller("svc"),
        )
    (entry,) = entries(log_file, 1)
    assert "username_hash" not in entry
    # A name no hex id can contain: "ada" is hex, and decision and trace ids are.
    assert "zelda-no-hex" not in log_file.read_text()


class _Stalled:
    """A stream whose writes hang until released: a full disk, a blocked pipe."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait(10)
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    stream = _Stalled()
    drops: list[int] = []
    log = DecisionLog(capacity=3, stream=stream, on_drop=lambda: drops.append(1))  # type: ignore[arg-type]
    log.start()
    for i in range(10):
        log.record({"n": i})  # returns at once even though the writer is stuck
    assert log.dropped >= 6
    assert len(drops) == log.dropped
    stream.release.set()
    log.close()
    kept = [json.loads(line)["n"] for line in stream.lines]
    assert len(kept) + log.dropped == 10
    assert kept == sorted(kept)


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    log.start()
    log.record({"n": 1})
    entries(path, 1)
    path.rename(tmp_path / "d.jsonl.1")  # logrotate moves the file away...
    log.reopen()  # ...and sends SIGHUP
    log.record({"n": 2})
    log.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "d.jsonl.1").read_text().splitlines()] == [1]
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [2]


def test_sighup_reopens_the_served_decision_log(tmp_path: Path) -> None:
    import signal

    from support.moto_cognito import free_port
    from support.served import start_serve

    (tmp_path / "p.yaml").write_text(POLICY)
    log_file = tmp_path / "d.jsonl"
    port = free_port()
    process = start_serve(
        tmp_path / "p.yaml", port, "--decision-log", str(log_file), output=tmp_path
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = pb_grpc.UserAttributesStub(channel)

            def check() -> None:
                stub.CheckUpdateUserAttributes(
                    attrs_request(POOL, [("given_name", "x")]), metadata=as_caller("svc"), timeout=5
                )

            check()
            entries(log_file, 1)
            log_file.rename(tmp_path / "d.jsonl.1")
            process.send_signal(signal.SIGHUP)
            # Handled (the reopen is due) once the reload it starts says so.
            assert wait_until(lambda: "policies reloaded" in (tmp_path / "err").read_text(), 20)
            check()
            assert len(entries(log_file, 1)) == 1
        assert len((tmp_path / "d.jsonl.1").read_text().splitlines()) == 1
        assert process.poll() is None, "SIGHUP must not stop the server"
    finally:
        process.terminate()
        process.wait(10)
