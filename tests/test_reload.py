"""Policy reload: a new set is swapped in whole, a bad one is refused while the old one keeps
serving, requests already deciding keep the set they started with, and SIGHUP triggers it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from attrgate.app import App
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub, describe_reply
from support.moto_cognito import free_port
from support.policies import svc_policy
from support.prometheus import metrics_text, samples_of
from support.rpc import as_caller, attrs_request
from support.served import serving, start_serve, stop_serve, wait_serving
from support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
POOL = "us-east-1_Pool1"
GIVEN_ONLY = svc_policy("[{attribute: given_name}]")
GIVEN_AND_FAMILY = svc_policy("[{attribute: given_name}, {attribute: family_name}]")
US_REFUSED = """---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: no-us}
spec:
  userPools: ["*"]
  countries: {deny: [US]}
"""


def write(server: RunningServer, text: str) -> None:
    assert server.settings.policies is not None
    (Path(server.settings.policies) / "policies.yaml").write_text(text)


def family_name_code(server: RunningServer) -> grpc.StatusCode:
    with server.channel() as channel:
        try:
            server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, [("family_name", "Lovelace")]), metadata=as_caller("svc")
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def reloads(port: int) -> dict[str, float]:
    samples = samples_of(metrics_text(port))
    found = {labels["result"]: v for labels, v in samples["attrgate_policy_reloads_total"]}
    for labels, v in samples["attrgate_policy_set"]:
        found["revision:" + labels["revision"]] = v
    return found


def test_reload_swaps_in_a_new_set_and_refuses_a_broken_one(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = serve(GIVEN_ONLY, stub.endpoint, metrics_listen=f"127.0.0.1:{port}")
    first = server.app.policy_revision
    assert family_name_code(server) == grpc.StatusCode.PERMISSION_DENIED

    write(server, GIVEN_AND_FAMILY)
    assert server.run(server.app.reload()) is True
    assert family_name_code(server) == grpc.StatusCode.OK
    second = reloads(port)
    assert second["loaded"] == 1
    assert f"revision:{first}" not in second, "the gauge still shows the old revision"

    write(server, GIVEN_ONLY + "---\nkind: AttributePolicy\nspec: [\n")
    with caplog.at_level(logging.ERROR, logger="attrgate"):
        assert server.run(server.app.reload()) is False
    # The old set keeps serving; the one line says why, pointing at file and line.
    assert family_name_code(server) == grpc.StatusCode.OK
    (line,) = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert "still serving revision" in line
    assert "policies.yaml:" in line
    assert "\n" not in line
    third = reloads(port)
    assert third["rejected"] == 1
    assert third["loaded"] == 1
    assert [k for k in third if k.startswith("revision:")] == [
        k for k in second if k.startswith("revision:")
    ]


def test_reload_refuses_guards_when_nothing_counts_for_them(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    server = serve(GIVEN_ONLY, stub.endpoint)
    write(server, GIVEN_AND_FAMILY + US_REFUSED)
    assert server.run(server.app.reload()) is False
    assert family_name_code(server) == grpc.StatusCode.PERMISSION_DENIED


def test_a_request_already_deciding_keeps_the_set_it_started_with(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None, tmp_path: Path
) -> None:
    """Policy said yes under the old set; while it waits for pool metadata a reload adds a guard
    refusing its country. It must finish under the old set, not mix the two."""
    describe = describe_reply(auto_verified=("phone_number",))
    describe.delay = 2.0  # long enough for the reload to land while it waits, on a busy machine
    stub.describe = describe
    server = serve(
        svc_policy("[{attribute: phone_number}]"),
        stub.endpoint,
        state=str(tmp_path / "state.sqlite"),
        decision_log=str(tmp_path / "d.jsonl"),
    )
    with server.channel() as channel, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            server.stub(channel).UpdateUserAttributes,
            attrs_request(POOL, [("phone_number", "+14155550100")]),
            metadata=as_caller("svc"),
        )
        assert wait_until(lambda: len(stub.calls("DescribeUserPool")) == 1)
        write(server, svc_policy("[{attribute: phone_number}]") + US_REFUSED)
        assert server.run(server.app.reload()) is True
        assert not pending.done(), "the request ended before the reload: no race was tested"
        answer = pending.result(timeout=10)
        assert answer.decision.allowed
        with pytest.raises(grpc.RpcError) as refused:
            server.stub(channel).UpdateUserAttributes(
                attrs_request(POOL, [("phone_number", "+14155550100")]), metadata=as_caller("svc")
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert answer.decision.policy_revision != server.app.policy_revision


def test_sighup_reloads_the_policies_of_a_running_server(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(GIVEN_ONLY)
    port = free_port()
    process = start_serve(folder, port, output=tmp_path)
    err = tmp_path / "err"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

            stub = pb_grpc.UserAttributesStub(channel)

            def check() -> bool:
                decision = stub.CheckUpdateUserAttributes(
                    attrs_request(POOL, [("family_name", "Lovelace")]), metadata=as_caller("svc")
                )
                return bool(decision.allowed)

            assert check() is False
            (folder / "p.yaml").write_text(GIVEN_AND_FAMILY)
            process.send_signal(signal.SIGHUP)
            assert wait_until(lambda: "policies reloaded" in err.read_text(), seconds=10)
            assert check() is True
            (folder / "p.yaml").write_text("kind: [")
            process.send_signal(signal.SIGHUP)
            assert wait_until(lambda: "policy reload rejected" in err.read_text(), seconds=10)
            assert check() is True
        assert process.poll() is None, "SIGHUP must not stop the server"
    finally:
        process.terminate()
        process.wait(10)
    assert "Lovelace" not in err.read_text()


def test_a_sighup_while_starting_is_acted_on_once_serving_and_ignored_while_stopping(
    write_policies: Callable[[str], Path], stub: CognitoStub, stub_credentials: None
) -> None:
    async def scenario() -> list[bool]:
        app = App(
            settings_for(policies=str(write_policies(GIVEN_ONLY)), cognito_endpoint=stub.endpoint),
            io.StringIO(),
        )
        app.reopen_and_reload()  # before start: nothing to reload yet, so it waits
        assert not app._reload_tasks
        await app.start()
        try:
            results = await asyncio.wait_for(asyncio.gather(*app._reload_tasks), 10)
        finally:
            await app.stop(0)
        app.reopen_and_reload()  # stopped: ignored
        assert not app._reload_tasks
        return list(results)

    assert asyncio.run(scenario()) == [True]


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_sighup_during_start_up_neither_kills_nor_is_lost(tmp_path: Path) -> None:
    """--local-cognito takes seconds to start: a HUP then (logrotate, a config reloader) used to
    end the process. Also: seeding the emulator at DEBUG logs no seed user's data."""
    port = free_port()
    err = tmp_path / "err"
    process = start_serve(
        REPO / "policies", port, "--local-cognito", "--log-level", "DEBUG", output=tmp_path
    )
    try:
        assert wait_until(lambda: _catches(process.pid, signal.SIGHUP), seconds=20)
        assert "serving on port" not in err.read_text(), "started too fast to test start-up"
        process.send_signal(signal.SIGHUP)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        assert wait_until(lambda: "policies reloaded" in err.read_text(), seconds=10)
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)
    said = err.read_text()
    assert "botocore" in said, "botocore's DEBUG logging was not on"
    for seeded in ("ada@example.com", "Lovelace", "grace@example.com"):
        assert seeded not in said


def test_a_sighup_while_spans_are_flushed_at_exit_is_not_fatal(tmp_path: Path) -> None:
    """After the drain, asyncio gives SIGHUP back its default (fatal) action, and flushing spans
    to an unreachable collector takes seconds: a logrotate HUP then must not kill the process."""
    (tmp_path / "p.yaml").write_text(GIVEN_ONLY)
    port = free_port()
    process = start_serve(
        tmp_path / "p.yaml",
        port,
        "--grace",
        "0.2",
        output=tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="4",
        OTEL_BSP_SCHEDULE_DELAY="60000",  # keep the span queued until shutdown
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

            pb_grpc.UserAttributesStub(channel).CheckUpdateUserAttributes(
                attrs_request(POOL, [("given_name", "x")]), metadata=as_caller("svc")
            )
        process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "shutting down" in (tmp_path / "err").read_text())
        time.sleep(1.5)  # drained; the flush to the missing collector is under way
        assert process.poll() is None, "exited before the flush window: nothing tested"
        process.send_signal(signal.SIGHUP)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_sigquit_prints_every_threads_stack_and_keeps_serving(tmp_path: Path) -> None:
    """`kill -QUIT` is how an operator (and stop_serve, before it kills) sees what a stuck
    server waits for: every thread's stack on stderr, and the server serves on."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(GIVEN_ONLY)
    port = free_port()
    process = start_serve(folder, port, output=tmp_path)
    err = tmp_path / "err"
    try:
        assert wait_serving(f"127.0.0.1:{port}", process)
        process.send_signal(signal.SIGQUIT)
        assert wait_until(lambda: "most recent call first" in err.read_text(), seconds=20)
        assert "Thread 0x" in err.read_text()
        assert serving(f"127.0.0.1:{port}")
    finally:
        assert stop_serve(process, 30) == 0
