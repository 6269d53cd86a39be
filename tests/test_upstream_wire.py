"""The async upstream's wire: the bytes it sends are those the boto3 client would sign, its
credentials come from the standard chain (refreshed ones included), and calls in flight have no
cap but the quota bulkheads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import grpc
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub, Received, Reply
from support.environment import clean_env
from support.moto_cognito import free_port
from support.rpc import as_caller, request
from support.served import serve_command, serving
from support.waiting import wait_until
from test_upstream import CALLER, POLICY, POOL


def _update(server: RunningServer, timeout: float = 20, **attributes: str) -> Any:
    with server.channel() as channel:
        return server.stub(channel).UpdateUserAttributes(
            request(POOL, **attributes), metadata=as_caller(CALLER), timeout=timeout
        )


def _canonical(received: Received, credentials: Credentials) -> tuple[str, str]:
    """The canonical request botocore's signer computes for the request as it arrived (its
    X-Amz-Date blanked: two signings a second apart differ there only), and whether its
    signature is the one botocore computes for it."""
    headers = dict(received.headers)
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    host = headers["Host"]
    rebuilt = AWSRequest(
        method=received.method,
        url=f"http://{host}{received.path}",
        headers={name: value for name, value in headers.items() if name.lower() in signed},
        data=received.raw,
    )
    signer = SigV4Auth(credentials, "cognito-idp", "us-east-1")
    rebuilt.context["timestamp"] = headers["X-Amz-Date"]
    canonical = signer.canonical_request(rebuilt)
    signature = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    valid = headers["Authorization"].endswith(f"Signature={signature}")
    return canonical.replace(headers["X-Amz-Date"], "<date>"), "valid" if valid else "invalid"


def test_the_request_on_the_wire_is_the_one_the_boto3_client_signs(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    server = serve(POLICY, stub.endpoint)
    # Values that JSON and the signer must both get right: unicode, quotes, commas, equals.
    value = 'Ada "Zoë", x=1; ü ✓'
    _update(server, given_name=value)
    client = boto3.session.Session(region_name="us-east-1").client(
        "cognito-idp",
        endpoint_url=stub.endpoint,
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 2}),
    )
    client.admin_update_user_attributes(
        UserPoolId=POOL, Username="ada", UserAttributes=[{"Name": "given_name", "Value": value}]
    )
    ours, theirs = stub.calls()
    assert ours.raw == theirs.raw  # the body, byte for byte
    assert (ours.method, ours.path) == (theirs.method, theirs.path) == ("POST", "/")
    credentials = Credentials("stub-key", "stub-secret")
    assert _canonical(ours, credentials) == _canonical(theirs, credentials)
    assert _canonical(ours, credentials)[1] == "valid"
    ours_headers, theirs_headers = dict(ours.headers), dict(theirs.headers)
    assert ours_headers["amz-sdk-request"] == "attempt=1; max=2"
    assert ours_headers["User-Agent"].startswith("Boto3/")
    # Nothing aiohttp would add by itself that botocore does not send.
    assert {name.lower() for name in ours_headers} <= {name.lower() for name in theirs_headers}


def test_calls_in_flight_have_no_cap_but_the_bulkheads(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    """Every call is at Cognito at once: no thread pool or connection pool holds some back
    (the threaded upstream answered the 257th of 64 threads' worth ATTRGATE_OVERLOADED)."""
    # Held as long as the test needs: no read timeout, no retry adds arrivals.
    server = serve(POLICY, stub.endpoint, cognito_read_timeout=120, cognito_max_attempts=1)
    calls = 300
    release = threading.Event()
    stub.default = Reply(hold=release)
    with server.channel() as channel:
        rpc = server.stub(channel).UpdateUserAttributes
        futures = [
            rpc.future(
                request(POOL, f"user{i}", given_name="Ada"), metadata=as_caller(CALLER), timeout=60
            )
            for i in range(calls)
        ]
        try:
            assert wait_until(lambda: len(stub.calls()) == calls, 60), len(stub.calls())
        finally:
            release.set()
        for future in futures:
            assert future.result(timeout=60).decision.allowed


CREDENTIAL_PROCESS = """\
import json, os, pathlib, sys, datetime
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
# Ten minutes left: botocore's mandatory window, so every call waits for fresh ones (12: the
# advisory window, where the current ones still sign while a refresh runs).
minutes = float(os.environ.get("CREDENTIAL_MINUTES", "10"))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
print(json.dumps({"Version": 1, "AccessKeyId": f"ROTATED{n}", "SecretAccessKey": "s",
                  "Expiration": expires.isoformat()}))
"""


def _credential_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str, *args: object
) -> None:
    """The standard chain's credentials come from `script` (a credential_process profile), run
    with `args`, and from nowhere else."""
    path = tmp_path / "creds.py"
    path.write_text(script)
    config = tmp_path / "aws-config"
    arguments = " ".join(str(a) for a in args)
    config.write_text(
        f"[profile chain]\ncredential_process = {sys.executable} {path} {arguments}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_PROFILE", "chain")


def test_refreshed_credentials_sign_the_next_calls(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials from the standard chain that expire (here a credential_process profile) are
    refreshed by botocore, off the event loop, and the next calls are signed with them."""
    _credential_process(monkeypatch, tmp_path, CREDENTIAL_PROCESS, tmp_path / "count")
    server = serve(POLICY, stub.endpoint)
    for name in ("One", "Two"):
        _update(server, given_name=name)
    keys = [c.authorization.split("Credential=")[1].split("/")[0] for c in stub.calls()]
    assert len(keys) == 2
    assert all(k.startswith("ROTATED") for k in keys), keys
    assert keys[0] != keys[1], "the second call was not signed with refreshed credentials"


HELD_REFRESH = """\
import pathlib, sys, time
if pathlib.Path(sys.argv[4]).exists():  # armed by the test once the server serves
    pathlib.Path(sys.argv[2]).touch()
    deadline = time.monotonic() + 60
    while not pathlib.Path(sys.argv[3]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def test_a_credential_refresh_that_hangs_does_not_stall_the_server(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore's refresh blocks (a credential process, STS): it runs in a thread, so while one
    hangs the server keeps answering what needs no credentials, and the write it held goes out
    with the fresh credentials once the refresh ends."""
    server, refreshing, release, armed = _held_refresh(serve, stub, tmp_path, monkeypatch)
    armed.touch()
    with server.channel() as channel:
        rpc = server.stub(channel)
        write = rpc.UpdateUserAttributes.future(
            request(POOL, given_name="Ada"), metadata=as_caller(CALLER), timeout=60
        )
        try:
            assert wait_until(refreshing.exists, 30), "no refresh started"
            checked = rpc.CheckUpdateUserAttributes(
                request(POOL, given_name="Ada"), metadata=as_caller(CALLER), timeout=20
            )
            assert checked.allowed
            assert not write.done()
            assert not stub.calls()
        finally:
            release.touch()
        assert write.result(timeout=60).decision.allowed
    (sent,) = stub.calls()
    assert "Credential=ROTATED" in sent.authorization


def test_calls_go_through_the_proxy_the_environment_names(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY and NO_PROXY as botocore honours them. The endpoint's host does not exist:
    only the proxy (here the stub, which answers absolute-form requests as any) can answer."""
    monkeypatch.setenv("HTTP_PROXY", stub.endpoint)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = serve(POLICY, "http://cognito-idp.proxied.invalid:8080")
    assert _update(proxied, given_name="Ada").decision.allowed
    (sent,) = stub.calls()
    assert sent.path == "http://cognito-idp.proxied.invalid:8080/"
    assert dict(sent.headers)["Host"] == "cognito-idp.proxied.invalid:8080"

    monkeypatch.setenv("NO_PROXY", "proxied.invalid")
    direct = serve(POLICY, "http://cognito-idp.proxied.invalid:8080")
    with pytest.raises(grpc.RpcError) as caught:
        _update(direct, given_name="Ada")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(stub.calls()) == 1


def _held_refresh(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[RunningServer, Path, Path, Path]:
    """A server whose credential refreshes, once `armed` exists, hang (having touched
    `refreshing`) until `release` exists; the pool is described already."""
    refreshing, release, armed = (tmp_path / n for n in ("refreshing", "release", "armed"))
    _credential_process(
        monkeypatch,
        tmp_path,
        HELD_REFRESH + CREDENTIAL_PROCESS,
        tmp_path / "n",
        refreshing,
        release,
        armed,
    )
    server = serve(POLICY, stub.endpoint)
    with server.channel() as channel:
        server.stub(channel).CheckUpdateUserAttributes(
            request(POOL, given_name="Ada"), metadata=as_caller(CALLER), timeout=20
        )
    return server, refreshing, release, armed


def test_a_write_whose_deadline_passes_during_a_refresh_is_never_sent(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline is checked after the wait for credentials, right before the bytes go out:
    a write held by a slow refresh past its caller's deadline is withdrawn, not sent stale."""
    server, refreshing, release, armed = _held_refresh(serve, stub, tmp_path, monkeypatch)
    armed.touch()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _update(server, timeout=1.0, given_name="Stale")
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert refreshing.exists()
    finally:
        release.touch()
    armed.unlink()
    assert _update(server, given_name="Fresh").decision.allowed
    assert [c.body["UserAttributes"][0]["Value"] for c in stub.calls()] == ["Fresh"]


def test_in_the_advisory_window_calls_sign_with_the_current_credentials_meanwhile(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fifteen to ten minutes before expiry botocore refreshes without making callers wait:
    the current credentials are still good. A refresh that hangs there delays nothing."""
    monkeypatch.setenv("CREDENTIAL_MINUTES", "12")
    server, refreshing, release, armed = _held_refresh(serve, stub, tmp_path, monkeypatch)
    armed.touch()
    try:
        # A refresh begun before `armed` existed may still be running (its process already
        # looked): each call starts one when none runs, so calls go on until one hangs.
        deadline = time.monotonic() + 60
        while not refreshing.exists():
            assert time.monotonic() < deadline, "no refresh began in the advisory window"
            assert _update(server, given_name="Before").decision.allowed
            time.sleep(0.05)
        assert _update(server, timeout=10, given_name="During").decision.allowed
        assert not release.exists()
    finally:
        release.touch()
    sent = stub.calls()
    assert sent[-1].body["UserAttributes"][0]["Value"] == "During"
    assert all("Credential=ROTATED" in c.authorization for c in sent)


def test_stopping_does_not_wait_for_a_refresh_that_hangs(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write held by a credential refresh that never ends (a credential process botocore
    waits for without a timeout) is given up when the server stops: nothing is sent, and the
    stop ends after one attempt's timeouts, not never."""
    server, refreshing, release, armed = _held_refresh(serve, stub, tmp_path, monkeypatch)
    armed.touch()
    try:
        with server.channel() as channel:
            write = server.stub(channel).UpdateUserAttributes.future(
                request(POOL, given_name="Held"), metadata=as_caller(CALLER), timeout=120
            )
            assert wait_until(refreshing.exists, 30)
            server.stop(grace=0.2)  # RunningServer gives a stop 30 s: it would raise
            assert write.exception(timeout=30) is not None
    finally:
        release.touch()
    assert not stub.calls()


def test_a_process_whose_refresh_hangs_still_exits_on_sigterm(
    stub: CognitoStub, tmp_path: Path
) -> None:
    """botocore waits for a credential process without a timeout, and a thread cannot be
    cancelled: the refresh runs in a daemon thread, so a SIGTERM still ends the process."""
    refreshing, release, armed = (tmp_path / n for n in ("refreshing", "release", "armed"))
    script = tmp_path / "creds.py"
    script.write_text(HELD_REFRESH + CREDENTIAL_PROCESS)
    config = tmp_path / "aws-config"
    config.write_text(
        f"[profile chain]\ncredential_process = {sys.executable} {script} {tmp_path / 'n'} "
        f"{refreshing} {release} {armed}\n"
    )
    env = clean_env(AWS_CONFIG_FILE=str(config), AWS_PROFILE="chain")
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    port = free_port()
    command = serve_command(f"127.0.0.1:{port}", "--region", "us-east-1")
    flags = ("--cognito-endpoint", stub.endpoint, "--grace", "0.5", "--decision-log", os.devnull)
    process = subprocess.Popen(
        [*command, "--policies", str(policies), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: serving(f"127.0.0.1:{port}"), 60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            rpc = pb_grpc.UserAttributesStub(channel)
            rpc.CheckUpdateUserAttributes(
                request(POOL, given_name="Ada"), metadata=as_caller(CALLER), timeout=20
            )
            armed.touch()
            write = rpc.UpdateUserAttributes.future(
                request(POOL, given_name="Held"), metadata=as_caller(CALLER), timeout=120
            )
            assert wait_until(refreshing.exists, 30)
            process.send_signal(signal.SIGTERM)
            # The drain's grace, then one attempt's timeouts at most (2 s + 5 s + 1 s).
            assert process.wait(timeout=60) == 0
            assert write.exception(timeout=30) is not None
    finally:
        release.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not stub.calls()
